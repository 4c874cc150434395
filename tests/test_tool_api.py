"""Tool v1 (issue 13, item 1): context, sessions, guarded calls, prompt instructions, answer format.

The engine replays fixed token ids (``ScriptedEngine``) and the tools are in-test doubles, so
every test runs in well under a second and without a sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from transformers import AutoTokenizer

from simpletir.core import prompts
from simpletir.core.answers import ANSWER_FORMATS
from simpletir.core.config import DEFAULT_PROMPT_TEMPLATE, ExperimentConfig
from simpletir.core.metrics import summarize
from simpletir.core.rollout import RolloutRunner, loop
from simpletir.core.rollout.models import qwen_tokenizer_dir
from simpletir.core.rollout.testing import ScriptedEngine, ScriptedTool
from simpletir.core.trainer.loop import tool_metrics
from simpletir.core.types import (
    FinishReason,
    Message,
    Problem,
    ToolCall,
    ToolContext,
    ToolResult,
    Trajectory,
    TrajectoryGroup,
)
from simpletir.plugins.tools.python_sandbox.config import SandboxConfig
from simpletir.plugins.tools.python_sandbox.tool import PythonTool

IM_END = 151645
CALL = "```python\n{code}\n```\n"


@pytest.fixture(scope="module")
def tok() -> Any:
    return AutoTokenizer.from_pretrained(qwen_tokenizer_dir())


def cfg(**top: Any) -> ExperimentConfig:
    rollout: dict[str, Any] = {"progress": False}
    rollout.update(top.pop("rollout", {}))
    config = ExperimentConfig(**{"model_name": "scripted", "max_turns": 5, **top})
    config.rollout = dataclasses.replace(config.rollout, **rollout)
    return config


PROBLEMS = [Problem(f"p{i}", "unit", (Message("user", f"Question {i}?"),), "2") for i in range(2)]


def rollout(
    engine: ScriptedEngine, tools: Sequence[Any], config: ExperimentConfig, n: int = 2
) -> list[TrajectoryGroup]:
    return RolloutRunner(engine, tools, config).run(PROBLEMS, n=n)


class _Fenced:
    """A python-fence parser shared by the doubles below (the sandbox tool's contract)."""

    name = "repl"
    stop_strings = ("```\n",)

    def _find(self, turn_text: str) -> ToolCall | None:
        call = ScriptedTool().parse_call(turn_text)
        return None if call is None else ToolCall(self.name, call.code)

    async def run_many(self, calls: Sequence[ToolCall]) -> AsyncIterator[tuple[int, ToolResult]]:
        for i, call in enumerate(calls):
            yield i, await self.run(call)  # type: ignore[attr-defined]

    def format_observation(self, result: ToolResult) -> str:
        return f"\nCode execution result: {result.stdout if result.ok else result.stderr}\n"

    async def aclose(self) -> None:
        pass


class ReplTool(_Fenced):
    """A stateful v1 tool: one namespace per trajectory, kept in its session."""

    def __init__(self) -> None:
        self.opened: list[tuple[str, int]] = []
        self.closed = 0
        self.contexts: list[tuple[str, int, int, bool]] = []
        self.parse_contexts: set[tuple[str, int]] = set()

    async def open_session(self, ctx: ToolContext) -> dict[str, Any]:
        self.opened.append((ctx.problem.id, ctx.sample_index))
        await asyncio.sleep(0)
        return {}

    def close_session(self, session: dict[str, Any]) -> None:
        self.closed += 1
        session.clear()

    def parse_call(self, turn_text: str, ctx: ToolContext | None = None) -> ToolCall | None:
        assert ctx is not None
        self.parse_contexts.add((ctx.problem.id, ctx.sample_index))
        return self._find(turn_text)

    async def run(self, call: ToolCall, ctx: ToolContext | None = None) -> ToolResult:
        assert ctx is not None and isinstance(ctx.session, dict)
        self.contexts.append((ctx.problem.id, ctx.sample_index, ctx.turn_index, ctx.training))
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(call.code, ctx.session)  # trusted test code
        return ToolResult(stdout=out.getvalue())


COUNT = "count = globals().get('count', 0) + 1\nprint(count)"


def test_a_stateful_tool_gets_context_and_one_session_per_trajectory(tok: Any) -> None:
    script = [CALL.format(code=COUNT)] * 2 + ["\\boxed{2}<|im_end|>"]
    tool = ReplTool()
    groups = rollout(ScriptedEngine(tok, script, eos_token_ids=[IM_END]), [tool], cfg(), n=2)
    for group in groups:
        for trajectory in group.trajectories:
            # a namespace shared by trajectories would count past 2
            assert [turn.observation for turn in trajectory.turns[:2]] == [
                "\nCode execution result: 1\n\n",
                "\nCode execution result: 2\n\n",
            ]
            assert trajectory.finish_reason is FinishReason.ANSWER
    assert sorted(tool.opened) == [(p.id, k) for p in PROBLEMS for k in range(2)]
    assert tool.closed == 4  # every session closed when its trajectory ended
    assert sorted(tool.contexts) == sorted(
        (p.id, k, turn, False) for p in PROBLEMS for k in range(2) for turn in (0, 1)
    )
    assert tool.parse_contexts == {(p.id, k) for p in PROBLEMS for k in range(2)}


def test_sessions_are_closed_when_a_trajectory_fails(tok: Any) -> None:
    tool = ReplTool()
    engine = ScriptedEngine(tok, [CALL.format(code="x = 1")])  # the script runs out: the engine raises
    with pytest.raises(AssertionError, match="no stream left"):
        RolloutRunner(engine, [tool], cfg()).run(PROBLEMS[:1], n=1)
    assert tool.opened == [("p0", 0)] and tool.closed == 1


class LegacyTool(_Fenced):
    """A tool written before v1: ``parse_call(text)`` and ``run(call)``, no context, no timeout."""

    name = "legacy"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def parse_call(self, turn_text: str) -> ToolCall | None:
        return self._find(turn_text)

    async def run(self, call: ToolCall) -> ToolResult:
        self.calls.append(call.code)
        return ToolResult(stdout="legacy ok\n")


def test_a_tool_without_context_or_timeout_parameters_still_works(tok: Any) -> None:
    tool = LegacyTool()
    script = [CALL.format(code="print(1)"), "\\boxed{2}<|im_end|>"]
    [group] = RolloutRunner(
        ScriptedEngine(tok, script, eos_token_ids=[IM_END]), [tool], cfg(rollout={"tools_timeout_s": 3.0})
    ).run(PROBLEMS[:1], n=1)
    [trajectory] = group.trajectories
    assert tool.calls == ["print(1)"]
    assert trajectory.turns[0].observation == "\nCode execution result: legacy ok\n\n"
    assert trajectory.turns[0].tool_result == ToolResult(stdout="legacy ok\n")
    # decided once, from the signatures: no per-call inspection
    adapter = RolloutRunner(ScriptedEngine(tok, script), [tool], cfg())._adapters[0]
    assert not adapter.parse_takes_ctx and not adapter.run_takes_ctx and adapter.timeout_for_run is None


class FlakyTool(_Fenced):
    """Raises for sample 0, hangs for sample 1 (only with ``hang``), answers otherwise."""

    name = "flaky"

    def __init__(self, hang: bool = False) -> None:
        self.hang = hang
        self.cancelled = 0

    def parse_call(self, turn_text: str, ctx: ToolContext | None = None) -> ToolCall | None:
        return self._find(turn_text)

    async def run(self, call: ToolCall, ctx: ToolContext | None = None) -> ToolResult:
        assert ctx is not None
        if ctx.sample_index == 0:
            raise RuntimeError("boom")
        if ctx.sample_index == 1 and self.hang:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return ToolResult(stdout="fine\n")


def test_a_raising_or_hanging_tool_fails_only_its_trajectory(tok: Any) -> None:
    script = [CALL.format(code="print(1)"), "\\boxed{2}<|im_end|>"]
    tool = FlakyTool(hang=True)
    engine = ScriptedEngine(tok, script, eos_token_ids=[IM_END])
    [group] = RolloutRunner(engine, [tool], cfg(rollout={"tools_timeout_s": 0.2})).run(PROBLEMS[:1], n=3)
    raised, hung, fine = group.trajectories
    for trajectory in group.trajectories:  # every trajectory went on to its answer
        assert trajectory.finish_reason is FinishReason.ANSWER and trajectory.num_turns == 2

    result = raised.turns[0].tool_result
    assert result is not None and not result.ok and not result.timed_out
    assert result.error == "tool 'flaky' raised RuntimeError: boom" and result.stderr == "RuntimeError: boom"
    assert raised.turns[0].observation == "\nCode execution result: RuntimeError: boom\n"

    result = hung.turns[0].tool_result
    assert result is not None and result.timed_out and result.killed_by == "timeout" and not result.ok
    assert result.error is not None and "did not return within 0.2 s" in result.error
    assert 150 <= result.duration_ms < 5000 and tool.cancelled == 1

    assert fine.turns[0].tool_result == ToolResult(stdout="fine\n")

    # counted: in the trainer's step metrics and in the evaluation metrics
    metrics = tool_metrics([group])
    assert metrics["tool/calls"] == 3 and metrics["tool/failed"] == 2
    assert metrics["tool/errors"] == 1 and metrics["tool/timeouts"] == 1
    summary = summarize([group])
    assert summary["tool_errors"] == 1 and summary["tool_timeouts"] == 1


class SlowTool(_Fenced):
    """Takes ``timeout_s``; sleeps ``delay`` seconds; maybe enforces its limit itself."""

    name = "slow"

    def __init__(self, delay: float, *, enforces: bool = False, own_timeout: float | None = None) -> None:
        self.delay = delay
        self.enforces_timeout = enforces
        if own_timeout is not None:
            self.timeout_s = own_timeout
        self.given: list[float | None] = []

    def parse_call(self, turn_text: str) -> ToolCall | None:
        return self._find(turn_text)

    async def run(self, call: ToolCall, *, timeout_s: float | None = None) -> ToolResult:
        self.given.append(timeout_s)
        await asyncio.sleep(self.delay)
        return ToolResult(stdout="slept\n")


def _one_call(tok: Any, tool: Any, **rollout_options: Any) -> ToolResult:
    script = [CALL.format(code="print(1)"), "\\boxed{2}<|im_end|>"]
    engine = ScriptedEngine(tok, script, eos_token_ids=[IM_END])
    [group] = RolloutRunner(engine, [tool], cfg(rollout=rollout_options)).run(PROBLEMS[:1], n=1)
    result = group.trajectories[0].turns[0].tool_result
    assert result is not None
    return result


def test_the_timeout_reaches_the_tool_and_the_loop_adds_a_grace(
    tok: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loop, "TOOL_TIMEOUT_GRACE_S", 0.1)
    # told its limit (0.1 s), the tool gets the grace on top before the loop cuts it off
    tool = SlowTool(0.15)
    assert _one_call(tok, tool, tools_timeout_s=0.1) == ToolResult(stdout="slept\n") and tool.given == [0.1]
    tool = SlowTool(1.0)
    result = _one_call(tok, tool, tools_timeout_s=0.1)
    assert result.timed_out and result.error is not None and "within 0.2 s" in result.error
    # unset: the tool's own default, not passed, still enforced by the loop (with the grace)
    tool = SlowTool(1.0, own_timeout=0.1)
    assert _one_call(tok, tool).timed_out and tool.given == [None]
    # a tool that enforces its limit itself (a call may be queued) is not cut off
    tool = SlowTool(0.5, enforces=True)
    assert _one_call(tok, tool, tools_timeout_s=0.1) == ToolResult(stdout="slept\n") and tool.given == [0.1]


class BadSessions(ReplTool):
    async def open_session(self, ctx: ToolContext) -> dict[str, Any]:
        raise OSError("no browser")


class BadObservation(LegacyTool):
    def format_observation(self, result: ToolResult) -> str:
        raise ValueError("cannot format")


def test_failing_sessions_and_observations_are_failed_results(tok: Any) -> None:
    result = _one_call(tok, BadSessions())
    assert result.error == "tool 'repl': open_session raised OSError: no browser" and not result.ok
    script = [CALL.format(code="print(1)"), "\\boxed{2}<|im_end|>"]
    engine = ScriptedEngine(tok, script, eos_token_ids=[IM_END])
    [group] = RolloutRunner(engine, [BadObservation()], cfg()).run(PROBLEMS[:1], n=1)
    turn = group.trajectories[0].turns[0]
    assert turn.observation == "\nTool error: ValueError: cannot format\n"
    assert turn.tool_result is not None and turn.tool_result.error == "ValueError: cannot format"


# -- prompts -------------------------------------------------------------------------------------


class CalcInstructions(LegacyTool):
    name = "calc"
    instructions = "Compute with <calc>{expression}</calc>."


def test_the_python_tool_keeps_simpletirs_prompt_byte_for_byte(tok: Any) -> None:
    python = PythonTool(SandboxConfig(backend="unsafe_local"))  # built, never started
    runner = RolloutRunner(ScriptedEngine(tok, []), [python], cfg())
    assert runner.prompt_template == DEFAULT_PROMPT_TEMPLATE
    assert prompts.assemble_prompt_template([python.instructions], ANSWER_FORMATS["boxed"].instruction) == (
        DEFAULT_PROMPT_TEMPLATE
    )
    assert python.enforces_timeout and python.timeout_s == 5.0
    persistent = PythonTool(SandboxConfig(backend="unsafe_local", persistent_session=True))
    assert "stay defined" in persistent.instructions


def test_the_default_prompt_is_assembled_from_the_chosen_tools(tok: Any) -> None:
    question = PROBLEMS[0].question
    runner = RolloutRunner(
        ScriptedEngine(tok, []), [CalcInstructions()], cfg(rollout={"chat_template": False})
    )
    _, text = runner.build_prompt(PROBLEMS[0])
    assert text == (
        "Solve the following problem step by step. Compute with <calc>{expression}</calc>.\n"
        "The last part of your response should be in the following format:\n"
        "\\boxed{'The final answer goes here.'}\n\n*user question:*\n" + question
    )
    tagged = RolloutRunner(
        ScriptedEngine(tok, []),
        [CalcInstructions()],
        cfg(rollout={"chat_template": False, "answer_format": "answer_tag"}),
    )
    assert "<answer>The final answer goes here.</answer>\n" in tagged.build_prompt(PROBLEMS[0])[1]
    # no tools (single turn): no tool text; an explicit template wins over everything
    single = RolloutRunner(ScriptedEngine(tok, []), [], cfg(tool_use=False, rollout={"chat_template": False}))
    assert "Python" not in single.build_prompt(PROBLEMS[0])[1]
    explicit = RolloutRunner(
        ScriptedEngine(tok, []),
        [CalcInstructions()],
        cfg(rollout={"chat_template": False, "prompt_template": "Q: {question}"}),
    )
    assert explicit.build_prompt(PROBLEMS[0])[1] == f"Q: {question}"


# -- answer format -------------------------------------------------------------------------------


def _single(tok: Any, text: str, answer_format: str) -> Trajectory:
    engine = ScriptedEngine(tok, [text], eos_token_ids=[IM_END])
    config = cfg(rollout={"answer_format": answer_format})
    [group] = RolloutRunner(engine, [ScriptedTool()], config).run(PROBLEMS[:1], n=1)
    return group.trajectories[0]


def test_the_answer_format_decides_what_ends_a_trajectory(tok: Any) -> None:
    tagged = _single(tok, "So <answer>7</answer><|im_end|>", "answer_tag")
    assert tagged.finish_reason is FinishReason.ANSWER and tagged.final_answer == "7"
    boxed_only = _single(tok, "So \\boxed{7}<|im_end|>", "answer_tag")
    assert boxed_only.finish_reason is FinishReason.VOID_TURN and boxed_only.final_answer is None
    boxed = _single(tok, "So \\boxed{7}<|im_end|>", "boxed")
    assert boxed.finish_reason is FinishReason.ANSWER and boxed.final_answer == "7"
