"""Built-in trajectory filters, registered through the ``simpletir`` entry-point group.

The config chooses and orders them (``filters: [void_turn, overlong, group]``); the order
matters: ``overlong``'s reward shaping must run before ``group`` judges reward spread, and
masking filters must run before ``group`` counts what still carries loss. Each reads the
seed's top-level flags (``mask_void_turns``, ``remove_clip``, ``start_clip_step``) or the
``algorithm`` section; ``group`` also takes options under ``plugin_config.group``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from simpletir import hookimpl
from simpletir.core.errors import ConfigError
from simpletir.core.specs import FilterSpec, NoOptions
from simpletir.plugins.filters.group import GroupFilter, GroupFilterOptions
from simpletir.plugins.filters.overlong import OverlongFilter
from simpletir.plugins.filters.void_turn import VoidTurnFilter

if TYPE_CHECKING:
    from simpletir.core.config import ExperimentConfig

__all__ = ["GroupFilter", "GroupFilterOptions", "OverlongFilter", "VoidTurnFilter", "register_filters"]


def build_void_turn(options: NoOptions, config: ExperimentConfig) -> VoidTurnFilter:
    # SimpleTIR masked void turns only in tool mode; a single-turn run has no turns to void.
    return VoidTurnFilter(enabled=config.mask_void_turns and config.tool_use)


def build_overlong(options: NoOptions, config: ExperimentConfig) -> OverlongFilter:
    buffer_len = config.algorithm.overlong_buffer_len
    if not 0 <= buffer_len < config.max_response_length:
        raise ConfigError(
            f"algorithm.overlong_buffer_len={buffer_len} must be >= 0 and smaller than "
            f"max_response_length={config.max_response_length}"
        )
    return OverlongFilter(
        remove_clip=config.remove_clip,
        start_clip_step=config.start_clip_step,
        buffer_len=config.algorithm.overlong_buffer_len,
        penalty_factor=config.algorithm.overlong_penalty_factor,
    )


def build_group(options: GroupFilterOptions, config: ExperimentConfig) -> GroupFilter:
    return GroupFilter(options=options)


@hookimpl
def register_filters() -> Iterator[FilterSpec]:
    yield FilterSpec(
        name="void_turn",
        factory=build_void_turn,
        description="zero the loss of trajectories with a void turn (mask_void_turns); rewards still count",
    )
    yield FilterSpec(
        name="overlong",
        factory=build_overlong,
        description="mask responses cut at max_response_length (remove_clip, from start_clip_step); "
        "DAPO soft overlong penalty (algorithm.overlong_buffer_len)",
    )
    yield FilterSpec(
        name="group",
        factory=build_group,
        config_cls=GroupFilterOptions,
        description="drop groups with no reward spread, outside acc_filter, all clipped/masked, or < min_n",
    )
