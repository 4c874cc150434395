"""Builders for hand-made trajectories, for tests of filters, objectives and metrics.

A filter plugin's author can test it without a model or a sandbox::

    from simpletir.testing import make_group, make_trajectory

    group = make_group([make_trajectory(score=1.0), make_trajectory(score=0.0, void=True)])

Each trajectory gets a plausible token layout: one generated span per turn (loss-bearing),
followed by an observation span (never loss-bearing) when the turn ran code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from simpletir.core.types import (
    FinishReason,
    Message,
    Problem,
    RewardResult,
    ToolCall,
    ToolResult,
    Trajectory,
    TrajectoryGroup,
    TruncationCause,
    Turn,
)


def make_problem(problem_id: str = "p0", ground_truth: str = "1") -> Problem:
    return Problem(
        id=problem_id,
        benchmark="test",
        messages=(Message("user", f"question {problem_id}"),),
        ground_truth=ground_truth,
    )


def make_trajectory(
    *,
    score: float | None = 0.0,
    problem_id: str = "p0",
    sample_index: int = 0,
    turns: int = 1,
    gen_tokens: int = 4,
    obs_tokens: int = 2,
    code_turns: int = 0,
    void: bool = False,
    truncated: bool = False,
    truncation_cause: TruncationCause | None = None,
    finish_reason: FinishReason | None = None,
    response_length: int | None = None,
) -> Trajectory:
    """One trajectory of ``turns`` turns, ``gen_tokens`` generated ids each.

    The first ``code_turns`` turns ran code and are followed by ``obs_tokens`` observation ids;
    with ``void`` the last turn is void. ``response_length`` pads (with loss-bearing generated
    ids) or trims the response to an exact length, for length-cap tests. ``score=None`` leaves
    the trajectory unscored.
    """
    if code_turns > turns:
        raise ValueError(f"code_turns ({code_turns}) cannot exceed turns ({turns})")
    ids: list[int] = []
    mask: list[int] = []
    built = []
    for index in range(turns):
        start = len(ids)
        ids.extend(range(100 + start, 100 + start + gen_tokens))
        mask.extend([1] * gen_tokens)
        gen_span = (start, len(ids))
        ran_code = index < code_turns
        obs_span = None
        if ran_code:
            obs_start = len(ids)
            ids.extend([7] * obs_tokens)
            mask.extend([0] * obs_tokens)
            obs_span = (obs_start, len(ids))
        built.append(
            Turn(
                index=index,
                gen_span=gen_span,
                text=f"turn {index}",
                code="print(1)" if ran_code else None,
                tool_call=ToolCall("python", "print(1)") if ran_code else None,
                tool_result=ToolResult(stdout="1\n") if ran_code else None,
                observation="1\n" if ran_code else None,
                obs_span=obs_span,
                is_void=void and index == turns - 1,
            )
        )
    if response_length is not None:
        if response_length >= len(ids):
            extra = response_length - len(ids)
            ids.extend([5] * extra)
            mask.extend([1] * extra)
        else:
            ids, mask = ids[:response_length], mask[:response_length]
    if finish_reason is None:
        finish_reason = (
            FinishReason.LENGTH if truncated else FinishReason.VOID_TURN if void else FinishReason.ANSWER
        )
    reward = None if score is None else RewardResult(score=score, reason="correct" if score > 0 else "wrong")
    return Trajectory(
        problem_id=problem_id,
        sample_index=sample_index,
        prompt_ids=(1, 2, 3),
        response_ids=tuple(ids),
        loss_mask=tuple(mask),
        logprobs=tuple(-0.5 if m else 0.0 for m in mask),
        turns=tuple(built),
        finish_reason=finish_reason,
        truncated=truncated,
        truncation_cause=truncation_cause if truncation_cause or not truncated else "response_length",
        reward=reward,
    )


def make_group(trajectories: Sequence[Trajectory], problem_id: str | None = None) -> TrajectoryGroup:
    """A group of the given trajectories (renumbered as samples of one problem)."""
    pid = problem_id or (trajectories[0].problem_id if trajectories else "p0")
    renumbered = [dataclasses.replace(t, problem_id=pid, sample_index=i) for i, t in enumerate(trajectories)]
    return TrajectoryGroup(make_problem(pid), tuple(renumbered))


def make_scored_group(scores: Sequence[float], problem_id: str = "p0", **kwargs: object) -> TrajectoryGroup:
    """A group with one default trajectory per score (``kwargs`` go to :func:`make_trajectory`)."""
    return make_group(
        [make_trajectory(score=s, problem_id=problem_id, **kwargs) for s in scores],  # type: ignore[arg-type]
        problem_id,
    )
