"""The multi-turn tool-integrated agent loop, at token level.

A trajectory is ``prompt_ids`` followed by ``response_ids``, built turn by turn from

* the ids the engine generated in a turn (``loss_mask`` 1, engine logprobs), and
* the ids of the tool observation appended after it (``loss_mask`` 0, logprob 0.0),

never by decoding and re-tokenizing the whole text. Only the prompt and each observation are
tokenized, each exactly once.

One turn: generate with the tools' stop strings. When a stop string fires, the turn's text is
offered to the tools; if none finds a *complete* call (the stop fired on an opening fence, say),
the same turn continues generating from where it stopped. A turn ends on a complete call (the
tool runs; its observation is appended; the next turn starts), on EOS, or on a length cap.

How a trajectory ends (``finish_reason``), checked in this order after each turn:

* ``length``: a length cap cut the turn (``truncated``; cause ``response_length`` or
  ``context_window``), even if the cut turn holds an answer (it stays on the turn);
* ``answer``: the turn holds an answer in ``rollout.answer_format`` (``\\boxed{}`` by default;
  a complete call in it still runs; its output is recorded, not appended, as in SimpleTIR);
* ``eos``: the model stopped after a complete call that no stop string caught (the code runs,
  its output is not appended), or, single-turn (``tool_use=False``), without an answer;
* ``void_turn``: the model stopped with neither a complete call nor an answer (``is_void``);
* ``max_turns``: the last allowed turn made a call: the code runs, its output is not appended;
* ``length`` again when an observation would not fit in ``max_response_length`` (or the
  context window): it is not appended (the turn keeps its text and result) and the trajectory
  ends truncated.

An observation longer than ``rollout.max_obs_tokens`` is cut to that many ids; the turn and the
trajectory are marked truncated with cause ``observation_length`` (a later cap that ends the
trajectory overrides the cause). A prompt over ``max_prompt_length`` is not cut: it yields an
empty ``prompt_too_long`` trajectory.

Concurrency: each trajectory is its own coroutine, so while one awaits its tool the others keep
generating; there is no batch-wide barrier between turns.

Lost components: an engine or tool whose worker died mid-call (a Ray actor, restarted by Ray)
raises :class:`~simpletir.core.errors.ComponentLost`; the trajectory is then restarted from its
first turn with the same seeds, at most ``rollout.max_trajectory_retries`` times, and counted in
``RolloutRunner.retried_trajectories``. Any other exception of a tool is a failed tool result.

Tools (v1, see :class:`~simpletir.core.specs.Tool`): each trajectory opens a session of every
tool that has ``open_session`` before its first turn and closes it when it ends, however it
ends; ``parse_call`` and ``run`` receive a :class:`~simpletir.core.types.ToolContext` (problem,
sample, turn, session) when they take a ``ctx`` parameter (decided once per tool, from its
signature; older tools keep working). Each call is bounded: ``rollout.tools_timeout_s`` when set
(also passed to ``run(timeout_s=)``), else the tool's own ``timeout_s`` attribute, else
:data:`DEFAULT_TOOL_TIMEOUT_S`; a tool told its limit gets :data:`TOOL_TIMEOUT_GRACE_S` more to
report its own timeout first. A tool that declares ``enforces_timeout = True`` (the python
sandbox: its pool kills an overrunning snippet, and a call queued for a free worker is not yet
running) is passed the limit but not cut off by the loop. A call that raises, returns no
``ToolResult`` or overruns becomes a failed result with ``error`` set (``timed_out`` too for an
overrun): the model sees it as the observation and only that trajectory is affected.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import inspect
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from simpletir.core.answers import answer_format
from simpletir.core.errors import ComponentLost, ConfigError
from simpletir.core.prompts import assemble_prompt_template, tool_instructions
from simpletir.core.rollout.engine import PolicyEngine, SamplingParams
from simpletir.core.types import (
    FinishReason,
    Problem,
    ToolCall,
    ToolContext,
    ToolResult,
    Trajectory,
    TrajectoryGroup,
    TruncationCause,
    Turn,
)

if TYPE_CHECKING:
    from simpletir.core.config import ExperimentConfig
    from simpletir.core.specs import Tool

log = logging.getLogger(__name__)

# Called with (index of the problem, its finished group); may return an awaitable.
OnGroup = Callable[[int, TrajectoryGroup], "Awaitable[None] | None"]

DEFAULT_TOOL_TIMEOUT_S = 60.0  # per-call limit of a tool that declares no timeout_s of its own
TOOL_TIMEOUT_GRACE_S = 10.0  # extra wait for a tool that was told its limit to report it itself


class _Overran(Exception):
    """A tool call (or session open/close) did not return within its limit."""


def _takes(function: Any, name: str) -> bool:
    """True when ``function`` accepts the keyword ``name`` (by that name, or through ``**kwargs``)."""
    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _positive_number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf:
        return float(value)
    return None


@dataclass(frozen=True)
class _ToolAdapter:
    """How the loop calls one tool, decided once from its signatures and attributes."""

    index: int
    tool: Tool
    parse_takes_ctx: bool
    run_takes_ctx: bool
    timeout_for_run: float | None  # passed as run(timeout_s=); None: the tool's own default
    deadline_s: float | None  # the loop cancels a call after this long; None: the tool enforces it
    session_deadline_s: float  # the same bound for open_session / close_session
    has_sessions: bool

    @classmethod
    def of(cls, index: int, tool: Tool, configured: float | None) -> _ToolAdapter:
        takes_timeout = _takes(tool.run, "timeout_s")
        limit = configured or _positive_number(getattr(tool, "timeout_s", None)) or DEFAULT_TOOL_TIMEOUT_S
        deadline = limit + TOOL_TIMEOUT_GRACE_S if takes_timeout else limit
        enforced = takes_timeout and getattr(tool, "enforces_timeout", False) is True
        return cls(
            index=index,
            tool=tool,
            parse_takes_ctx=_takes(tool.parse_call, "ctx"),
            run_takes_ctx=_takes(tool.run, "ctx"),
            timeout_for_run=configured if takes_timeout else None,
            deadline_s=None if enforced else deadline,
            session_deadline_s=deadline,
            has_sessions=callable(getattr(tool, "open_session", None)),
        )

    @property
    def name(self) -> str:
        return str(getattr(self.tool, "name", type(self.tool).__name__))


@dataclass
class _ToolState:
    """One trajectory's view of the tools: where it is, and the sessions it opened."""

    problem: Problem
    sample_index: int
    training: bool
    turn: int = 0
    sessions: dict[int, Any] = field(default_factory=dict)
    open_errors: dict[int, str] = field(default_factory=dict)

    def ctx(self, index: int) -> ToolContext:
        return ToolContext(
            problem=self.problem,
            sample_index=self.sample_index,
            turn_index=self.turn,
            training=self.training,
            session=self.sessions.get(index),
        )


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a task's outcome as seen (no "exception was never retrieved" at exit)."""
    if not task.cancelled():
        task.exception()


