"""``arith_easy``: a benchmark of easy arithmetic generated in code (no data file).

The problem set is fixed by its options (the same problems on every run); the run's ``seed``
only picks which ones when ``val_sample_size`` limits them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from simpletir.core.errors import ConfigError
from simpletir.core.specs import option
from simpletir.core.types import Message, Problem

NAME = "arith_easy"


@dataclass
class ArithEasyOptions:
    """``plugin_config.arith_easy``. Each field has a help string (``config show --help-fields``);
    ``__post_init__`` refuses bad values with a ``ConfigError`` naming the key, so a config check
    (``simpletir config show``, or a run before it starts) reports it in one line."""

    size: int = option(50, "how many problems the benchmark has")
    max_operand: int = option(20, "operands are drawn from 1..max_operand")
    operators: str = option("+-*", "operators questions use, from + - *")

    def __post_init__(self) -> None:
        where = f"plugin_config.{NAME}"
        if self.size < 1:
            raise ConfigError(f"{where}.size = {self.size} must be >= 1")
        if self.max_operand < 1:
            raise ConfigError(f"{where}.max_operand = {self.max_operand} must be >= 1")
        if not self.operators or set(self.operators) - set("+-*"):
            raise ConfigError(f"{where}.operators = {self.operators!r} must be made of + - *")


class ArithEasy:
    """The :class:`simpletir.core.specs.Benchmark` protocol: ``name`` and ``load``."""

    name = NAME

    def __init__(self, options: ArithEasyOptions) -> None:
        self.options = options

    def load(self, data_dir: Path | None, *, limit: int | None = None, seed: int = 0) -> list[Problem]:
        o = self.options
        rng = random.Random(f"{NAME}-{o.size}-{o.max_operand}-{o.operators}")
        problems = []
        for index in range(o.size):
            a, b = rng.randint(1, o.max_operand), rng.randint(1, o.max_operand)
            op = rng.choice(o.operators)
            answer = a + b if op == "+" else a - b if op == "-" else a * b
            problems.append(
                Problem(
                    id=str(index),
                    benchmark=NAME,
                    messages=(Message("user", f"What is {a} {op} {b}?"),),
                    ground_truth=str(answer),
                    data_source=NAME,
                    meta={"operator": op},
                )
            )
        if limit is not None and 0 <= limit < len(problems):
            chosen = sorted(random.Random(seed).sample(range(len(problems)), limit))
            problems = [problems[i] for i in chosen]
        return problems


def build(options: ArithEasyOptions, experiment: object) -> ArithEasy:
    """The factory: cheap (it only stores the options), as every factory must be."""
    return ArithEasy(options)
