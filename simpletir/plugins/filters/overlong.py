"""``overlong``: what to do with responses that ran into the length cap.

Two independent behaviours, both on training batches only:

* **remove_clip** (top-level ``remove_clip``, from step ``start_clip_step`` on): every
  trajectory that hit the response-length cap gets its whole loss mask zeroed. "Hit the cap"
  is read from the rollout's record and the configured ``max_response_length``
  (:func:`~simpletir.core.filtering.hit_length_cap`), not from the padded batch width as
  SimpleTIR's code did; and ``start_clip_step`` is honoured (SimpleTIR read it but never used
  it). Like void-turn masking, the trajectory keeps its reward in its group's statistics.
* **soft overlong penalty** (DAPO, Yu et al. 2025; ``algorithm.overlong_buffer_len > 0``): a
  reward shaping, applied here -- after the reward function and before the ``group`` filter and
  the advantages -- so it moves the group mean/std the advantages use. A response of length
  ``L`` (all response tokens, observations included: that is what the cap counts) with
  ``L > max_response_length - buffer`` gets
  ``-min((L - (max_response_length - buffer)) / buffer, 1) * overlong_penalty_factor`` added to
  its score. The delta is recorded in ``reward.extra['shaping']['overlong']``; accuracy
  decisions (``solve_all``, ``acc_filter``) still read the verifier's verdict. Validation
  scores are never shaped.

Metrics (``filter/overlong/...``): ``clipped`` (trajectories at the cap: SimpleTIR's
``batch/response_clip_number``), ``masked``, ``masked_tokens``, ``active`` (1 once remove_clip
applies), ``penalized`` and ``penalty_sum``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from simpletir.core.errors import ConfigError
from simpletir.core.filtering import hit_length_cap, shape_reward
from simpletir.core.specs import FilterContext, FilterResult
from simpletir.core.types import TrajectoryGroup

NAME = "overlong"


def overlong_penalty(length: int, max_response_length: int, buffer_len: int, factor: float) -> float:
    """DAPO's soft overlong penalty for a response of ``length`` tokens (0 or negative)."""
    if buffer_len <= 0:
        return 0.0
    exceed = length - (max_response_length - buffer_len)
    if exceed <= 0:
        return 0.0
    return -min(exceed / buffer_len, 1.0) * factor


@dataclass
class OverlongFilter:
    remove_clip: bool = False
    start_clip_step: int = 0
    buffer_len: int = 0
    penalty_factor: float = 1.0
    name: str = NAME

    def apply(self, groups: Sequence[TrajectoryGroup], ctx: FilterContext) -> FilterResult:
        if not ctx.training:
            return FilterResult(tuple(groups))
        if self.buffer_len >= ctx.max_response_length:
            raise ConfigError(
                f"algorithm.overlong_buffer_len={self.buffer_len} must be smaller than "
                f"max_response_length={ctx.max_response_length}"
            )
        active = self.remove_clip and ctx.step >= self.start_clip_step
        clipped = masked = masked_tokens = penalized = 0
        penalty_sum = 0.0
        kept = []
        for group in groups:
            trajectories = []
            for t in group.trajectories:
                if hit_length_cap(t, ctx.max_response_length):
                    clipped += 1
                    if active:
                        masked += 1
                        masked_tokens += t.num_loss_tokens
                        t = t.masked(NAME)
                penalty = overlong_penalty(
                    len(t.response_ids), ctx.max_response_length, self.buffer_len, self.penalty_factor
                )
                if penalty < 0.0:
                    penalized += 1
                    penalty_sum += penalty
                    t = shape_reward(t, NAME, penalty)
                trajectories.append(t)
            kept.append(group.replace(trajectories))
        metrics = {
            "clipped": float(clipped),
            "masked": float(masked),
            "masked_tokens": float(masked_tokens),
            "active": 1.0 if active else 0.0,
            "penalized": float(penalized),
            "penalty_sum": penalty_sum,
        }
        return FilterResult(tuple(kept), metrics)