async def _bounded(make: Callable[[], Any], limit_s: float | None) -> Any:
    """``make()``, awaited when it returns an awaitable, for at most ``limit_s`` seconds (None: no bound).

    Raises :class:`_Overran` after cancelling a call that overran; re-raises what the call
    raised. A call that ignores its cancellation is left behind, not waited for.
    """
    outcome = make()
    if not inspect.isawaitable(outcome):
        return outcome
    if limit_s is None:
        return await outcome
    task = asyncio.ensure_future(outcome)
    try:
        done, _ = await asyncio.wait({task}, timeout=limit_s)
    except asyncio.CancelledError:
        task.cancel()
        task.add_done_callback(_retrieve)
        raise
    if not done:
        task.cancel()
        task.add_done_callback(_retrieve)
        await asyncio.wait({task}, timeout=TOOL_TIMEOUT_GRACE_S)
        raise _Overran
    return task.result()


@dataclass
class _Builder:
    """The growing response of one trajectory: ids, masks and logprobs stay aligned."""

    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    truncated: bool = False
    cause: TruncationCause | None = None

    def add_generated(self, ids: Sequence[int], logprobs: Sequence[float]) -> None:
        self.ids.extend(ids)
        self.mask.extend([1] * len(ids))
        self.logprobs.extend(logprobs)

    def add_observation(self, ids: Sequence[int]) -> None:
        self.ids.extend(ids)
        self.mask.extend([0] * len(ids))
        self.logprobs.extend([0.0] * len(ids))

    def truncate(self, cause: TruncationCause) -> None:
        self.truncated = True
        self.cause = cause


