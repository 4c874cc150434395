"""``arith`` and ``arith_train``: arithmetic generated in code, for smoke tests, the CPU
quickstart and the learning benchmark.

No data file: the problems come from a seeded generator, so a fresh install can check the
whole path (rollout, sandbox, reward, metrics, files, training). Questions are small enough
that a model which runs the code gets them right, which is the point: a pipeline that scores
zero here is broken.

``arith`` is the held-out (validation) set; ``arith_train`` is a training set drawn from
another stream of the same generator with every question of ``arith`` (same options) removed,
so training never sees a validation problem. ``operands=2`` with a small ``max_multiplier``
gives the easy problems (``a ± b``, ``a × small``) a 135M model can learn on a CPU.
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
TRAIN_NAME = "arith_train"
TRAIN_STREAM = 1_000_003  # the training stream's seed offset from generator_seed


@dataclass
class ArithOptions:
    """``plugin_config.arith`` / ``plugin_config.arith_train``."""

    size: int = option(16, "number of problems")
    max_operand: int = option(99, "operands are drawn from 2..max_operand")
    generator_seed: int = option(0, "seed of the problem generator (the set, not the subsample)")
    operands: int = option(3, "operands per question: 2 (a op b) or 3 (a op b op c)")
    max_multiplier: int = option(
        0, "operand right of a '*' is drawn from 2..max_multiplier (0 = max_operand)"
    )

    def __post_init__(self) -> None:
        where = "plugin_config.arith*"
        if self.size < 1:
            raise ConfigError(f"{where}.size = {self.size} must be >= 1")
        if self.max_operand < 2:
            raise ConfigError(f"{where}.max_operand = {self.max_operand} must be >= 2")
        if self.operands not in (2, 3):
            raise ConfigError(f"{where}.operands = {self.operands} must be 2 or 3")
        if self.max_multiplier == 1 or self.max_multiplier < 0:
            raise ConfigError(f"{where}.max_multiplier = {self.max_multiplier} must be 0 (off) or >= 2")


def _expression(rng: random.Random, options: ArithOptions) -> str:
    terms = [str(rng.randint(2, options.max_operand))]
    for _ in range(options.operands - 1):
        op = rng.choice("+-*")
        top = options.max_multiplier if op == "*" and options.max_multiplier else options.max_operand
        terms += [op, str(rng.randint(2, top))]
    return " ".join(terms)


def _problem(index: int, expression: str, benchmark: str) -> Problem:
    value = eval(expression, {"__builtins__": {}})  # digits and + - * only: built above
    return Problem(
        id=str(index),
        benchmark=benchmark,
        messages=(Message("user", f"What is ${expression}$? Give the integer value."),),
        ground_truth=str(value),
        data_source="simpletir/arith",
        meta={"expression": expression},
    )


def make_problems(options: ArithOptions) -> list[Problem]:
    """The validation set: ``size`` questions with integer answers, the same for the same options."""
    rng = random.Random(options.generator_seed)
    return [_problem(i, _expression(rng, options), NAME) for i in range(options.size)]


def make_train_problems(options: ArithOptions, held_out: ArithOptions) -> list[Problem]:
    """``size`` distinct training questions, none of which is in ``make_problems(held_out)``."""
    excluded = {p.meta["expression"] for p in make_problems(held_out)}
    rng = random.Random(options.generator_seed + TRAIN_STREAM)
    seen: set[str] = set()
    problems: list[Problem] = []
    for _ in range(options.size * 50):  # small operand ranges have few distinct questions
        expression = _expression(rng, options)
        if expression in excluded or expression in seen:
            continue
        seen.add(expression)
        problems.append(_problem(len(problems), expression, TRAIN_NAME))
        if len(problems) == options.size:
            return problems
    raise ConfigError(
        f"plugin_config.{TRAIN_NAME}: only {len(problems)} distinct questions outside the validation set "
        f"for size={options.size}; raise max_operand or lower size"
    )


class ArithBenchmark:
    def __init__(self, options: ArithOptions, name: str = NAME, held_out: ArithOptions | None = None) -> None:
        self.options = options
        self.name = name
        self.held_out = held_out

    def load(self, data_dir: Path | None, *, limit: int | None = None, seed: int = 0) -> list[Problem]:
        if self.held_out is None:
            return sample_problems(make_problems(self.options), limit, seed)
        return sample_problems(make_train_problems(self.options, self.held_out), limit, seed)


def build(options: ArithOptions, experiment: ExperimentConfig | None = None) -> ArithBenchmark:
    return ArithBenchmark(options)


def build_train(options: ArithOptions, experiment: ExperimentConfig | None = None) -> ArithBenchmark:
    """The training set; the validation options it must avoid are ``plugin_config.arith``."""
    raw = dict((experiment.plugin_config.get(NAME) or {}) if experiment is not None else {})
    return ArithBenchmark(options, TRAIN_NAME, held_out=ArithOptions(**raw))
