"""The records that flow through one step: problems in, trajectories and verdicts out.

Token ids are the truth. ``Trajectory.response_ids`` is built turn by turn from the ids the
engine generated and the ids of each tool observation; text is derived for display and never
re-tokenized into training. Every per-token list (``loss_mask``, ``logprobs``) is aligned with
``response_ids``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True)
class Problem:
    """One prompt of a benchmark or training set.

    ``id`` is unique within ``benchmark``; ``messages`` is the chat as stored in the data
    (SimpleTIR's parquet ``prompt`` column) without any instruction prefix, which the rollout
    adds from config.
    """

    id: str
    benchmark: str
    messages: tuple[Message, ...]
    ground_truth: str
    data_source: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def question(self) -> str:
        """The last user message: what a prompt template wraps."""
        for message in reversed(self.messages):
            if message.role == "user":
                return message.content
        return self.messages[-1].content if self.messages else ""


@dataclass(frozen=True)
class ToolCall:
    """What a tool found in a finished turn: the code (or arguments) to run."""

    tool: str
    code: str


KilledBy = Literal["timeout", "memory", "cpu", "signal", "output_limit", "cancelled"]


@dataclass(frozen=True)
class ToolResult:
    """Outcome of one tool execution, as the sandbox reports it."""

    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = 0
    timed_out: bool = False
    killed_by: KilledBy | None = None
    duration_ms: float = 0.0
    truncated: bool = False
    # Set when the *tool* failed rather than the code it ran: it raised, returned something
    # that is no ToolResult, or overran the loop's per-call limit (then ``timed_out`` too).
    # Counted in ``tool/errors`` (and ``tool/timeouts``); the trajectory goes on with it.
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.killed_by is None and self.error is None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ToolContext:
    """Where a tool call happens: passed to ``Tool.parse_call`` and ``Tool.run`` (Tool v1).

    One trajectory is ``(problem, sample_index)`` within a rollout; ``turn_index`` counts its
    model turns from 0. ``session`` is what the tool's ``open_session(ctx)`` returned for *this
    trajectory* (opened before its first turn, closed by ``close_session(session)`` when it
    ends, however it ends), or None for a tool without sessions; a stateful tool (a REPL that
    keeps variables, a browser) keeps its per-trajectory state there. ``training`` is False in
    validation and evaluation rollouts.
    """

    problem: Problem
    sample_index: int
    turn_index: int
    training: bool = False
    session: Any = None


class FinishReason(StrEnum):
    """Why a trajectory ended. Every trajectory records exactly one."""

    ANSWER = "answer"  # a turn gave a final answer (\\boxed{} by default; rollout.answer_format)
    EOS = "eos"  # the model stopped (EOS / stop token) without a code block
    VOID_TURN = "void_turn"  # a turn had neither a complete code block nor a final answer
    MAX_TURNS = "max_turns"  # the turn budget ran out
    LENGTH = "length"  # max_response_length (or the context window) was hit
    PROMPT_TOO_LONG = "prompt_too_long"  # the prompt alone exceeded max_prompt_length


TruncationCause = Literal["response_length", "observation_length", "context_window", "prompt_length"]


@dataclass(frozen=True)
class Turn:
    """One model turn and the tool observation that followed it.

    Spans are half-open ``[start, end)`` offsets into ``Trajectory.response_ids``.
    ``gen_span`` covers the ids the model generated in this turn (loss-bearing);
    ``obs_span`` the observation ids appended after it (never loss-bearing), or None.
    """

    index: int
    gen_span: tuple[int, int]
    text: str
    code: str | None = None
    tool_call: ToolCall | None = None
    tool_result: ToolResult | None = None
    observation: str | None = None
    obs_span: tuple[int, int] | None = None
    final_answer: str | None = None
    is_void: bool = False
    truncated: bool = False
    stop_reason: str | None = None  # engine's own finish reason for this turn (stop/length/eos)

    @property
    def ran_code(self) -> bool:
        return self.tool_result is not None

    @property
    def code_ok(self) -> bool:
        return self.tool_result is not None and self.tool_result.ok


@dataclass(frozen=True)
class RewardResult:
    """A verdict on one trajectory.

    ``reason`` says why: ``correct``, ``wrong``, ``no_answer``, ``parse_error``, ``timeout``
    (the reward plugin may add its own); ``extracted`` is the answer it compared.
    """

    score: float
    reason: str
    extracted: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def correct(self) -> bool:
        return self.score > 0.0


@dataclass(frozen=True)
class Trajectory:
    """One sampled multi-turn response to a problem, at token level.

    ``loss_mask[i]`` is 1 only where ``response_ids[i]`` was generated by the policy and is
    still trained on; prompts and tool observations are 0. ``logprobs[i]`` is the engine's
    log-probability for generated tokens and 0.0 elsewhere. Filters never mutate a trajectory:
    they return a copy made by :meth:`masked`.
    """

    problem_id: str
    sample_index: int
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    loss_mask: tuple[int, ...]
    logprobs: tuple[float, ...]
    turns: tuple[Turn, ...]
    finish_reason: FinishReason
    truncated: bool = False
    truncation_cause: TruncationCause | None = None
    prompt_text: str = ""
    response_text: str = ""
    reward: RewardResult | None = None
    mask_reasons: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.response_ids)
        if len(self.loss_mask) != n or len(self.logprobs) != n:
            raise ValueError(
                f"trajectory {self.problem_id}#{self.sample_index}: loss_mask ({len(self.loss_mask)}) "
                f"and logprobs ({len(self.logprobs)}) must align with response_ids ({n})"
            )

    # -- derived facts the filters and metrics read --------------------------------------
    @property
    def num_turns(self) -> int:
        return len(self.turns)

    @property
    def has_void_turn(self) -> bool:
        return any(turn.is_void for turn in self.turns)

    @property
    def used_tool(self) -> bool:
        return any(turn.ran_code for turn in self.turns)

    @property
    def num_tool_calls(self) -> int:
        return sum(turn.ran_code for turn in self.turns)

    @property
    def final_answer(self) -> str | None:
        for turn in reversed(self.turns):
            if turn.final_answer is not None:
                return turn.final_answer
        return None

    @property
    def score(self) -> float:
        return self.reward.score if self.reward is not None else 0.0

    @property
    def num_loss_tokens(self) -> int:
        return sum(self.loss_mask)

    @property
    def is_masked(self) -> bool:
        """True when a filter took this trajectory out of the loss entirely."""
        return bool(self.mask_reasons) and not any(self.loss_mask)

    def masked(self, reason: str) -> Trajectory:
        """A copy with every loss-mask entry zeroed, remembering which filter did it."""
        return dataclasses.replace(
            self, loss_mask=(0,) * len(self.loss_mask), mask_reasons=(*self.mask_reasons, reason)
        )

    def with_reward(self, reward: RewardResult) -> Trajectory:
        return dataclasses.replace(self, reward=reward)

    def with_loss_mask(self, loss_mask: Sequence[int], reason: str) -> Trajectory:
        """A copy with an edited loss mask (e.g. only the overlong tail zeroed)."""
        reasons = (*self.mask_reasons, reason)
        return dataclasses.replace(self, loss_mask=tuple(loss_mask), mask_reasons=reasons)


@dataclass(frozen=True)
class TrajectoryGroup:
    """The ``n`` samples of one problem: the unit GRPO normalises over and filters drop."""

    problem: Problem
    trajectories: tuple[Trajectory, ...]

    @property
    def scores(self) -> list[float]:
        return [t.score for t in self.trajectories]

    def replace(self, trajectories: Sequence[Trajectory]) -> TrajectoryGroup:
        return TrajectoryGroup(self.problem, tuple(trajectories))


@dataclass
class StepReport:
    """What one training step (or validation pass) reports to hooks and loggers.

    ``metrics`` are flat, slash-namespaced scalars (``reward/mean``, ``filter/void_turn/masked``,
    ``val/aime24/pass@1``) so wandb and the local JSONL log take them as they are.
    """

    step: int
    epoch: int
    metrics: dict[str, float] = field(default_factory=dict)
    phase: Literal["train", "val"] = "train"


@dataclass(frozen=True)
class RewardInput:
    """Everything a reward may judge one trajectory by (Reward v1, ``Reward.score_inputs``).

    ``problem`` carries ``ground_truth``, ``data_source``, ``benchmark`` and ``meta`` (the
    dataset's ``extra_info`` and other columns); ``trajectory`` the turns with their tool
    calls and results, the finish reason and truncation; ``response_text`` is the text the
    built-in reward reads (each turn's text followed by its tool output, see
    :func:`simpletir.core.evaluate.scoring_text`); ``final_answer`` is what the configured
    answer format (``rollout.answer_format``) extracts from ``response_text``, or None.
    """

    problem: Problem
    trajectory: Trajectory
    response_text: str
    final_answer: str | None

    @property
    def ground_truth(self) -> str:
        return self.problem.ground_truth
