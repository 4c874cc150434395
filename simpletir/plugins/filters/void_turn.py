"""``void_turn``: SimpleTIR's key filter. A trajectory with a void turn trains on nothing.

A void turn is one with neither a complete code block nor a final answer (the rollout marks
it, ``Turn.is_void``). SimpleTIR found that these trajectories -- usually the model drifting
into low-probability text after a tool observation -- blow up gradient norms in multi-turn
RL; zeroing their whole loss mask keeps training stable.

The masked trajectory stays in its group: its reward still counts in the group mean and std
that every other sample's advantage is measured against (as in SimpleTIR, whose mask only
multiplied the loss mask). Validation is never filtered. With ``mask_void_turns: false`` (or
``tool_use: false``, as SimpleTIR only masked with tools on) the filter only counts.

Metrics (``filter/void_turn/...``): ``trajectories``, ``void`` (trajectories with a void
turn), ``masked`` and ``masked_tokens`` (loss tokens removed). The batch-level
``env/void_turn_ratio`` (SimpleTIR's name) comes from :mod:`simpletir.core.batching`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from simpletir.core.specs import FilterContext, FilterResult
from simpletir.core.types import TrajectoryGroup

NAME = "void_turn"


@dataclass  # not frozen: the TrajectoryFilter protocol declares a settable ``name``
class VoidTurnFilter:
    enabled: bool = True
    name: str = NAME

    def apply(self, groups: Sequence[TrajectoryGroup], ctx: FilterContext) -> FilterResult:
        if not ctx.training:
            return FilterResult(tuple(groups))
        total = void = masked = masked_tokens = 0
        kept = []
        for group in groups:
            trajectories = []
            for t in group.trajectories:
                total += 1
                if t.has_void_turn:
                    void += 1
                    if self.enabled:
                        masked += 1
                        masked_tokens += t.num_loss_tokens
                        t = t.masked(NAME)
                trajectories.append(t)
            kept.append(group.replace(trajectories))
        metrics = {"trajectories": total, "void": void, "masked": masked, "masked_tokens": masked_tokens}
        return FilterResult(tuple(kept), {k: float(v) for k, v in metrics.items()})
