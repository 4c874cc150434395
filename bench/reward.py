"""Reward throughput: the math_verify plugin (process pool, hard timeouts) vs math-verify called directly.

    .venv/bin/python bench/reward.py [--data-dir ../shared/data] [--workers 2] [--samples 32]

Workloads, all built from the benchmark ground truths (AIME 2024/2025 and MATH500):

- ``eval``: what an evaluation scores. Each problem gets ``--samples`` responses, as a model's
  n_val samples look: a third give the gold answer (sometimes in another form: leading zero,
  ``\\dfrac``), a third give another problem's answer, a sixth give no boxed answer, the rest a
  long reasoning text with the gold boxed at the end. Samples repeat answers, as real ones do.
- ``hard``: every item a distinct (answer, gold) pair that needs sympy (no integer fast path,
  no repeats, no cache hits): the worst case for the pool.
- ``pathological``: the ``hard`` items with 1% replaced by towers of exponents and deeply
  nested parentheses; shows the bound holding under load.

The baseline is math-verify used directly in this process: ``verify(parse(gold), parse(response))``
with its timeouts off (its signal-based timeouts cannot run in threads; in the main thread
they would add ``signal`` calls but change nothing here). The baseline skips the pathological
workload: without a timeout it would stall (the reason the pool exists).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from simpletir.core.data import read_parquet_problems  # noqa: E402
from simpletir.plugins.rewards.math_verify import MathVerifyOptions, MathVerifyReward  # noqa: E402

FILES = ("deepscaler/aime", "deepscaler/aime25", "simplelr_math_35/test")
FILLER = "Let us reason step by step. " * 40
PATHOLOGICAL = ["9^{9^{9^{9^{9}}}}", "(" * 3000 + "1" + ")" * 3000, "10^{10^{10}}", "(10^{7})!"]


def golds(data_dir: Path) -> list[str]:
    return [p.ground_truth for f in FILES for p in read_parquet_problems(data_dir / f"{f}.parquet", f)]


def eval_workload(all_golds: list[str], samples: int, rng: random.Random) -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = []
    for gold in all_golds:
        for _ in range(samples):
            roll = rng.random()
            if roll < 1 / 3:
                answer = gold.replace("\\frac", "\\dfrac") if rng.random() < 0.5 else gold
                if gold.isdigit() and rng.random() < 0.3:
                    answer = "0" + gold
                items.append((f"So the answer is $\\boxed{{{answer}}}$.", gold))
            elif roll < 2 / 3:
                items.append((f"Hence \\boxed{{{rng.choice([*all_golds[:60], gold])}}}", gold))
            elif roll < 5 / 6:
                items.append(("I am not sure how to finish this.", gold))
            else:
                items.append(
                    (f"{FILLER}\n```python\nprint(1)\n```\nCode execution result: \\boxed{{{gold}}}\n", gold)
                )
    rng.shuffle(items)
    return items


def hard_workload(all_golds: list[str], n: int, rng: random.Random) -> list[tuple[str, str]]:
    symbolic = [g for g in all_golds if not g.strip().lstrip("-").isdigit()]
    seen: set[tuple[str, str]] = set()
    items: list[tuple[str, str]] = []
    while len(items) < n:
        gold = rng.choice(symbolic)
        # Half are the gold in another form (a real equivalence check), half another answer.
        answer = gold.replace("\\frac", "\\dfrac") + " " if rng.random() < 0.5 else rng.choice(symbolic)
        answer = answer + " " * rng.randint(0, 3)  # distinct strings, same meaning: defeats caching
        key = (answer, gold)
        if key in seen or answer.strip() == gold.strip():
            continue
        seen.add(key)
        items.append((f"\\boxed{{{answer}}}", gold))
    return items


def run_candidate(
    items: list[tuple[str, str]], workers: int, timeout_s: float
) -> tuple[float, list[str], dict]:
    with MathVerifyReward(MathVerifyOptions(workers=workers, timeout_s=timeout_s)) as reward:
        reward.score_many([("\\boxed{\\frac{1}{2}}", "0.5")] * workers)  # workers up before timing
        started = time.perf_counter()
        results = reward.score_many(items)
        elapsed = time.perf_counter() - started
        stats = vars(reward.pool.stats).copy()
    return elapsed, [r.reason for r in results], stats


def run_baseline(items: list[tuple[str, str]]) -> tuple[float, list[bool]]:
    from math_verify import parse, verify

    verdicts = []
    started = time.perf_counter()
    for response, gold in items:
        verdicts.append(
            bool(
                verify(
                    parse(f"${gold}$", parsing_timeout=None),
                    parse(response, parsing_timeout=None),
                    timeout_seconds=None,
                )
            )
        )
    return time.perf_counter() - started, verdicts


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--samples", type=int, default=32, help="responses per problem in the eval workload")
    parser.add_argument("--hard", type=int, default=1000, help="items in the hard workload")
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    rng = random.Random(args.seed)
    all_golds = golds(Path(args.data_dir))
    print(f"cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.2f}, workers: {args.workers}, "
          f"timeout {args.timeout} s, python {sys.version.split()[0]}")  # fmt: skip

    workloads = {
        "eval": eval_workload(all_golds, args.samples, rng),
        "hard": hard_workload(all_golds, args.hard, rng),
    }
    hard_patho = list(workloads["hard"])
    for i in range(0, len(hard_patho), 100):
        hard_patho[i] = (f"\\boxed{{{PATHOLOGICAL[(i // 100) % len(PATHOLOGICAL)]}}}", "5")
    workloads["pathological"] = hard_patho

    header = f"{'workload':13} {'items':>6} {'candidate/s':>12} {'baseline/s':>11} {'ratio':>6}"
    print(f"{header}  reasons / agreement")
    for name, items in workloads.items():
        elapsed, reasons, stats = run_candidate(items, args.workers, args.timeout)
        rate = len(items) / elapsed
        if name == "pathological":
            worst = stats["killed"]
            print(f"{name:13} {len(items):>6} {rate:>12.0f} {'(stalls)':>11} {'-':>6}  "
                  f"{dict(Counter(reasons))}; workers killed: {worst}; {elapsed:.1f} s total")  # fmt: skip
            continue
        base_elapsed, base = run_baseline(items)
        base_rate = len(items) / base_elapsed
        agree = sum((r == "correct") == b for r, b in zip(reasons, base, strict=True)) / len(items)
        print(f"{name:13} {len(items):>6} {rate:>12.0f} {base_rate:>11.0f} {rate / base_rate:>6.2f}  "
              f"{dict(Counter(reasons))}; same verdict as baseline: {100 * agree:.1f}%")  # fmt: skip
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
