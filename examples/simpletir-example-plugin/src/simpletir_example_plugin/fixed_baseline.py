"""``fixed_baseline``: REINFORCE with a constant baseline, ``A_i = scale * (r_i - baseline)``.

An advantage estimator turns the step's rewards into one advantage per trajectory:
``compute(scores, group_ids)`` gets two ``[B]`` tensors (group-then-sample order; masked
trajectories included) and returns ``[B]`` floats, which the trainer broadcasts to each
trajectory's loss tokens. Chosen by ``algorithm.adv_estimator: fixed_baseline``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from simpletir.core.errors import ConfigError
from simpletir.core.specs import option

if TYPE_CHECKING:
    from torch import Tensor

NAME = "fixed_baseline"


@dataclass
class FixedBaselineOptions:
    """``plugin_config.fixed_baseline``."""

    baseline: float = option(0.5, "reward subtracted from every trajectory's reward")
    scale: float = option(1.0, "advantages are multiplied by this")

    def __post_init__(self) -> None:
        where = f"plugin_config.{NAME}"
        if not math.isfinite(self.baseline):
            raise ConfigError(f"{where}.baseline = {self.baseline} must be finite")
        if not (self.scale > 0 and math.isfinite(self.scale)):
            raise ConfigError(f"{where}.scale = {self.scale} must be > 0 and finite")


@dataclass(frozen=True)
class FixedBaseline:
    """The :class:`simpletir.core.specs.AdvantageEstimator` protocol: ``name`` and ``compute``."""

    baseline: float
    scale: float
    name: str = NAME

    def compute(self, scores: Tensor, group_ids: Tensor) -> Tensor:
        return (scores.float() - self.baseline) * self.scale


def build(options: FixedBaselineOptions, experiment: object) -> FixedBaseline:
    return FixedBaseline(options.baseline, options.scale)
