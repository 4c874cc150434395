"""``group``: rejection sampling of whole groups (the ``n`` samples of one prompt).

A group is dropped, on training batches only, for the first of these reasons that holds
(each is counted under its own metric, ``filter/group/<reason>``):

``empty``
    it has no trajectories (SimpleTIR issue #11: empty groups reached the trainer).
``all_clipped``
    every sample hit the length cap (SimpleTIR's ``over_long_all``); option ``drop_all_clipped``.
``all_masked``
    no sample has a loss token left (e.g. all void): the group would train on nothing.
``below_min_n``
    fewer than ``min_n`` samples still carry loss. SimpleTIR's ``min_n`` (4 in its config)
    counted only over-long samples and only with ``remove_clip``; here every mask counts
    (void turns too), and the default is 1, which keeps SimpleTIR's default behaviour.
``low_std``
    the rewards' standard deviation is below ``min_std`` (1e-3): all samples scored alike, so
    every GRPO advantage would be 0 (option ``rejection_sample``). A group of one has std 0.
``acc_low`` / ``acc_high``
    with ``acc_filter: "LOW_HIGH"`` (e.g. ``"0.1_0.9"``), the fraction of solved samples is
    below LOW or above HIGH (SimpleTIR's ``solve_low`` / ``solve_high``).

Also reported: ``solve_none`` / ``solve_all`` (groups with no / every sample solved, over all
groups seen, as SimpleTIR's ``batch/solve_none`` / ``batch/solve_all``), ``short`` (groups
with fewer than ``n`` samples, kept when otherwise fine), ``kept`` and ``dropped``.
"Solved" is the verifier's verdict, before any reward shaping.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from simpletir.core.errors import ConfigError
from simpletir.core.filtering import hit_length_cap, is_trainable, solved
from simpletir.core.specs import FilterContext, FilterResult
from simpletir.core.types import TrajectoryGroup

NAME = "group"
DROP_REASONS = ("empty", "all_clipped", "all_masked", "below_min_n", "low_std", "acc_low", "acc_high")
_OFF = {"", "off", "none", "false"}


def parse_acc_band(
    value: str | None, *, key: str = f"plugin_config.{NAME}.acc_filter"
) -> tuple[float, float] | None:
    """``"0.1_0.9"`` -> ``(0.1, 0.9)``; None / ``"off"`` -> None. Errors name ``key`` and the value."""
    if value is None or str(value).strip().lower() in _OFF:
        return None
    expected = "expected 'LOW_HIGH' with 0 <= LOW <= HIGH <= 1, e.g. '0.1_0.9', or 'off'"
    parts = str(value).strip().split("_")
    if len(parts) != 2:
        raise ConfigError(f"{key}={value!r}: {expected}")
    try:
        low, high = float(parts[0]), float(parts[1])
    except ValueError:
        raise ConfigError(f"{key}={value!r}: {expected}") from None
    if not (0.0 <= low <= high <= 1.0):
        raise ConfigError(f"{key}={value!r}: {expected}")
    return low, high


@dataclass(frozen=True)
class GroupFilterOptions:
    """Options under ``plugin_config.group``."""

    rejection_sample: bool = field(default=True, metadata={"help": "drop groups whose reward std < min_std"})
    min_std: float = field(default=1e-3, metadata={"help": "reward std below which a group has no signal"})
    acc_filter: str | None = field(
        default=None,
        metadata={"help": "keep groups with solved fraction in LOW_HIGH, e.g. '0.1_0.9' (None = off)"},
    )
    min_n: int = field(default=1, metadata={"help": "fewest samples that must still carry loss"})
    drop_all_clipped: bool = field(
        default=True, metadata={"help": "drop groups whose samples all hit the cap"}
    )

    def __post_init__(self) -> None:
        parse_acc_band(self.acc_filter)
        if self.min_std < 0:
            raise ConfigError(f"plugin_config.{NAME}.min_std={self.min_std!r}: must be >= 0")
        if self.min_n < 1:
            raise ConfigError(f"plugin_config.{NAME}.min_n={self.min_n!r}: must be >= 1")


def reward_std(scores: Sequence[float]) -> float:
    """Unbiased std, as the GRPO advantage uses; 0 for fewer than two samples."""
    return statistics.stdev(scores) if len(scores) > 1 else 0.0


@dataclass
class GroupFilter:
    options: GroupFilterOptions = GroupFilterOptions()
    name: str = NAME

    def drop_reason(self, group: TrajectoryGroup, ctx: FilterContext) -> str | None:
        """Why this group is dropped (one of :data:`DROP_REASONS`), or None to keep it."""
        samples = group.trajectories
        opts = self.options
        if not samples:
            return "empty"
        if opts.drop_all_clipped and all(hit_length_cap(t, ctx.max_response_length) for t in samples):
            return "all_clipped"
        trainable = sum(is_trainable(t) for t in samples)
        if trainable == 0:
            return "all_masked"
        if trainable < opts.min_n:
            return "below_min_n"
        if opts.rejection_sample and reward_std(group.scores) < opts.min_std:
            return "low_std"
        band = parse_acc_band(opts.acc_filter)
        if band is not None:
            accuracy = sum(solved(t) for t in samples) / len(samples)
            if accuracy < band[0]:
                return "acc_low"
            if accuracy > band[1]:
                return "acc_high"
        return None

    def apply(self, groups: Sequence[TrajectoryGroup], ctx: FilterContext) -> FilterResult:
        if not ctx.training:
            return FilterResult(tuple(groups))
        counts = dict.fromkeys(("kept", "dropped", "short", "solve_none", "solve_all", *DROP_REASONS), 0)
        kept = []
        for group in groups:
            samples = group.trajectories
            if samples:
                num_solved = sum(solved(t) for t in samples)
                counts["solve_none"] += num_solved == 0
                counts["solve_all"] += num_solved == len(samples)
                counts["short"] += len(samples) < ctx.n_samples
            reason = self.drop_reason(group, ctx)
            if reason is None:
                counts["kept"] += 1
                kept.append(group)
            else:
                counts["dropped"] += 1
                counts[reason] += 1
        return FilterResult(tuple(kept), {k: float(v) for k, v in counts.items()})
