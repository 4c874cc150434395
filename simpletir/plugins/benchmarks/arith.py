"""``arith``: easy arithmetic generated in code, for smoke tests and the CPU quickstart.

No data file: the problems come from a seeded generator, so a fresh install can check the
whole evaluation path (rollout, sandbox, reward, metrics, files). Questions are small enough
that a model which runs the code gets them right, which is the point: a pipeline that scores
zero here is broken.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from simpletir.core.config import ExperimentConfig
from simpletir.core.data import sample_problems
from simpletir.core.errors import ConfigError
from simpletir.core.specs import option
from simpletir.core.types import Message, Problem

NAME = "arith"


@dataclass
class ArithOptions:
    """``plugin_config.arith``."""

    size: int = option(16, "number of problems")
    max_operand: int = option(99, "operands are drawn from 2..max_operand")
    generator_seed: int = option(0, "seed of the problem generator (the set, not the subsample)")

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ConfigError(f"plugin_config.{NAME}.size = {self.size} must be >= 1")
        if self.max_operand < 2:
            raise ConfigError(f"plugin_config.{NAME}.max_operand = {self.max_operand} must be >= 2")


def make_problems(options: ArithOptions) -> list[Problem]:
    """``a op b op c`` questions with integer answers, the same for the same options."""
    rng = random.Random(options.generator_seed)
    problems = []
    for index in range(options.size):
        a, b, c = (rng.randint(2, options.max_operand) for _ in range(3))
        op1, op2 = rng.choice("+-*"), rng.choice("+-*")
        expression = f"{a} {op1} {b} {op2} {c}"
        value = eval(expression, {"__builtins__": {}})  # digits and + - * only: built above
        problems.append(
            Problem(
                id=str(index),
                benchmark=NAME,
                messages=(Message("user", f"What is ${expression}$? Give the integer value."),),
                ground_truth=str(value),
                data_source="simpletir/arith",
                meta={"expression": expression},
            )
        )
    return problems


class ArithBenchmark:
    name = NAME

    def __init__(self, options: ArithOptions) -> None:
        self.options = options

    def load(self, data_dir: Path | None, *, limit: int | None = None, seed: int = 0) -> list[Problem]:
        return sample_problems(make_problems(self.options), limit, seed)


def build(options: ArithOptions, experiment: ExperimentConfig | None = None) -> ArithBenchmark:
    return ArithBenchmark(options)
