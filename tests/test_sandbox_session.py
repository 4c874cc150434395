"""The python tool's session API (issue 13, item 1): off = SimpleTIR, on = a persistent interpreter.

Real sandbox workers (nsjail; skipped where it cannot run), one event loop for the module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from sandbox_helpers import LIGHT, LoopRunner

from simpletir.core.errors import SandboxUnavailableError
from simpletir.core.types import Message, Problem, ToolCall, ToolContext, ToolResult
from simpletir.plugins.tools.python_sandbox.config import SandboxConfig
from simpletir.plugins.tools.python_sandbox.session import PythonSession
from simpletir.plugins.tools.python_sandbox.tool import PythonTool

PROBLEM = Problem("p0", "unit", (Message("user", "q"),), "1")


@pytest.fixture(scope="module")
def runner() -> Iterator[LoopRunner]:
    r = LoopRunner()
    yield r
    r.close()


@pytest.fixture(scope="module")
def tools(runner: LoopRunner) -> Iterator[dict[bool, PythonTool]]:
    options: dict[str, Any] = {"workers": 1, **LIGHT}
    built = {flag: PythonTool(SandboxConfig(persistent_session=flag, **options)) for flag in (False, True)}
    try:
        for tool in built.values():
            runner.run(tool.start())
    except SandboxUnavailableError as exc:
        for tool in built.values():
            runner.run(tool.aclose())
        pytest.skip(f"nsjail sandbox unavailable here: {exc}")
    yield built
    for tool in built.values():
        runner.run(tool.aclose())


async def _trajectory(tool: PythonTool, codes: list[str]) -> list[ToolResult]:
    """Run ``codes`` as the calls of one trajectory, opening and closing its session."""
    session = tool.open_session(ToolContext(PROBLEM, 0, 0))
    results = []
    try:
        for turn, code in enumerate(codes):
            ctx = ToolContext(PROBLEM, 0, turn, session=session)
            results.append(await tool.run(ToolCall("python", code), ctx))
    finally:
        tool.close_session(session)
    return results


def test_off_by_default_every_snippet_starts_fresh(runner: LoopRunner, tools: dict[bool, PythonTool]) -> None:
    assert SandboxConfig().persistent_session is False
    assert tools[False].open_session(ToolContext(PROBLEM, 0, 0)) is None
    first, second = runner.run(_trajectory(tools[False], ["x = 41\nprint('set')", "print(x + 1)"]))
    assert first.stdout == "set\n" and first.ok
    assert second.exit_code == 1 and "NameError: name 'x' is not defined" in second.stderr


def test_a_persistent_session_keeps_names_within_one_trajectory(
    runner: LoopRunner, tools: dict[bool, PythonTool]
) -> None:
    tool = tools[True]
    codes = [
        "import math\nx = 41\nprint('set')",
        "def f(y):\n    return y + x\nprint(f(1))",
        "\n1 / 0",  # fails: its state up to the error is kept, like a notebook cell
        "print(f(math.floor(0.5)), 'again')",
    ]
    results = runner.run(_trajectory(tool, codes))
    assert [r.stdout for r in results] == ["set\n", "42\n", "", "41 again\n"]  # earlier output is silent
    error = results[2].stderr
    assert results[2].exit_code == 1 and 'File "<snippet>", line 2' in error and "ZeroDivisionError" in error

    # another trajectory starts from nothing, even interleaved with this one
    async def both() -> list[list[ToolResult]]:
        one = _trajectory(tool, ["print(x)"])
        two = _trajectory(tool, ["x = 5", "print(x * 2)"])
        return list(await asyncio.gather(one, two))

    other, mine = runner.run(both())
    assert "NameError" in other[0].stderr and mine[1].stdout == "10\n"


def test_a_persistent_session_reports_errors_as_a_fresh_snippet_would(
    runner: LoopRunner, tools: dict[bool, PythonTool]
) -> None:
    code = "y = 2\n\nraise ValueError('bad ' + str(y))"
    for flag in (False, True):
        # the second call replays one cell in persistent mode; the traceback is the same
        _, result = runner.run(_trajectory(tools[flag], ["z = 0", code]))
        assert result.exit_code == 1 and result.stdout == ""
        assert 'File "<snippet>", line 3, in <module>' in result.stderr
        assert "raise ValueError('bad ' + str(y))" in result.stderr and result.stderr.endswith(
            "ValueError: bad 2\n"
        )
        assert "__simpletir" not in result.stderr
    _, syntax = runner.run(_trajectory(tools[True], ["z = 0", "print(z\n"]))
    assert syntax.exit_code == 1 and "SyntaxError" in syntax.stderr and "<snippet>" in syntax.stderr


def test_timed_out_cells_are_not_replayed() -> None:
    session = PythonSession()
    session.record("a = 1", ToolResult(stdout=""))
    session.record("while True: pass", ToolResult(timed_out=True, killed_by="timeout", exit_code=None))
    session.record("b = 2", ToolResult(exit_code=1, stderr="Traceback ..."))
    assert session.cells == ["a = 1", "b = 2"]
    assert PythonSession().program("print(1)") == "print(1)"  # a first call runs exactly as written
    session.close()
    assert session.cells == []


def test_the_rollout_loop_gives_the_python_tool_its_session(tools: dict[bool, PythonTool]) -> None:
    from simpletir.core.rollout import loop

    adapter = loop._ToolAdapter.of(0, tools[True], None)
    assert adapter.run_takes_ctx and adapter.parse_takes_ctx and adapter.has_sessions
    assert adapter.deadline_s is None  # the pool enforces its limit; queued calls are not cut off
    any_tool: Any = tools[True]
    assert any_tool.parse_call("```python\nprint(1)\n```\n", ToolContext(PROBLEM, 0, 0)) == ToolCall(
        "python", "print(1)"
    )