@dataclass(frozen=True)
class _TurnEnd:
    kind: str  # "stop" (complete call), "eos", "length"
    cause: TruncationCause | None = None


class RolloutRunner:
    """Samples ``n`` trajectories per problem with ``engine``, calling ``tools`` between turns."""

    def __init__(self, engine: PolicyEngine, tools: Sequence[Tool], config: ExperimentConfig) -> None:
        self.engine = engine
        self.tools = list(tools) if config.tool_use else []
        self.config = config
        self.tokenizer = engine.tokenizer
        if config.tool_use and not self.tools:
            raise ConfigError("tool_use=True but no tools were given to RolloutRunner (config.tools)")
        for key in ("max_turns", "max_prompt_length", "max_response_length"):
            if getattr(config, key) < 1:
                raise ConfigError(f"{key}={getattr(config, key)} must be >= 1")
        if config.rollout.max_obs_tokens < 1:
            raise ConfigError(f"rollout.max_obs_tokens={config.rollout.max_obs_tokens} must be >= 1")
        if config.rollout.max_concurrency < 1:
            raise ConfigError(f"rollout.max_concurrency={config.rollout.max_concurrency} must be >= 1")
        configured = config.rollout.tools_timeout_s
        if configured is not None and _positive_number(configured) is None:
            raise ConfigError(f"rollout.tools_timeout_s={configured!r} must be a positive number or null")
        self.answer_format = answer_format(config.rollout.answer_format)
        template = config.rollout.prompt_template
        if template is None:  # assembled from the chosen tools' instructions
            template = assemble_prompt_template(tool_instructions(self.tools), self.answer_format.instruction)
        self.prompt_template = template
        try:
            template.format(question="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"rollout.prompt_template must contain {{question}} and escape other braces as "
                f"{{{{ }}}}: {exc!r}"
            ) from exc
        if "{question}" not in template:
            raise ConfigError("rollout.prompt_template has no {question} placeholder")
        if config.rollout.chat_template and not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(
                f"rollout.chat_template=true but the tokenizer of model_name={config.model_name!r} has "
                "no chat template; set rollout.chat_template=false"
            )
        # Every tool's stop strings, in order, without duplicates.
        self.stop = tuple(dict.fromkeys(s for tool in self.tools for s in tool.stop_strings))
        self._adapters = [_ToolAdapter.of(i, tool, configured) for i, tool in enumerate(self.tools)]
        self._reported: set[str] = set()  # tools whose first failure was logged with its traceback
        self._calls = itertools.count()
        #: trajectories restarted because a component they used was lost (ComponentLost), ever
        self.retried_trajectories = 0

    # -- prompts --------------------------------------------------------------------------
    def build_prompt(self, problem: Problem) -> tuple[list[int], str]:
        """Prompt ids and text: the template wraps the last user message; chat template optional."""
        content = self.prompt_template.format(question=problem.question)
        messages = [{"role": m.role, "content": m.content} for m in problem.messages]
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        if users:
            messages[users[-1]]["content"] = content
        else:
            messages.append({"role": "user", "content": content})
        if self.config.rollout.chat_template:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return list(self.tokenizer.encode(text, add_special_tokens=False)), text
        text = "\n\n".join(m["content"] for m in messages)
        # add_special_tokens: a BOS where the model expects one (Llama), nothing for Qwen.
        return list(self.tokenizer.encode(text, add_special_tokens=True)), text

    def sampling(self, training: bool, max_tokens: int, seed: int) -> SamplingParams:
        r = self.config.rollout
        if training:
            temperature, top_p, top_k = r.temperature, r.top_p, r.top_k
        else:
            temperature, top_p, top_k = r.val_temperature, r.val_top_p, r.val_top_k
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            stop=self.stop,
            seed=seed,
        )

    def _seed(self, *parts: object) -> int:
        digest = hashlib.blake2b(repr((self.config.seed, *parts)).encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") >> 1

    # -- running --------------------------------------------------------------------------
    def run(
        self,
        problems: Sequence[Problem],
        n: int | None = None,
        training: bool = False,
        *,
        on_group: OnGroup | None = None,
    ) -> list[TrajectoryGroup]:
        """Synchronous :meth:`arun`. Rewards are left None (the reward stage fills them)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass  # no loop running: start one (outside this handler, so errors carry no context)
        else:
            raise RuntimeError("RolloutRunner.run called inside a running event loop: await runner.arun()")
        return asyncio.run(self.arun(problems, n=n, training=training, on_group=on_group))

    async def arun(
        self,
        problems: Sequence[Problem],
        n: int | None = None,
        training: bool = False,
        *,
        on_group: OnGroup | None = None,
        seed_round: object = None,
    ) -> list[TrajectoryGroup]:
        """``n`` trajectories per problem (default ``rollout.n`` when training, else ``n_val``).

        Each request's seed derives from ``config.seed``, the problem, the sample and the
        *round*: by default a counter of this runner's calls; the trainer passes its own key
        (``("train", step, draw)``) so that a resumed run samples exactly what the uninterrupted
        run sampled at the same step.

        ``on_group(i, group)``, when given, is called (and awaited, if it returns an awaitable)
        as soon as all ``n`` trajectories of ``problems[i]`` are done, while the other problems
        keep generating: the evaluation journals each finished group with it. An exception it
        raises fails the rollout like a failing trajectory does.
        """
        if n is None:
            n = self.config.rollout.n if training else self.config.n_val
        if n < 1:
            raise ConfigError(f"n={n} samples per problem must be >= 1")
        # later calls sample differently, yet reproducibly
        call = next(self._calls) if seed_round is None else seed_round
        semaphore = asyncio.Semaphore(self.config.rollout.max_concurrency)
        bar = tqdm(
            total=len(problems) * n,
            desc="rollout" if training else "rollout (val)",
            unit="traj",
            disable=not self.config.rollout.progress,
            leave=False,  # transient: the run's own lines (step metrics, tables) are what stays
        )

        async def one(problem: Problem, prompt: tuple[list[int], str], k: int) -> Trajectory:
            async with semaphore:
                trajectory = await self._retrying(problem, prompt, k, training, (call, problem.id, k))
            bar.update(1)
            return trajectory

        async def group(i: int, problem: Problem, prompt: tuple[list[int], str]) -> TrajectoryGroup:
            # Tasks start in problem order (gather schedules them in order), so the semaphore
            # still admits trajectories problem by problem and early groups finish first.
            samples = await asyncio.gather(*(one(problem, prompt, k) for k in range(n)))
            done = TrajectoryGroup(problem, tuple(samples))
            if on_group is not None:
                outcome = on_group(i, done)
                if inspect.isawaitable(outcome):
                    await outcome
            return done

        try:
            prompts = [self.build_prompt(p) for p in problems]
            groups = await asyncio.gather(
                *(group(i, p, prompt) for i, (p, prompt) in enumerate(zip(problems, prompts, strict=True)))
            )
        finally:
            bar.close()
        return list(groups)

    # -- one trajectory -------------------------------------------------------------------
    async def _retrying(
        self,
        problem: Problem,
        prompt: tuple[list[int], str],
        k: int,
        training: bool,
        seed_key: tuple[object, ...],
    ) -> Trajectory:
        """:meth:`trajectory`, restarted from its first turn when a component it used was lost.

        The same seeds are used again, so with a deterministic engine the retried trajectory is
        the one the lost attempt would have produced: a retry changes no result, only the time.
        """
        for attempt in itertools.count():
            try:
                return await self.trajectory(problem, prompt, k, training, seed_key=seed_key)
            except ComponentLost as exc:
                if attempt >= self.config.rollout.max_trajectory_retries:
                    raise
                self.retried_trajectories += 1
                log.warning("problem %r sample %d: %s; restarting the trajectory", problem.id, k, exc)
        raise AssertionError("unreachable")

    async def trajectory(
        self,
        problem: Problem,
        prompt: tuple[list[int], str],
        k: int,
        training: bool,
        seed_key: tuple[object, ...] = (),
    ) -> Trajectory:
        if len(prompt[0]) > self.config.max_prompt_length:
            out = _Builder()
            out.truncate("prompt_length")
            return self._finish(problem, k, prompt, out, FinishReason.PROMPT_TOO_LONG)
        state = _ToolState(problem, k, training)
        try:
            await self._open_sessions(state)
            return await self._turns(problem, prompt, k, training, seed_key, state)
        finally:
            await self._close_sessions(state)

    async def _turns(
        self,
        problem: Problem,
        prompt: tuple[list[int], str],
        k: int,
        training: bool,
        seed_key: tuple[object, ...],
        state: _ToolState,
    ) -> Trajectory:
        prompt_ids = prompt[0]
        cfg = self.config
        out = _Builder()
        max_turns = cfg.max_turns if cfg.tool_use else 1
        requests = itertools.count()
        for index in range(max_turns):
            state.turn = index
            start = len(out.ids)
            end = await self._generate_turn(
                prompt_ids, out, training, lambda: self._seed(*seed_key, next(requests)), state
            )
            turn_ids = out.ids[start:]
            text = self.tokenizer.decode(turn_ids, skip_special_tokens=True)
            found = self._parse(text, state)
            answer = self.answer_format.extract(text)
            turn = Turn(
                index=index,
                gen_span=(start, len(out.ids)),
                text=text,
                code=found[1].code if found else None,
                tool_call=found[1] if found else None,
                final_answer=answer,
                stop_reason=end.kind,
            )
            if end.kind == "length":
                assert end.cause is not None
                out.truncate(end.cause)
                void = cfg.tool_use and found is None and answer is None
                out.turns.append(_replace(turn, truncated=True, is_void=void))
                return self._finish(problem, k, prompt, out, FinishReason.LENGTH)
            result = await self._call_tool(found[0], found[1], state) if found else None
            turn = _replace(turn, tool_result=result)
            if answer is not None:
                out.turns.append(turn)
                return self._finish(problem, k, prompt, out, FinishReason.ANSWER)
            if end.kind == "eos":
                void = cfg.tool_use and found is None
                out.turns.append(_replace(turn, is_void=void))
                reason = FinishReason.VOID_TURN if void else FinishReason.EOS
                return self._finish(problem, k, prompt, out, reason)
            assert found is not None and result is not None  # a turn only ends on "stop" with a call
            if index == max_turns - 1:
                out.turns.append(turn)
                return self._finish(problem, k, prompt, out, FinishReason.MAX_TURNS)
            if not self._append_observation(out, turn, found[0], result, len(prompt_ids)):
                return self._finish(problem, k, prompt, out, FinishReason.LENGTH)
        raise AssertionError("unreachable: the last turn always finishes the trajectory")

    async def _generate_turn(
        self, prompt_ids: list[int], out: _Builder, training: bool, seed: Callable[[], int], state: _ToolState
    ) -> _TurnEnd:
        """Generate one turn into ``out``, continuing past stop strings that end no complete call."""
        start = len(out.ids)
        while True:
            budget = self.config.max_response_length - len(out.ids)
            room = self.engine.max_model_len - len(prompt_ids) - len(out.ids)
            if min(budget, room) < 1:
                return _TurnEnd("length", "response_length" if budget <= room else "context_window")
            params = self.sampling(training, min(budget, room), seed())
            gen = await self.engine.generate(prompt_ids + out.ids, params)
            out.add_generated(gen.token_ids, gen.logprobs)
            if gen.finish == "stop":
                text = self.tokenizer.decode(out.ids[start:], skip_special_tokens=True)
                if self._parse(text, state) is None:
                    continue  # the stop string fired on something that is no complete call
                return _TurnEnd("stop")
            if gen.finish == "length":
                budget = self.config.max_response_length - len(out.ids)
                room = self.engine.max_model_len - len(prompt_ids) - len(out.ids)
                return _TurnEnd("length", "response_length" if budget <= room else "context_window")
            return _TurnEnd("eos")

    def _parse(self, text: str, state: _ToolState) -> tuple[_ToolAdapter, ToolCall] | None:
        for adapter in self._adapters:
            if adapter.parse_takes_ctx:
                call = adapter.tool.parse_call(text, ctx=state.ctx(adapter.index))
            else:
                call = adapter.tool.parse_call(text)
            if call is not None:
                return adapter, call
        return None

    # -- tool calls, guarded ----------------------------------------------------------------
    def _report(self, adapter: _ToolAdapter, what: str, exc: BaseException | None = None) -> None:
        """Log a tool's failure: the first one per tool with its traceback, later ones briefly."""
        first = adapter.name not in self._reported
        self._reported.add(adapter.name)
        level = logging.WARNING if first else logging.DEBUG
        log.log(
            level, "tool %r: %s (the trajectory goes on)", adapter.name, what, exc_info=exc if first else None
        )

    async def _open_sessions(self, state: _ToolState) -> None:
        for adapter in self._adapters:
            if not adapter.has_sessions:
                continue
            open_session = adapter.tool.open_session  # type: ignore[attr-defined]
            try:
                state.sessions[adapter.index] = await _bounded(
                    functools.partial(open_session, state.ctx(adapter.index)), adapter.session_deadline_s
                )
            except _Overran:
                state.open_errors[adapter.index] = (
                    f"open_session did not return within {adapter.session_deadline_s:g} s"
                )
            except ComponentLost:
                raise
            except Exception as exc:
                state.open_errors[adapter.index] = f"open_session raised {type(exc).__name__}: {exc}"
                self._report(adapter, state.open_errors[adapter.index], exc)

    async def _close_sessions(self, state: _ToolState) -> None:
        for adapter in reversed(self._adapters):
            if adapter.index not in state.sessions:
                continue
            session = state.sessions.pop(adapter.index)
            close = getattr(adapter.tool, "close_session", None)
            if not callable(close):
                continue
            try:
                await _bounded(functools.partial(close, session), adapter.session_deadline_s)
            except _Overran:
                self._report(adapter, f"close_session did not return within {adapter.session_deadline_s:g} s")
            except ComponentLost:
                pass  # the session went with its worker
            except Exception as exc:
                self._report(adapter, f"close_session raised {type(exc).__name__}: {exc}", exc)

    async def _call_tool(self, adapter: _ToolAdapter, call: ToolCall, state: _ToolState) -> ToolResult:
        """The tool's result, or a failed one (``error`` set) when it raised or overran."""
        name = adapter.name
        if adapter.index in state.open_errors:
            message = f"tool {name!r}: {state.open_errors[adapter.index]}"
            return ToolResult(stdout="", stderr=message, exit_code=None, error=message)
        kwargs: dict[str, Any] = {}
        if adapter.run_takes_ctx:
            kwargs["ctx"] = state.ctx(adapter.index)
        if adapter.timeout_for_run is not None:
            kwargs["timeout_s"] = adapter.timeout_for_run
        started = time.perf_counter()
        try:
            result = await _bounded(functools.partial(adapter.tool.run, call, **kwargs), adapter.deadline_s)
        except _Overran:
            message = f"tool {name!r} did not return within {adapter.deadline_s:g} s; the call was cancelled"
            self._report(adapter, message)
            return ToolResult(
                stdout="",
                stderr="",
                exit_code=None,
                timed_out=True,
                killed_by="timeout",
                duration_ms=(time.perf_counter() - started) * 1000.0,
                error=message,
            )
        except ComponentLost:
            raise  # not the code's failure: the whole trajectory is redone
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            self._report(adapter, f"run raised {message}", exc)
            return ToolResult(
                stdout="",
                stderr=message,
                exit_code=None,
                duration_ms=(time.perf_counter() - started) * 1000.0,
                error=f"tool {name!r} raised {message}",
            )
        if not isinstance(result, ToolResult):
            message = f"tool {name!r} returned {type(result).__name__}, not a ToolResult"
            self._report(adapter, message)
            return ToolResult(stdout="", stderr=message, exit_code=None, error=message)
        return result

    def _observe(self, adapter: _ToolAdapter, result: ToolResult) -> tuple[str, ToolResult]:
        """The observation text; a failing ``format_observation`` gives a plain error text instead."""
        try:
            observation = adapter.tool.format_observation(result)
            if not isinstance(observation, str):
                raise TypeError(f"format_observation returned {type(observation).__name__}, not str")
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            self._report(adapter, f"format_observation raised {message}", exc)
            return f"\nTool error: {message}\n", dataclasses.replace(result, error=result.error or message)
        return observation, result

    def _append_observation(
        self, out: _Builder, turn: Turn, adapter: _ToolAdapter, result: ToolResult, prompt_len: int
    ) -> bool:
        """Append the tool's observation ids; False (trajectory over) when they do not fit."""
        observation, observed = self._observe(adapter, result)
        if observed is not result:
            turn = _replace(turn, tool_result=observed)
        ids = list(self.tokenizer.encode(observation, add_special_tokens=False))
        cap = self.config.rollout.max_obs_tokens
        cut = len(ids) > cap
        if cut:
            ids = ids[:cap]
            out.truncate("observation_length")
        # Room after the observation, in the response budget and in the context window (the
        # model's max_position_embeddings may be smaller than prompt + response caps).
        budget = self.config.max_response_length - len(out.ids) - len(ids)
        room = self.engine.max_model_len - prompt_len - len(out.ids) - len(ids)
        if min(budget, room) < 1:
            # No room for the observation and a next turn: end here rather than cut it silently.
            out.truncate("response_length" if budget <= room else "context_window")
            out.turns.append(_replace(turn, observation=observation, truncated=True))
            return False
        start = len(out.ids)
        out.add_observation(ids)
        seen = self.tokenizer.decode(ids, skip_special_tokens=False) if cut else observation
        out.turns.append(_replace(turn, observation=seen, obs_span=(start, len(out.ids)), truncated=cut))
        return True

    def _finish(
        self, problem: Problem, k: int, prompt: tuple[list[int], str], out: _Builder, reason: FinishReason
    ) -> Trajectory:
        return Trajectory(
            problem_id=problem.id,
            sample_index=k,
            prompt_ids=tuple(prompt[0]),
            response_ids=tuple(out.ids),
            loss_mask=tuple(out.mask),
            logprobs=tuple(out.logprobs),
            turns=tuple(out.turns),
            finish_reason=reason,
            truncated=out.truncated,
            truncation_cause=out.cause,
            prompt_text=prompt[1],
            response_text=self.tokenizer.decode(out.ids, skip_special_tokens=True),
        )


def _replace(turn: Turn, **changes: object) -> Turn:
    import dataclasses

    return dataclasses.replace(turn, **changes)  # type: ignore[arg-type]
