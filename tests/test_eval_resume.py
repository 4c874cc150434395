"""A durable evaluation: lossless group serialization, the journal, and resuming a killed run.

The in-process tests interrupt an evaluation by making the (scripted) engine raise after K
requests: what was journaled survives, and a resumed run rolls out only the rest. The slow test
does it for real: ``simpletir-run`` on the hf engine, SIGKILLed mid-run, then ``RESUME=True``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from simpletir.core.config import ExperimentConfig
from simpletir.core.errors import ConfigError
from simpletir.core.eval_journal import JOURNAL_FILE, JournalError
from simpletir.core.evaluate import run_evaluation
from simpletir.core.plugins import make_plugin_manager
from simpletir.core.rollout.engine import Generation, SamplingParams
from simpletir.core.rollout.testing import ScriptedEngine
from simpletir.core.serialize import group_from_dict, group_to_dict
from simpletir.core.types import FinishReason, Message, Problem, RewardResult, ToolResult, TrajectoryGroup
from simpletir.plugins.benchmarks.arith import ArithOptions, make_problems
from simpletir.testing import make_group, make_trajectory

SIZE, N = 6, 2  # arith problems, samples per problem


def round_trip(group: TrajectoryGroup) -> TrajectoryGroup:
    return group_from_dict(json.loads(json.dumps(group_to_dict(group))))


# -- serialization ----------------------------------------------------------------------------
def test_hand_made_group_round_trips_exactly() -> None:
    rich = make_trajectory(turns=3, code_turns=2, score=1.0, truncated=True)
    extra: dict[Any, Any] = {"t": (1, "a", None), 3: [1.5, {"x": True}]}  # tuples, an int key
    rich = dataclasses.replace(
        rich,
        logprobs=(-0.0, -math.inf, 1e-310, -0.1 + -0.2, *rich.logprobs[4:]),
        reward=RewardResult(1.0, "correct", "025", extra),
        mask_reasons=("void_turn", "overlong"),
        prompt_text="p\u00e9",
        response_text="r \\boxed{025}\n",
        turns=(
            dataclasses.replace(
                rich.turns[0],
                tool_result=ToolResult("out", "err", None, True, "timeout", 12.345678901234, True),
                final_answer="025",
                stop_reason="stop",
            ),
            *rich.turns[1:],
        ),
    )
    plain = make_trajectory(score=None, void=True, finish_reason=FinishReason.VOID_TURN)
    group = make_group([rich, plain], problem_id="17")
    group = TrajectoryGroup(
        Problem(
            "17",
            "aime24",
            (Message("system", "s"), Message("user", "q")),
            "025",
            "deepscaler/aime",
            {"extra_info": {"index": 17}, "pair": (1, 2), "__tuple__": "not a tag"},
        ),
        group.trajectories,
    )
    back = round_trip(group)
    assert back == group
    assert math.copysign(1.0, back.trajectories[0].logprobs[0]) == -1.0  # -0.0 kept, bit for bit
    assert back.trajectories[0].finish_reason is rich.finish_reason


def test_rollout_groups_round_trip_exactly(tmp_path: Path, qwen_tok: Any) -> None:
    """Multi-turn trajectories from the real loop (tool calls, observations, spans, logprobs)."""
    from simpletir.core.rollout import RolloutRunner
    from simpletir.core.rollout.testing import ScriptedTool

    config = eval_config(tmp_path, tool_use=True, max_turns=3, max_response_length=200)
    tool = ScriptedTool(lambda code: ToolResult(stdout="7\n", duration_ms=1.25))
    engine = scripted(qwen_tok, "Try.\n```python\nprint(7)\n```\n", "So \\boxed{7}.<|im_end|>")
    problems = make_problems(ArithOptions(size=2))
    seen: list[int] = []
    groups = RolloutRunner(engine, [tool], config).run(problems, n=2, on_group=lambda i, g: seen.append(i))
    assert sorted(seen) == [0, 1]
    assert groups[0].trajectories[0].turns[0].obs_span is not None
    for group in groups:
        assert round_trip(group) == group


# -- resuming in process ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def qwen_tok() -> Any:
    from transformers import AutoTokenizer

    from simpletir.core.rollout.models import qwen_tokenizer_dir

    return AutoTokenizer.from_pretrained(qwen_tokenizer_dir())


def eval_config(tmp_path: Path, **top: Any) -> ExperimentConfig:
    values: dict[str, Any] = {
        "experiment_name": "resumetest",
        "model_name": "tiny-qwen2",
        "val_only": True,
        "valid_dataset": "arith",
        "n_val": N,
        "tool_use": False,
        "max_prompt_length": 2048,
        "max_response_length": 40,
        "output_acc_to_file": True,
        "logs_dir": str(tmp_path / "logs"),
        "run_dir": str(tmp_path / "runs" / "resumetest"),  # logs are named after the run folder
        "plugin_config": {"math_verify": {"workers": 1}, "arith": {"size": SIZE}},
        **top,
    }
    config = ExperimentConfig(**values)
    config.rollout = dataclasses.replace(config.rollout, engine="hf", progress=False)
    return config


class FailingEngine(ScriptedEngine):
    """A scripted engine that dies on its ``fail_at``-th request, like a run killed mid-way."""

    def __init__(self, *args: Any, fail_at: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fail_at = fail_at

    async def generate(self, prompt_ids: Any, params: SamplingParams) -> Generation:
        if self.fail_at is not None and len(self.requests) + 1 >= self.fail_at:
            raise RuntimeError("engine killed")
        return await super().generate(prompt_ids, params)


def scripted(tok: Any, *streams: str, fail_at: int | None = None) -> FailingEngine:
    eos = [tok.convert_tokens_to_ids("<|im_end|>")]
    return FailingEngine(tok, list(streams), eos_token_ids=eos, fail_at=fail_at)


def answer_stream() -> str:
    first = make_problems(ArithOptions(size=SIZE))[0]
    return f"It is \\boxed{{{first.ground_truth}}}.<|im_end|>"  # right for problem 0 only


def journal_lines(config: ExperimentConfig) -> list[bytes]:
    return (Path(str(config.run_dir)) / JOURNAL_FILE).read_bytes().split(b"\n")


def interrupted(tmp_path: Path, tok: Any, done_groups: int, **top: Any) -> ExperimentConfig:
    """An evaluation whose engine dies after ``done_groups`` whole groups were rolled out."""
    config = eval_config(tmp_path, **top)
    engine = scripted(tok, answer_stream(), fail_at=done_groups * N + 1)
    with pytest.raises(RuntimeError, match="engine killed"):
        run_evaluation(config, make_plugin_manager(), engine=engine)
    assert len(journal_lines(config)) == 1 + done_groups + 1  # header, groups, "" after the last \n
    assert not (tmp_path / "logs").exists()
    return config


def strip(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in ("timings", "resume", "files")}


def test_a_killed_evaluation_resumes_without_redoing_finished_groups(tmp_path: Path, qwen_tok: Any) -> None:
    reference_engine = scripted(qwen_tok, answer_stream())
    reference = run_evaluation(eval_config(tmp_path / "ref"), make_plugin_manager(), engine=reference_engine)
    reference_lines = (tmp_path / "ref" / "logs" / "resumetest_generations.jsonl").read_text()

    config = interrupted(tmp_path, qwen_tok, done_groups=2)
    engine = scripted(qwen_tok, answer_stream())
    result = run_evaluation(dataclasses.replace(config, resume=True), make_plugin_manager(), engine=engine)

    assert len(engine.requests) == (SIZE - 2) * N  # the two journaled groups were not redone
    assert result["resume"] == {"resumed_groups": 2, "rolled_out_groups": SIZE - 2}
    assert result["n_problems"] == SIZE and result["n_samples"] == SIZE * N
    assert 0 < result["pass@1"] < 1
    assert strip(result) == strip(reference)
    assert (tmp_path / "logs" / "resumetest_generations.jsonl").read_text() == reference_lines
    # Sampling is keyed by problem and sample, not by position: the resumed requests are seeded
    # exactly as the uninterrupted run's requests for the same problems were.
    assert {r.params.seed for r in engine.requests} < {r.params.seed for r in reference_engine.requests}
    assert len(journal_lines(config)) == 1 + SIZE + 1

    # Resuming a finished evaluation rolls nothing out and builds no engine.
    again = run_evaluation(dataclasses.replace(config, resume=True), make_plugin_manager())
    assert again["resume"] == {"resumed_groups": SIZE, "rolled_out_groups": 0}
    assert strip(again) == strip(reference)


def test_a_torn_last_line_is_ignored_and_cut(tmp_path: Path, qwen_tok: Any, capsys: Any) -> None:
    config = interrupted(tmp_path, qwen_tok, done_groups=3)
    path = Path(str(config.run_dir)) / JOURNAL_FILE
    whole = journal_lines(config)[2]
    with path.open("ab") as handle:  # a kill in the middle of writing the next group
        handle.write(whole[: len(whole) // 2])
    engine = scripted(qwen_tok, answer_stream())
    result = run_evaluation(dataclasses.replace(config, resume=True), make_plugin_manager(), engine=engine)
    assert "torn last line" in capsys.readouterr().err
    assert len(engine.requests) == (SIZE - 3) * N and result["n_samples"] == SIZE * N
    lines = journal_lines(config)
    assert lines[-1] == b"" and len(lines) == 1 + SIZE + 1
    assert [json.loads(line)["problem_id"] for line in lines[1:-1]] == [str(i) for i in range(SIZE)]


def test_a_corrupt_line_before_the_last_is_an_error(tmp_path: Path, qwen_tok: Any) -> None:
    config = interrupted(tmp_path, qwen_tok, done_groups=2)
    path = Path(str(config.run_dir)) / JOURNAL_FILE
    lines = journal_lines(config)
    path.write_bytes(b"\n".join([lines[0], b'{"benchmark": "ari', *lines[2:]]))
    with pytest.raises(JournalError, match="line 2"):
        run_evaluation(dataclasses.replace(config, resume=True), make_plugin_manager())


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"n_val": 3}, ["n_val: journal 2, now 3"]),
        (
            {"model_name": "other", "seed": 1},
            ['model_name: journal "tiny-qwen2", now "other"', "seed: journal 0"],
        ),
        ({"rollout": {"val_temperature": 0.5}}, ["sampling.temperature: journal 1.0, now 0.5"]),
        ({"max_turns": 9, "tool_use": True}, ["max_turns: journal 5, now 9", "tool_use"]),
        (
            {"plugin_config": {"math_verify": {"workers": 1}, "arith": {"size": SIZE, "generator_seed": 3}}},
            ["problems.arith.sha256"],
        ),
    ],
)
def test_a_journal_of_another_configuration_is_refused(
    tmp_path: Path, qwen_tok: Any, change: dict[str, Any], expected: list[str]
) -> None:
    config = interrupted(tmp_path, qwen_tok, done_groups=1)
    before = (Path(str(config.run_dir)) / JOURNAL_FILE).read_bytes()
    rollout = change.pop("rollout", {})
    changed = dataclasses.replace(config, resume=True, **change)
    changed.rollout = dataclasses.replace(changed.rollout, **rollout)
    with pytest.raises(JournalError, match="another configuration") as info:
        run_evaluation(changed, make_plugin_manager(), engine=scripted(qwen_tok, answer_stream()))
    for text in expected:
        assert text in str(info.value)
    assert (Path(str(config.run_dir)) / JOURNAL_FILE).read_bytes() == before  # left untouched


def test_a_journal_is_not_overwritten_without_resume(tmp_path: Path, qwen_tok: Any) -> None:
    config = interrupted(tmp_path, qwen_tok, done_groups=1)
    with pytest.raises(ConfigError, match="resume=true"):
        run_evaluation(config, make_plugin_manager(), engine=scripted(qwen_tok, answer_stream()))


def test_a_reward_change_applies_to_resumed_groups(tmp_path: Path, qwen_tok: Any) -> None:
    """Journaled groups are stored unscored: the reward (and its options) may change on resume."""
    config = interrupted(tmp_path, qwen_tok, done_groups=2)
    resumed = dataclasses.replace(
        config,
        resume=True,
        plugin_config={"math_verify": {"workers": 1, "last_number_fallback": True}, "arith": {"size": SIZE}},
    )
    result = run_evaluation(resumed, make_plugin_manager(), engine=scripted(qwen_tok, answer_stream()))
    assert result["n_samples"] == SIZE * N and result["resume"]["resumed_groups"] == 2


# -- a real kill ------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigkilled_simpletir_run_resumes(tmp_path: Path) -> None:
    """``simpletir-run`` (hf engine, tiny-qwen2) SIGKILLed mid-evaluation, then ``RESUME=True``."""
    size = 12
    args = [
        sys.executable,
        "-m",
        "simpletir",
        "run",
        "experiment_name=killed",
        "model_name=tiny-qwen2",
        "val_only=true",
        "valid_dataset=arith",
        "val_sample_size=-1",
        "n_val=2",
        "tool_use=false",
        "max_response_length=48",
        "output_acc_to_file=true",
        "rollout.engine=hf",
        "rollout.max_concurrency=1",
        f"logs_dir={tmp_path / 'logs'}",
        f"runs_dir={tmp_path / 'runs'}",
        f"plugin_config.arith.size={size}",
        "plugin_config.math_verify.workers=1",
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    env.pop("RESUME", None)
    journal = tmp_path / "runs" / "killed" / JOURNAL_FILE
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if journal.exists() and journal.read_bytes().count(b"\n") >= 3:  # header + 2 groups
                break
            time.sleep(0.05)
        assert process.poll() is None, "the evaluation ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    journaled = journal.read_bytes().count(b"\n") - 1
    assert 2 <= journaled < size and not (tmp_path / "logs" / "killed_accuracy.json").exists()

    done = subprocess.run(args, env={**env, "RESUME": "True"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{journaled} of {size} problem groups are done" in done.stderr
    accuracy = json.loads((tmp_path / "logs" / "killed_accuracy.json").read_text())
    assert accuracy["resume"] == {"resumed_groups": journaled, "rolled_out_groups": size - journaled}
    assert accuracy["n_problems"] == size and accuracy["n_samples"] == 2 * size
    lines = (tmp_path / "logs" / "killed_generations.jsonl").read_text().splitlines()
    assert sorted({json.loads(line)["problem_id"] for line in lines}, key=int) == [
        str(i) for i in range(size)
    ]
    assert not (tmp_path / "runs" / "killed-2").exists()  # the same run directory was reused

    # A resume under other settings is refused, and leaves the folder's config.yaml as it was.
    config_yaml = tmp_path / "runs" / "killed" / "config.yaml"
    recorded = config_yaml.read_text()
    assert "n_val: 2" in recorded
    refused_args = [a if a != "n_val=2" else "n_val=3" for a in args]
    refused = subprocess.run(
        refused_args, env={**env, "RESUME": "True"}, capture_output=True, text=True, timeout=300
    )
    assert refused.returncode != 0 and "n_val: journal 2, now 3" in refused.stderr
    assert config_yaml.read_text() == recorded
