"""Lossless JSON (de)serialization of problems, trajectories and groups.

``group_from_dict(group_to_dict(g)) == g`` for every :class:`TrajectoryGroup` the rollout makes:
token ids, loss masks, turns (spans, tool calls, tool results, observations), verdicts, finish
reasons and mask reasons all come back equal. Engine logprobs are stored as packed little-endian
float64 in base64 (``{"f64": "..."}``), so they come back bit for bit (``-0.0``, ``-inf`` too)
and take about half the space of decimal text. Free-form mappings (``Problem.meta``,
``RewardResult.extra``) keep JSON values, tuples and non-string keys; numpy values become plain
Python values; anything else is stored as its ``repr`` (``{"__repr__": ...}``) and comes back
as that string.

The dicts are plain JSON values; the evaluation journal (:mod:`simpletir.core.eval_journal`)
writes one group per line.
"""

from __future__ import annotations

import base64
import dataclasses
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from simpletir.core.types import (
    FinishReason,
    Message,
    Problem,
    RewardResult,
    ToolCall,
    ToolResult,
    Trajectory,
    TrajectoryGroup,
    Turn,
)

FORMAT_VERSION = 1
_TAGS = ("__tuple__", "__items__", "__repr__")


# -- free-form values -------------------------------------------------------------------------
def encode_value(value: Any) -> Any:
    """A JSON value that :func:`decode_value` turns back into ``value`` (tuples, int keys kept)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, tuple):
        return {"__tuple__": [encode_value(v) for v in value]}
    if isinstance(value, list):
        return [encode_value(v) for v in value]
    if isinstance(value, Mapping):
        if all(isinstance(k, str) for k in value) and not (len(value) == 1 and next(iter(value)) in _TAGS):
            return {k: encode_value(v) for k, v in value.items()}
        return {"__items__": [[encode_value(k), encode_value(v)] for k, v in value.items()]}
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return encode_value(value.tolist())
    return {"__repr__": repr(value)}


def decode_value(value: Any) -> Any:
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1:
            ((tag, inner),) = value.items()
            if tag == "__tuple__":
                return tuple(decode_value(v) for v in inner)
            if tag == "__items__":
                return {decode_value(k): decode_value(v) for k, v in inner}
            if tag == "__repr__":
                return inner
        return {k: decode_value(v) for k, v in value.items()}
    return value


def pack_floats(values: Sequence[float]) -> dict[str, str]:
    return {"f64": base64.b64encode(struct.pack(f"<{len(values)}d", *values)).decode("ascii")}


def unpack_floats(packed: Any) -> tuple[float, ...]:
    if isinstance(packed, list):  # tolerated: a hand-written or older record with plain floats
        return tuple(float(v) for v in packed)
    raw = base64.b64decode(packed["f64"])
    return struct.unpack(f"<{len(raw) // 8}d", raw)


def _span(value: Any) -> tuple[int, int] | None:
    return None if value is None else (int(value[0]), int(value[1]))


# -- records ----------------------------------------------------------------------------------
def problem_to_dict(problem: Problem) -> dict[str, Any]:
    return {
        "id": problem.id,
        "benchmark": problem.benchmark,
        "messages": [[m.role, m.content] for m in problem.messages],
        "ground_truth": problem.ground_truth,
        "data_source": problem.data_source,
        "meta": encode_value(dict(problem.meta)),
    }


def problem_from_dict(data: Mapping[str, Any]) -> Problem:
    return Problem(
        id=data["id"],
        benchmark=data["benchmark"],
        messages=tuple(Message(role, content) for role, content in data["messages"]),
        ground_truth=data["ground_truth"],
        data_source=data["data_source"],
        meta=decode_value(data["meta"]),
    )


def turn_to_dict(turn: Turn) -> dict[str, Any]:
    return {
        "index": turn.index,
        "gen_span": list(turn.gen_span),
        "text": turn.text,
        "code": turn.code,
        "tool_call": dataclasses.asdict(turn.tool_call) if turn.tool_call else None,
        "tool_result": turn.tool_result.to_dict() if turn.tool_result else None,
        "observation": turn.observation,
        "obs_span": list(turn.obs_span) if turn.obs_span is not None else None,
        "final_answer": turn.final_answer,
        "is_void": turn.is_void,
        "truncated": turn.truncated,
        "stop_reason": turn.stop_reason,
    }


def turn_from_dict(data: Mapping[str, Any]) -> Turn:
    call, result = data["tool_call"], data["tool_result"]
    gen_span = _span(data["gen_span"])
    assert gen_span is not None
    return Turn(
        index=data["index"],
        gen_span=gen_span,
        text=data["text"],
        code=data["code"],
        tool_call=ToolCall(**call) if call is not None else None,
        tool_result=ToolResult(**result) if result is not None else None,
        observation=data["observation"],
        obs_span=_span(data["obs_span"]),
        final_answer=data["final_answer"],
        is_void=data["is_void"],
        truncated=data["truncated"],
        stop_reason=data["stop_reason"],
    )


def reward_to_dict(reward: RewardResult) -> dict[str, Any]:
    return {
        "score": reward.score,
        "reason": reward.reason,
        "extracted": reward.extracted,
        "extra": encode_value(dict(reward.extra)),
    }


def reward_from_dict(data: Mapping[str, Any]) -> RewardResult:
    return RewardResult(
        score=data["score"],
        reason=data["reason"],
        extracted=data["extracted"],
        extra=decode_value(data["extra"]),
    )


def trajectory_to_dict(trajectory: Trajectory) -> dict[str, Any]:
    t = trajectory
    return {
        "problem_id": t.problem_id,
        "sample_index": t.sample_index,
        "prompt_ids": list(t.prompt_ids),
        "response_ids": list(t.response_ids),
        "loss_mask": list(t.loss_mask),
        "logprobs": pack_floats(t.logprobs),
        "turns": [turn_to_dict(turn) for turn in t.turns],
        "finish_reason": str(t.finish_reason),
        "truncated": t.truncated,
        "truncation_cause": t.truncation_cause,
        "prompt_text": t.prompt_text,
        "response_text": t.response_text,
        "reward": reward_to_dict(t.reward) if t.reward is not None else None,
        "mask_reasons": list(t.mask_reasons),
    }


def trajectory_from_dict(data: Mapping[str, Any]) -> Trajectory:
    reward = data["reward"]
    return Trajectory(
        problem_id=data["problem_id"],
        sample_index=data["sample_index"],
        prompt_ids=tuple(data["prompt_ids"]),
        response_ids=tuple(data["response_ids"]),
        loss_mask=tuple(data["loss_mask"]),
        logprobs=unpack_floats(data["logprobs"]),
        turns=tuple(turn_from_dict(turn) for turn in data["turns"]),
        finish_reason=FinishReason(data["finish_reason"]),
        truncated=data["truncated"],
        truncation_cause=data["truncation_cause"],
        prompt_text=data["prompt_text"],
        response_text=data["response_text"],
        reward=reward_from_dict(reward) if reward is not None else None,
        mask_reasons=tuple(data["mask_reasons"]),
    )


def group_to_dict(group: TrajectoryGroup) -> dict[str, Any]:
    return {
        "problem": problem_to_dict(group.problem),
        "trajectories": [trajectory_to_dict(t) for t in group.trajectories],
    }


def group_from_dict(data: Mapping[str, Any]) -> TrajectoryGroup:
    return TrajectoryGroup(
        problem_from_dict(data["problem"]), tuple(trajectory_from_dict(t) for t in data["trajectories"])
    )
