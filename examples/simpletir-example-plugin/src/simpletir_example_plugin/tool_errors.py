"""``tool_errors``: take trajectories with too many failed tool calls out of the loss.

A filter receives the step's groups and a :class:`~simpletir.core.specs.FilterContext`, and
returns a :class:`~simpletir.core.specs.FilterResult`: the groups it keeps (trajectories
re-masked with ``Trajectory.masked``, never mutated) and counts, which the run logs as
``filter/tool_errors/<metric>``. A masked trajectory stays in its group, so its reward still
counts in its group's baseline. Validation batches pass through untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from simpletir.core.errors import ConfigError
from simpletir.core.specs import FilterContext, FilterResult, option
from simpletir.core.types import Trajectory, TrajectoryGroup

NAME = "tool_errors"


@dataclass
class ToolErrorsOptions:
    """``plugin_config.tool_errors``."""

    max_errors: int = option(2, "a trajectory with more failed tool calls than this is masked")

    def __post_init__(self) -> None:
        if self.max_errors < 0:
            raise ConfigError(f"plugin_config.{NAME}.max_errors = {self.max_errors} must be >= 0")


def failed_calls(trajectory: Trajectory) -> int:
    return sum(1 for turn in trajectory.turns if turn.tool_result is not None and not turn.tool_result.ok)


@dataclass  # not frozen: the TrajectoryFilter protocol declares a settable ``name``
class ToolErrorsFilter:
    """The :class:`simpletir.core.specs.TrajectoryFilter` protocol: ``name`` and ``apply``."""

    max_errors: int
    name: str = NAME

    def apply(self, groups: Sequence[TrajectoryGroup], ctx: FilterContext) -> FilterResult:
        if not ctx.training:
            return FilterResult(tuple(groups))
        masked = masked_tokens = 0
        kept = []
        for group in groups:
            trajectories = []
            for t in group.trajectories:
                if failed_calls(t) > self.max_errors and not t.is_masked:
                    masked += 1
                    masked_tokens += t.num_loss_tokens
                    t = t.masked(NAME)
                trajectories.append(t)
            kept.append(group.replace(trajectories))
        return FilterResult(tuple(kept), {"masked": float(masked), "masked_tokens": float(masked_tokens)})


def build(options: ToolErrorsOptions, experiment: object) -> ToolErrorsFilter:
    return ToolErrorsFilter(max_errors=options.max_errors)
