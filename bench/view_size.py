"""How big and how fast is ``simpletir view`` on an evaluation of real size (500 problems x 32 samples)?

    .venv/bin/python bench/view_size.py                       # 500 x 32, ~12k characters a sample
    .venv/bin/python bench/view_size.py --problems 50 --samples 8

No model can produce 16,000 AIME-length samples on this machine, so the run folder is made
here: a ``val_only`` run's ``config.yaml`` and ``logs/<run>_generations.jsonl`` in exactly the
format the evaluation writes, each sample three turns of generated text (words drawn from a
5,000-word vocabulary, about as compressible as model text: see the printed gzip ratio), a code
block, its sandbox output and a boxed answer. Then: the seconds ``simpletir view`` takes, the
HTML file's size, and in headless Chromium (playwright) the seconds until the page is ready, a
problem with its 32 samples is open, and the 'solved' filter has re-rendered, plus the
page's JS heap.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def words(rng: random.Random, vocabulary: list[str], n: int) -> str:
    return " ".join(rng.choice(vocabulary) for _ in range(n))


def make_sample(rng: random.Random, vocabulary: list[str], pid: int, k: int, chars: int) -> dict[str, object]:
    per_turn = max(chars // 3 // 7, 10)  # ~7 characters a word
    correct = rng.random() < 0.3
    turns = []
    for t in range(3):
        code = f"import sympy\nx = sympy.symbols('x')\nprint(sympy.solve(x**2 - {pid + t}, x))"
        text = words(rng, vocabulary, per_turn) + f"\n```python\n{code}\n```\n" if t < 2 else ""
        if t == 2:
            text = (
                words(rng, vocabulary, per_turn)
                + f" so the answer is \\boxed{{{pid if correct else pid + 1}}}"
            )
        result = {
            "stdout": f"[-sqrt({pid + t}), sqrt({pid + t})]\n", "stderr": "", "exit_code": 0,
            "timed_out": False, "killed_by": None, "duration_ms": 41.0, "truncated": False, "error": None,
        }  # fmt: skip
        turns.append({
            "index": t, "text": text, "code": code if t < 2 else None, "tool": "python" if t < 2 else None,
            "tool_result": result if t < 2 else None,
            "observation": f"\nCode execution result: {result['stdout']}\n" if t < 2 else None,
            "final_answer": str(pid if correct else pid + 1) if t == 2 else None,
            "is_void": False, "truncated": False, "stop_reason": "stop",
        })  # fmt: skip
    return {
        "problem_id": str(pid), "benchmark": "aime24", "sample_index": k, "data_source": "synthetic",
        "question": f"Problem {pid}: " + words(rng, vocabulary, 60), "ground_truth": str(pid),
        "response": "".join(t["text"] for t in turns), "num_turns": 3, "num_tool_calls": 2, "turns": turns,
        "finish_reason": "answer", "truncated": False, "truncation_cause": None,
        "response_tokens": chars // 4, "answer": str(pid if correct else pid + 1),
        "score": 1.0 if correct else 0.0, "reason": "correct" if correct else "wrong", "reward_extra": {},
    }  # fmt: skip


def make_run(root: Path, problems: int, samples: int, chars: int) -> tuple[Path, int, float]:
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocabulary = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(5000)]
    vocabulary += ["\\frac{1}{2}", "$x^2$", "=", "+", "\\sqrt{3}", "therefore", "the", "we"] * 50
    run_dir = root / "runs" / "big_eval"
    logs = root / "logs"
    run_dir.mkdir(parents=True)
    logs.mkdir()
    (run_dir / "config.yaml").write_text(
        f"experiment_name: big_eval\nmodel_name: synthetic\nval_only: true\nvalid_dataset: aime24\n"
        f"n_val: {samples}\nlogs_dir: {logs}\n"
    )
    path = logs / "big_eval_generations.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for pid in range(problems):
            for k in range(samples):
                handle.write(json.dumps(make_sample(rng, vocabulary, pid, k, chars)) + "\n")
    raw = path.read_bytes()
    ratio = len(raw) / len(gzip.compress(raw[: 20 * 2**20], 6)) * min(1.0, 20 * 2**20 / len(raw))
    return run_dir, len(raw), ratio


def browser_timings(html: Path) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium-headless-shell") or shutil.which("chromium")
    if executable is None:
        return {}
    out: dict[str, float] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        t0 = time.perf_counter()
        page.goto(html.as_uri(), timeout=300_000)
        page.wait_for_selector("body[data-ready='1']", timeout=300_000)
        out["ready_s"] = time.perf_counter() - t0
        page.click("nav button[data-tab='problems']")
        t0 = time.perf_counter()
        page.click("#problem-table tr.row >> nth=7")
        page.wait_for_selector(".sample .body")
        out["open_problem_s"] = time.perf_counter() - t0
        out["samples_in_problem"] = page.locator(".sample").count()
        t0 = time.perf_counter()
        page.click("button[data-filter='solved']")
        page.wait_for_selector("#problem-table tr.row")
        out["filter_s"] = time.perf_counter() - t0
        heap = page.evaluate("performance.memory ? performance.memory.usedJSHeapSize : null")
        out["js_heap_mib"] = heap / 2**20 if heap else float("nan")
        out["console_errors"] = len(errors)
        browser.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--problems", type=int, default=500)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--chars", type=int, default=12000, help="characters of response per sample")
    parser.add_argument("--workdir", default="/tmp/simpletir-view-size")
    args = parser.parse_args(argv)
    root = Path(args.workdir)
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    run_dir, raw_bytes, ratio = make_run(root, args.problems, args.samples, args.chars)
    made = time.perf_counter() - t0
    size = f"{raw_bytes / 2**20:.1f} MiB ({args.problems} x {args.samples})"
    print(f"generations: {size}, gzip ratio ~{ratio:.1f}, made in {made:.0f} s")
    from simpletir.viewer.collect import read_run
    from simpletir.viewer.view import write_report

    t0 = time.perf_counter()
    html = write_report([read_run(run_dir)], root / "big_eval_view.html")
    print(f"simpletir view: {time.perf_counter() - t0:.1f} s, {html.stat().st_size / 2**20:.1f} MiB HTML")
    timings = browser_timings(html)
    print("chromium:", json.dumps({k: round(v, 2) for k, v in timings.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
