"""A third-party simpletir plugin: the ``arith_easy`` benchmark.

Problems are easy arithmetic generated in code (no data file), deterministic for a given
``size`` and ``seed``; useful as a smoke-test benchmark a tiny model can sometimes solve.
Installed, it appears in ``simpletir plugins`` and in ``valid_dataset: arith_easy`` with no
change to simpletir.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from simpletir import hookimpl
from simpletir.core.specs import BenchmarkSpec
from simpletir.core.types import Message, Problem


@dataclass
class ArithEasyOptions:
    """Options under ``plugin_config.arith_easy``."""

    size: int = 50  # how many problems the benchmark has
    max_operand: int = 20  # operands are drawn from 1..max_operand


class ArithEasy:
    name = "arith_easy"

    def __init__(self, options: ArithEasyOptions) -> None:
        if options.size < 1 or options.max_operand < 1:
            raise ValueError("arith_easy: size and max_operand must be at least 1")
        self.options = options

    def load(self, data_dir: Path | None, *, limit: int | None = None, seed: int = 0) -> list[Problem]:
        # The set itself is fixed (seeded by 'size' only) so every run sees the same problems;
        # the run's seed only picks which ones when a limit applies.
        rng = random.Random(f"arith_easy-{self.options.size}-{self.options.max_operand}")
        problems = []
        for index in range(self.options.size):
            a = rng.randint(1, self.options.max_operand)
            b = rng.randint(1, self.options.max_operand)
            op = rng.choice("+-*")
            answer = a + b if op == "+" else a - b if op == "-" else a * b
            question = f"What is {a} {op} {b}?"
            problems.append(
                Problem(
                    id=str(index),
                    benchmark=self.name,
                    messages=(Message("user", question),),
                    ground_truth=str(answer),
                    data_source="arith_easy",
                )
            )
        if limit is not None and 0 <= limit < len(problems):
            chosen = sorted(random.Random(seed).sample(range(len(problems)), limit))
            problems = [problems[i] for i in chosen]
        return problems


@hookimpl
def register_benchmarks() -> list[BenchmarkSpec]:
    return [
        BenchmarkSpec(
            name="arith_easy",
            factory=lambda options, experiment: ArithEasy(options),
            config_cls=ArithEasyOptions,
            description="easy arithmetic generated in code (example third-party plugin)",
            aliases=("arith/easy",),
        )
    ]
