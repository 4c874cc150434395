"""Evaluation metrics over scored trajectory groups: pure functions, no I/O.

Definitions (every rate is a share of trajectories unless it says otherwise):

- ``pass@k``: the unbiased estimator of Chen et al. (2021), ``1 - C(n-c, k) / C(n, k)`` per
  problem with ``n`` samples of which ``c`` are correct, averaged over problems. Reported for
  k in {1, 2, 4, ..., n}, for n itself, and for 5 when n >= 5 (the seed's ``pass@5``).
- ``avg@n``: the mean score over all samples (equal to pass@1 for 0/1 rewards).
- ``avg_turns``: mean model turns per trajectory; ``avg_tool_calls``: mean executed tool calls.
- ``tool_usage_rate``: trajectories that executed code at least once.
- ``code_success_rate``: executed tool calls that succeeded (exit 0, no timeout or kill), as a
  share of executed calls; None when nothing ran.
- ``tool_errors`` / ``tool_timeouts``: executed calls where the tool itself failed (raised, or
  overran the loop's limit: ``ToolResult.error``) / that timed out (the tool's own limit or the
  loop's), as counts (``tool/errors`` and ``tool/timeouts`` in training).
- ``void_turn_ratio``: trajectories with a void turn (neither a complete code block nor an answer).
- ``truncation_ratio``: trajectories marked truncated by any cap: the response length or the
  context window (finish reason ``length``), a prompt over ``max_prompt_length``, and also an
  observation cut to ``rollout.max_obs_tokens`` in a trajectory that then went on (even to a
  correct answer). Each sample's ``truncation_cause`` is in the generations file; the training
  filters' "clipped" count only the first two.
- ``answer_rate``: trajectories in which the reward found an answer (``RewardResult.extracted``).
- ``reasons``: verdict counts by reward reason; ``finish_reasons``: counts by why trajectories ended.

"Overall" metrics pool every problem of every benchmark (micro-average over problems).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from simpletir.core.types import ToolResult, Trajectory, TrajectoryGroup


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n is correct."""
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: correct count c={c} must be within 0..n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k={k} must be within 1..n={n}")
    if n - c < k:  # every draw of k must include a correct sample
        return 1.0
    # Exact integer binomials, one correctly rounded division: no cancellation error.
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def default_ks(n: int, extra: Iterable[int] = (5,)) -> list[int]:
    """{1, 2, 4, ..., <= n} plus n itself plus each ``extra`` k that is <= n."""
    if n < 1:
        return []
    ks = {n}
    k = 1
    while k <= n:
        ks.add(k)
        k *= 2
    ks.update(e for e in extra if 1 <= e <= n)
    return sorted(ks)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _tool_error(result: ToolResult | None) -> bool:
    return result is not None and result.error is not None and not result.timed_out


def _answered(trajectory: Trajectory) -> bool:
    if trajectory.reward is not None:
        return trajectory.reward.extracted is not None
    return trajectory.final_answer is not None


def summarize(groups: Sequence[TrajectoryGroup], ks: Sequence[int] | None = None) -> dict[str, Any]:
    """Every metric of the module docstring for one set of groups (a benchmark, or all of them).

    ``ks`` defaults to :func:`default_ks` of the smallest group size, so pass@k is always
    computed over problems that have at least k samples.
    """
    groups = [g for g in groups if g.trajectories]
    trajectories = [t for g in groups for t in g.trajectories]
    if not trajectories:
        return {"n_problems": 0, "n_samples": 0}
    sizes = [len(g.trajectories) for g in groups]
    n_min = min(sizes)
    chosen_ks = sorted(set(ks)) if ks is not None else default_ks(n_min)
    for k in chosen_ks:
        if not 1 <= k <= n_min:
            raise ValueError(
                f"pass@{k} needs at least {k} samples per problem; the smallest group has {n_min}"
            )

    metrics: dict[str, Any] = {
        "n_problems": len(groups),
        "n_samples": len(trajectories),
        "samples_per_problem": n_min if n_min == max(sizes) else _mean([float(s) for s in sizes]),
    }
    correct = [sum(1 for t in g.trajectories if t.score > 0) for g in groups]
    for k in chosen_ks:
        metrics[f"pass@{k}"] = _mean([pass_at_k(n, c, k) for n, c in zip(sizes, correct, strict=True)])
    avg_key = f"avg@{n_min}" if n_min == max(sizes) else "avg@n"
    metrics[avg_key] = _mean([t.score for t in trajectories])
    metrics["mean_score"] = metrics[avg_key]

    calls = [turn for t in trajectories for turn in t.turns if turn.ran_code]
    metrics.update(
        avg_turns=_mean([float(t.num_turns) for t in trajectories]),
        avg_tool_calls=_mean([float(t.num_tool_calls) for t in trajectories]),
        tool_usage_rate=_mean([float(t.used_tool) for t in trajectories]),
        code_success_rate=_mean([float(turn.code_ok) for turn in calls]) if calls else None,
        tool_errors=sum(1 for turn in calls if _tool_error(turn.tool_result)),
        tool_timeouts=sum(1 for turn in calls if turn.tool_result is not None and turn.tool_result.timed_out),
        void_turn_ratio=_mean([float(t.has_void_turn) for t in trajectories]),
        truncation_ratio=_mean([float(t.truncated) for t in trajectories]),
        answer_rate=_mean([float(_answered(t)) for t in trajectories]),
        avg_response_tokens=_mean([float(len(t.response_ids)) for t in trajectories]),
        reasons=dict(
            sorted(Counter(t.reward.reason if t.reward else "unscored" for t in trajectories).items())
        ),
        finish_reasons=dict(sorted(Counter(str(t.finish_reason) for t in trajectories).items())),
    )
    return metrics


def evaluation_metrics(
    groups_by_benchmark: Mapping[str, Sequence[TrajectoryGroup]], ks: Sequence[int] | None = None
) -> dict[str, Any]:
    """``{"overall": summarize(all groups), "benchmarks": {name: summarize(its groups)}}``."""
    everything = [g for groups in groups_by_benchmark.values() for g in groups]
    return {
        "overall": summarize(everything, ks),
        "benchmarks": {name: summarize(groups, ks) for name, groups in groups_by_benchmark.items()},
    }
