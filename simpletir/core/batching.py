"""Filling one training batch: draw prompts, roll out, filter, keep ``train_batch_size`` groups.

SimpleTIR drew ``train_batch_size x oversample`` prompts, filtered the groups, and when too
few survived it *duplicated* survivors to fill the batch (and skipped the step when none
did). Here a shortfall is refilled honestly: further draws of fresh prompts, up to
``max_draws`` rollouts per step. When the budget is spent the step trains on fewer groups
and says so (``batch/effective_batch_size``, ``batch/shortfall``); nothing is duplicated and
no empty group reaches the trainer, whatever filters are configured.

The trainer loop reads::

    sampler = PromptSampler(train_problems, seed=config.seed)
    ctx = filter_context(config, step=step)
    batch = collect_batch(sampler.take, rollout, filters, ctx,
                          oversample=config.oversample, max_draws=config.max_draws)
    if not batch.groups: skip the update, log batch.metrics
    report.metrics.update(batch.metrics)

and an async loop drives a :class:`BatchCollector` directly (``next_draw_size`` / ``add``).

Metrics (SimpleTIR's names where it had one): ``env/void_turn_ratio``, ``env/code_use_ratio``,
``env/num_turns/mean``, ``batch/response_clip_number``, ``batch/solve_none``,
``batch/solve_all`` (over every group rolled out this step), ``batch/filter_all`` (groups the
filters dropped), ``batch/effective_batch_size``, and ``batch/draws``, ``batch/prompts_drawn``,
``batch/groups_rolled_out``, ``batch/empty_groups``, ``batch/surplus_groups``,
``batch/shortfall``; plus every filter's ``filter/<name>/...`` summed over the draws.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from simpletir.core.filtering import apply_filters, hit_length_cap, merge_draw_metrics, solved
from simpletir.core.specs import FilterContext, TrajectoryFilter
from simpletir.core.types import Problem, TrajectoryGroup

SamplePrompts = Callable[[int], Sequence[Problem]]
Rollout = Callable[[Sequence[Problem]], Sequence[TrajectoryGroup]]
AsyncRollout = Callable[[Sequence[Problem]], Awaitable[Sequence[TrajectoryGroup]]]


class PromptSampler:
    """Endless iteration over training problems: a seeded shuffle per epoch, no repeats within one.

    ``take(k)`` returns the next ``k`` problems, crossing into a freshly shuffled epoch when
    the current one runs out. ``state_dict`` / ``load_state_dict`` make resumption exact.
    """

    def __init__(self, problems: Sequence[Problem], *, seed: int = 0, shuffle: bool = True) -> None:
        if not problems:
            raise ValueError("PromptSampler needs at least one training problem")
        self.problems = list(problems)
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0
        self._order = self._order_of(0)

    def _order_of(self, epoch: int) -> list[int]:
        order = list(range(len(self.problems)))
        if self.shuffle:
            random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    def take(self, k: int) -> list[Problem]:
        if k < 0:
            raise ValueError(f"cannot take {k} problems")
        out: list[Problem] = []
        while len(out) < k:
            if self.position == len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._order_of(self.epoch)
            end = min(len(self._order), self.position + (k - len(out)))
            out.extend(self.problems[i] for i in self._order[self.position : end])
            self.position = end
        return out

    @property
    def passes(self) -> float:
        """Passes over the problems so far (2.0 once the second epoch is used up)."""
        return self.epoch + self.position / len(self._order)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._order = self._order_of(self.epoch)


def select_groups(
    survivors: Sequence[TrajectoryGroup], train_batch_size: int
) -> tuple[tuple[TrajectoryGroup, ...], dict[str, float]]:
    """Keep the first ``train_batch_size`` surviving groups (prompts were drawn shuffled, so
    draw order is already random; SimpleTIR's random subset is equivalent). Never pads."""
    kept = tuple(survivors[:train_batch_size])
    metrics = {
        "batch/effective_batch_size": float(len(kept)),
        "batch/surplus_groups": float(max(len(survivors) - train_batch_size, 0)),
        "batch/shortfall": float(train_batch_size - len(kept)),
    }
    return kept, metrics


def rollout_metrics(groups: Sequence[TrajectoryGroup], max_response_length: int) -> dict[str, float]:
    """What the policy did in one draw, before any filter (SimpleTIR's ``env/`` and ``batch/``)."""
    trajectories = [t for group in groups for t in group.trajectories]
    n = len(trajectories)
    code_use = [t.num_tool_calls / t.num_turns if t.num_turns else 0.0 for t in trajectories]
    solved_counts = [(sum(solved(t) for t in g.trajectories), len(g.trajectories)) for g in groups]
    lengths = [len(t.response_ids) for t in trajectories]
    clipped = sum(hit_length_cap(t, max_response_length) for t in trajectories)
    return {
        "reward/mean": sum(t.score for t in trajectories) / n if n else 0.0,
        "reward/accuracy": sum(solved(t) for t in trajectories) / n if n else 0.0,
        "response_length/mean": sum(lengths) / n if n else 0.0,
        "response_length/max": float(max(lengths, default=0)),
        "response_length/clip_ratio": clipped / n if n else 0.0,
        "env/tool_calls/mean": sum(t.num_tool_calls for t in trajectories) / n if n else 0.0,
        "env/void_turn_ratio": sum(t.has_void_turn for t in trajectories) / n if n else 0.0,
        "env/code_use_ratio": sum(code_use) / n if n else 0.0,
        "env/num_turns/mean": sum(t.num_turns for t in trajectories) / n if n else 0.0,
        "batch/response_clip_number": float(clipped),
        "batch/solve_none": float(sum(s == 0 for s, size in solved_counts if size)),
        "batch/solve_all": float(sum(s == size for s, size in solved_counts if size)),
    }


@dataclass(frozen=True)
class CollectedBatch:
    """The groups one training step trains on, and how they were obtained."""

    groups: tuple[TrajectoryGroup, ...]
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def effective_batch_size(self) -> int:
        return len(self.groups)


class BatchCollector:
    """Accumulates filtered draws until ``train_batch_size`` groups survive or the budget ends.

    The first draw asks for ``train_batch_size x oversample`` prompts; each refill asks for
    ``oversample x`` the groups still missing (at most the first draw's size).
    """

    def __init__(
        self,
        filters: Sequence[TrajectoryFilter],
        ctx: FilterContext,
        *,
        oversample: float = 1.0,
        max_draws: int = 1,
    ) -> None:
        if oversample < 1:
            raise ValueError(f"oversample must be >= 1, got {oversample}")
        if max_draws < 1:
            raise ValueError(f"max_draws must be >= 1, got {max_draws}")
        if ctx.train_batch_size < 1:
            raise ValueError(f"train_batch_size must be >= 1, got {ctx.train_batch_size}")
        self.filters = list(filters)
        self.ctx = ctx
        self.oversample = oversample
        self.max_draws = max_draws
        self.draws = 0
        self.prompts_drawn = 0
        self._survivors: list[TrajectoryGroup] = []
        self._rolled_out: list[TrajectoryGroup] = []
        self._filter_metrics: list[dict[str, float]] = []
        self._counts = {"groups_rolled_out": 0, "empty_groups": 0, "filter_all": 0}

    @property
    def missing(self) -> int:
        return max(self.ctx.train_batch_size - len(self._survivors), 0)

    @property
    def done(self) -> bool:
        return self.missing == 0 or self.draws >= self.max_draws

    def next_draw_size(self) -> int:
        """How many prompts the next rollout should get."""
        first = round(self.ctx.train_batch_size * self.oversample)
        return max(min(round(self.missing * self.oversample), first), 1)

    def add(self, groups: Sequence[TrajectoryGroup], prompts: int | None = None) -> None:
        """Filter one draw's scored groups and keep the survivors."""
        if self.done:
            raise RuntimeError(f"batch already complete after {self.draws} draws; call result()")
        self.draws += 1
        self.prompts_drawn += len(groups) if prompts is None else prompts
        self._counts["groups_rolled_out"] += len(groups)
        # Empty groups (a rollout that lost every sample) are refused here, not by a filter
        # that may be unconfigured: SimpleTIR issue #11.
        non_empty = [g for g in groups if g.trajectories]
        self._counts["empty_groups"] += len(groups) - len(non_empty)
        self._rolled_out.extend(non_empty)
        result = apply_filters(self.filters, non_empty, self.ctx)
        self._filter_metrics.append(dict(result.metrics))
        self._counts["filter_all"] += len(non_empty) - len(result.groups)
        self._survivors.extend(result.groups)

    def result(self) -> CollectedBatch:
        kept, metrics = select_groups(self._survivors, self.ctx.train_batch_size)
        metrics.update(rollout_metrics(self._rolled_out, self.ctx.max_response_length))
        metrics.update(merge_draw_metrics(self._filter_metrics))
        metrics.update({f"batch/{key}": float(value) for key, value in self._counts.items()})
        metrics["batch/draws"] = float(self.draws)
        metrics["batch/prompts_drawn"] = float(self.prompts_drawn)
        return CollectedBatch(groups=kept, metrics=metrics)


def collect_batch(
    sample_prompts: SamplePrompts,
    rollout: Rollout,
    filters: Sequence[TrajectoryFilter],
    ctx: FilterContext,
    *,
    oversample: float = 1.0,
    max_draws: int = 1,
) -> CollectedBatch:
    """Draw, roll out and filter until ``ctx.train_batch_size`` groups survive or
    ``max_draws`` rollouts are spent. ``rollout`` returns scored groups."""
    collector = BatchCollector(filters, ctx, oversample=oversample, max_draws=max_draws)
    while not collector.done:
        problems = sample_prompts(collector.next_draw_size())
        collector.add(rollout(problems), prompts=len(problems))
    return collector.result()


async def acollect_batch(
    sample_prompts: SamplePrompts,
    rollout: AsyncRollout,
    filters: Sequence[TrajectoryFilter],
    ctx: FilterContext,
    *,
    oversample: float = 1.0,
    max_draws: int = 1,
) -> CollectedBatch:
    """:func:`collect_batch` for an async rollout."""
    collector = BatchCollector(filters, ctx, oversample=oversample, max_draws=max_draws)
    while not collector.done:
        problems = sample_prompts(collector.next_draw_size())
        collector.add(await rollout(problems), prompts=len(problems))
    return collector.result()
