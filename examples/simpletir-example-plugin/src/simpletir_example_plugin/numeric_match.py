"""``numeric_match``: 1.0 when the final answer equals the ground truth as a number.

It shows both reward forms. ``score_many`` takes ``(response, ground_truth)`` pairs (the simple
form: the answer is the last ``\\boxed{}`` or, failing that, the last number of the response).
``score_inputs`` is Reward v1: each input carries the problem, the trajectory and the final
answer the configured answer format extracted, so this reward can read a per-problem tolerance
from the problem's metadata (``meta["tolerance"]``) and take ``tool_error_penalty`` off for
every failed tool call of the trajectory.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from simpletir.core.errors import ConfigError
from simpletir.core.specs import option
from simpletir.core.types import RewardResult

if TYPE_CHECKING:
    from simpletir.core.types import RewardInput

NAME = "numeric_match"
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


@dataclass
class NumericMatchOptions:
    """``plugin_config.numeric_match``."""

    tolerance: float = option(1e-6, "absolute difference still counted equal (meta['tolerance'] overrides)")
    tool_error_penalty: float = option(0.0, "subtracted per failed tool call (score_inputs only)")

    def __post_init__(self) -> None:
        where = f"plugin_config.{NAME}"
        if not (self.tolerance >= 0 and math.isfinite(self.tolerance)):
            raise ConfigError(f"{where}.tolerance = {self.tolerance} must be >= 0 and finite")
        if not 0 <= self.tool_error_penalty <= 1:
            raise ConfigError(f"{where}.tool_error_penalty = {self.tool_error_penalty} must be in [0, 1]")


def extract(response: str) -> str | None:
    """The last ``\\boxed{}`` content, else the last number, else None."""
    boxed = BOXED.findall(response)
    if boxed:
        return boxed[-1].strip()
    numbers = NUMBER.findall(response)
    return numbers[-1] if numbers else None


class NumericMatch:
    """The :class:`simpletir.core.specs.Reward` protocol, with Reward v1's ``score_inputs``."""

    name = NAME

    def __init__(self, options: NumericMatchOptions) -> None:
        self.options = options

    def judge(self, answer: str | None, ground_truth: str, tolerance: float) -> RewardResult:
        if answer is None:
            return RewardResult(0.0, "no_answer")
        try:
            got, want = float(answer.replace(",", "")), float(ground_truth)
        except ValueError:
            return RewardResult(0.0, "parse_error", extracted=answer)
        if abs(got - want) <= tolerance:
            return RewardResult(1.0, "correct", extracted=answer)
        return RewardResult(0.0, "wrong", extracted=answer)

    def score(self, response: str, ground_truth: str) -> RewardResult:
        return self.judge(extract(response), ground_truth, self.options.tolerance)

    def score_many(self, items: Sequence[tuple[str, str]]) -> list[RewardResult]:
        return [self.score(response, truth) for response, truth in items]

    def score_inputs(self, inputs: Sequence[RewardInput]) -> list[RewardResult]:
        results = []
        for item in inputs:
            tolerance = float(item.problem.meta.get("tolerance", self.options.tolerance))
            result = self.judge(item.final_answer, item.ground_truth, tolerance)
            errors = sum(
                1
                for turn in item.trajectory.turns
                if turn.tool_result is not None and not turn.tool_result.ok
            )
            if errors and self.options.tool_error_penalty:
                penalised = max(0.0, result.score - errors * self.options.tool_error_penalty)
                result = RewardResult(penalised, result.reason, result.extracted, {"tool_errors": errors})
            results.append(result)
        return results

    def close(self) -> None:
        """Nothing to release (a reward with worker processes stops them here)."""


def build(options: NumericMatchOptions, experiment: object) -> NumericMatch:
    return NumericMatch(options)
