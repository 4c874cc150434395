"""``simpletir view``: reading runs, the self-contained HTML, and the page in a real headless browser.

The runs are made here from real records: trajectories built turn by turn from the tiny-qwen2
tokenizer's ids (a code turn, its sandbox output as an observation, a final answer), recorded
with :class:`RolloutRecorder` exactly as a training step is, and validation generations
written by the evaluation's own writer. The browser test drives Chromium (Debian's
``chromium-headless-shell``, or ``$SIMPLETIR_CHROMIUM``) through Playwright and is skipped,
with the reason, where either is missing.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from simpletir.core.evaluate import write_evaluation_files
from simpletir.core.trainer.record import FOLDER, RolloutRecorder
from simpletir.core.types import (
    FinishReason,
    Message,
    Problem,
    RewardResult,
    ToolCall,
    ToolResult,
    Trajectory,
    TrajectoryGroup,
    Turn,
)
from simpletir.viewer.collect import read_run, token_pieces
from simpletir.viewer.view import main as view_main
from simpletir.viewer.view import write_report

HOSTILE = "</script><script>window.__pwned = 1</script><!--"


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    from simpletir.core.rollout.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("tiny-qwen2"))


def trajectory(
    tok: Any, index: int, *, correct: bool, void: bool = False, masked: bool = False
) -> Trajectory:
    """Two turns: code that prints the answer, its output, then the boxed answer (or a void turn)."""
    answer = "44" if correct else "45"
    code = f"print(51 - 7{'' if correct else ' + 1'})"
    first = f"Let me compute it.\n```python\n{code}\n```\n"
    observation = f"\nCode execution result: {answer}\n\n"
    second = "I am not sure." if void else f"So the answer is \\boxed{{{answer}}}. é 你好 {HOSTILE}"
    ids: list[int] = []
    spans = []
    for text, trained in ((first, 1), (observation, 0), (second, 1)):
        start = len(ids)
        ids.extend(tok(text, add_special_tokens=False).input_ids)
        spans.append((start, len(ids), trained))
    mask = [m for a, b, m in spans for _ in range(a, b)]
    turns = (
        Turn(
            index=0,
            gen_span=spans[0][:2],
            text=first,
            code=code,
            tool_call=ToolCall("python", code),
            tool_result=ToolResult(
                stdout=f"{answer}\n",
                stderr="" if correct else "Traceback: ValueError: off by one\n",
                exit_code=0 if correct else 1,
            ),
            observation=observation,
            obs_span=spans[1][:2],
        ),
        Turn(
            index=1, gen_span=spans[2][:2], text=second, final_answer=None if void else answer, is_void=void
        ),
    )
    reward = RewardResult(1.0 if correct else 0.0, "correct" if correct else "wrong", extracted=answer)
    made = Trajectory(
        problem_id="x",
        sample_index=index,
        prompt_ids=(1, 2),
        response_ids=tuple(ids),
        loss_mask=tuple(mask),
        logprobs=tuple(-0.05 * (i % 7) if m else 0.0 for i, m in enumerate(mask)),
        turns=turns,
        finish_reason=FinishReason.VOID_TURN if void else FinishReason.ANSWER,
        prompt_text="What is 51 - 7?",
        response_text=first + observation + second,
        reward=reward,
    )
    return made.masked("void_turn") if masked else made


def group(tok: Any, pid: str, pattern: str) -> TrajectoryGroup:
    """``pattern``: one letter per sample, c = correct, w = wrong, v = void (masked)."""
    problem = Problem(pid, "arith", (Message("user", f"What is 51 - 7? (#{pid}) {HOSTILE}"),), "44")
    samples = [
        trajectory(tok, i, correct=ch == "c", void=ch == "v", masked=ch == "v")
        for i, ch in enumerate(pattern)
    ]
    return TrajectoryGroup(problem, tuple(s.__class__(**{**s.__dict__, "problem_id": pid}) for s in samples))


class FakeBackend:
    def named_hf_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        yield "w", torch.ones(3)


def make_run(root: Path, name: str, tok: Any, *, problems: int = 3, patterns: str = "cwv") -> Path:
    """A training run folder with one recorded step and one validation (files as a run writes them)."""
    run_dir = root / "runs" / name
    logs = root / "logs"
    run_dir.mkdir(parents=True)
    logs.mkdir(exist_ok=True)
    (run_dir / "config.yaml").write_text(
        f"experiment_name: {name}\nmodel_name: tiny-qwen2\nval_only: false\nlogs_dir: {logs}\n"
        "mask_void_turns: true\nrollout: {n: 3}\n"
    )
    groups = [group(tok, str(i), patterns if i % 2 == 0 else "www") for i in range(problems)]
    kept = [g for g in groups if len({t.score for t in g.trajectories}) > 1]
    recorder = RolloutRecorder(run_dir / FOLDER)
    recorder.draw(1, [g.problem for g in groups], groups)
    recorder.kept(1, kept)
    recorder.advantages(torch.tensor([0.5 - 0.25 * i for i in range(3 * len(kept))]))
    recorder.finish(1, {"actor/loss": 0.1, "reward/mean": 0.3}, FakeBackend(), epoch=0)  # type: ignore[arg-type]
    (run_dir / "metrics.jsonl").write_text(
        json.dumps(
            {"step": 1, "phase": "train", "metrics": {"reward/mean": 0.3, "actor/grad_norm": float("nan")}}
        )
        + "\n"
    )
    write_evaluation_files(
        {"pass@1": 0.5},
        {"arith": groups},
        logs / f"{name}_val_epoch_1.json",
        logs / f"{name}_val_epoch_1_generations.jsonl",
    )
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("view")
    return make_run(root, "mask", tokenizer), make_run(
        root, "nomask", tokenizer, problems=120, patterns="ccw"
    )


# -- reading runs -------------------------------------------------------------------------------


def test_a_training_run_has_its_validation_and_recorded_steps(runs: tuple[Path, Path]) -> None:
    run = read_run(runs[0])
    assert [s.label for s in run.sets] == ["validation step 1", "training step 1"]
    validation, training = run.sets
    assert [r["correct"] for r in validation.rows] == [1, 0, 1]
    assert [r["void"] for r in validation.rows] == [1, 0, 1]
    assert [r["toolerr"] for r in training.rows] == [2, 3, 2]  # code failed in every unsolved sample
    assert [r["kept"] for r in training.rows] == [True, False, True]
    first = training.details[0]["samples"]
    assert [s["adv"] for s in first] == [0.5, 0.25, 0.0]  # kept groups' rows, in group-then-sample order
    assert first[2]["masked"] == ["void_turn"] and set(first[2]["tok"]["m"]) == {0}
    code_turn = first[0]["turns"][0]
    assert code_turn["code"] == "print(51 - 7)" and code_turn["tool"]["stdout"] == "44\n"
    assert (
        "".join(first[0]["tok"]["s"])
        == first[0]["turns"][0]["text"] + code_turn["obs"] + first[0]["turns"][1]["text"]
    )
    assert (
        run.steps == [{"step": 1, "reward/mean": 0.3, "actor/grad_norm": float("nan")}]
        or run.steps[0]["step"] == 1
    )


def test_token_pieces_keep_characters_split_over_tokens(tokenizer: Any) -> None:
    text = "a é 你好 \U0001f600 b"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    pieces = token_pieces(tokenizer, ids)
    assert len(pieces) == len(ids) and "".join(pieces) == text
    assert token_pieces(None, [5, 6]) == ["\u20395\u203a", "\u20396\u203a"]


def test_the_page_is_self_contained_and_its_records_decode(runs: tuple[Path, Path], tmp_path: Path) -> None:
    out = write_report([read_run(runs[0])], tmp_path / "page.html")
    page = out.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing from elsewhere
    assert "default-src 'none'" in page
    index_text = re.search(r"<script id='st-index' type='application/json'>(.*?)</script>", page, re.S)
    assert index_text is not None
    index = json.loads(index_text.group(1))
    assert HOSTILE not in page  # model text cannot close the script element it sits in
    assert index["runs"][0]["sets"][0]["rows"][0]["q"].endswith(HOSTILE)  # ... and still reads back whole
    assert index["runs"][0]["steps"][0]["actor/grad_norm"] is None  # NaN: not JSON
    blobs = re.findall(r"<script type='text/plain' id='d-(\d+)'>([A-Za-z0-9+/=]+)</script>", page)
    assert [int(n) for n, _ in blobs] == list(range(6))
    detail = json.loads(gzip.decompress(base64.b64decode(blobs[3][1])))
    assert detail["id"] == "0" and detail["kept"] is True and len(detail["samples"]) == 3


def test_cli_writes_beside_the_logs_and_refuses_three_runs(runs: tuple[Path, Path], capsys: Any) -> None:
    from simpletir.cli import main as cli_main

    assert view_main([str(runs[0])]) == 0
    assert "mask_view.html" in capsys.readouterr().out
    assert cli_main(["view", str(runs[0]), str(runs[0]), str(runs[1])]) == 2
    assert "one run or two" in capsys.readouterr().err
    assert cli_main(["view", str(runs[0] / "nope")]) == 2


# -- in a real browser ----------------------------------------------------------------------------


def chromium() -> str | None:
    for candidate in (
        os.environ.get("SIMPLETIR_CHROMIUM"),
        "chromium-headless-shell",
        "chromium",
        "chromium-browser",
    ):
        if candidate and (path := shutil.which(candidate)):
            return path
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    playwright_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    executable = chromium()
    if executable is None:
        pytest.skip("no Chromium found (apt-get install chromium-headless-shell, or set SIMPLETIR_CHROMIUM)")
    with playwright_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()


def open_page(browser: Any, path: Path) -> tuple[Any, list[str]]:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: errors.append(f"request {r.url}") if not r.url.startswith("file:") else None)
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-ready='1']")
    return page, errors


@pytest.mark.slow
def test_in_chromium_a_trajectory_opens_with_code_output_and_mask(
    browser: Any, runs: tuple[Path, Path], tmp_path: Path
) -> None:
    out = write_report([read_run(runs[0])], tmp_path / "page.html")
    page, errors = open_page(browser, out)
    assert "training step 1" in page.inner_text("main")  # the overview lists the sets
    page.click("nav button[data-tab='problems']")
    page.select_option("#set-select", label="training step 1")
    page.click("button[data-filter='kept']")
    assert page.locator("#problem-table tr.row").count() == 2
    page.click("#problem-table tr.row >> nth=0")
    body = page.locator(".sample .body").first
    body.wait_for()
    assert "print(51 - 7)" in body.locator("pre.code").inner_text()
    assert body.locator("pre.out").inner_text().strip() == "44"
    assert body.locator(".badge.ok").first.inner_text() == "ok"
    body.locator("button[data-mode='mask']").click()
    tokens = page.locator(".tokens[data-view='mask']").first
    assert tokens.locator("span.tr").count() > 5 and tokens.locator("span.ob").count() > 3
    assert tokens.inner_text().startswith("Let me compute it.")
    body.locator("button[data-mode='logprob']").click()
    assert page.locator(".tokens[data-view='logprob'] span").count() > 5
    assert page.evaluate("window.__pwned") is None  # the hostile text stayed text
    page.screenshot(path=str(tmp_path / "shot.png"))
    assert errors == []


@pytest.mark.slow
def test_in_chromium_two_runs_side_by_side_and_pages(
    browser: Any, runs: tuple[Path, Path], tmp_path: Path
) -> None:
    out = write_report([read_run(runs[0]), read_run(runs[1])], tmp_path / "both.html")
    page, errors = open_page(browser, out)
    page.click("nav button[data-tab='compare']")
    page.wait_for_selector("#compare-table")
    page.click("#compare-table tr.row >> nth=0")
    page.locator(".split .problem").nth(1).wait_for()
    assert page.locator(".split .problem").count() == 2
    page.click("nav button[data-tab='problems']")
    page.select_option("#run-select", label="nomask")
    assert "page 1 of 3 (120 problems)" in page.inner_text(".pager")
    page.click(".pager button >> text=next")
    assert "page 2 of 3" in page.inner_text(".pager")
    page.click("button[data-filter='unsolved']")
    assert page.locator("#problem-table tr.row").count() == 50
    assert errors == []
