"""The ``python`` tool: the :class:`~simpletir.core.specs.Tool` the rollout calls directly."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from simpletir.core.prompts import PYTHON_TOOL_INSTRUCTIONS
from simpletir.core.types import ToolCall, ToolContext, ToolResult

from . import formatting
from .config import SandboxConfig
from .pool import SandboxPool
from .session import PythonSession

INSTRUCTIONS = PYTHON_TOOL_INSTRUCTIONS  # SimpleTIR's, kept in core beside its prompt
SESSION_INSTRUCTIONS = "Names defined by your earlier code snippets stay defined in later ones.\n"


class PythonTool:
    """Runs the last complete fenced Python block of a turn in the sandbox pool.

    Workers start on the first call (or on ``await tool.start()``); ``aclose()`` stops them.
    With ``persistent_session`` each trajectory gets a :class:`PythonSession` (see
    :mod:`.session`); without it (the default) sessions are None and every snippet starts fresh.
    """

    name = "python"
    # The pool enforces each snippet's limit itself (the worker's wall clock, then the host's
    # grace), and a call may wait for a free worker first: the rollout loop must not cut it off.
    enforces_timeout = True

    def __init__(self, cfg: SandboxConfig | None = None) -> None:
        self.cfg = (cfg or SandboxConfig()).validate()
        self.pool = SandboxPool(self.cfg)

    @property
    def stop_strings(self) -> Sequence[str]:
        return tuple(self.cfg.stop_strings)

    @property
    def instructions(self) -> str:
        """What the default prompt tells the model about this tool (SimpleTIR's text)."""
        return INSTRUCTIONS + (SESSION_INSTRUCTIONS if self.cfg.persistent_session else "")

    @property
    def timeout_s(self) -> float:
        return self.cfg.timeout_s

    def open_session(self, ctx: ToolContext) -> PythonSession | None:
        return PythonSession() if self.cfg.persistent_session else None

    def close_session(self, session: PythonSession | None) -> None:
        if session is not None:
            session.close()

    def parse_call(self, turn_text: str, ctx: ToolContext | None = None) -> ToolCall | None:
        code = formatting.find_code(turn_text, self.cfg.code_pattern)
        return None if code is None else ToolCall(tool=self.name, code=code)

    def ends_inside_block(self, turn_text: str) -> bool:
        """True when generation stopped inside an unclosed block (e.g. at a bare opening fence)."""
        return formatting.ends_inside_block(turn_text, self.cfg.code_pattern)

    async def start(self) -> None:
        await self.pool.start()

    async def run(
        self, call: ToolCall, ctx: ToolContext | None = None, *, timeout_s: float | None = None
    ) -> ToolResult:
        session = ctx.session if ctx is not None else None
        if not isinstance(session, PythonSession):
            return await self.pool.execute(call.code, timeout_s=timeout_s)
        result = await self.pool.execute(session.program(call.code), timeout_s=timeout_s)
        session.record(call.code, result)
        return result

    async def run_many(self, calls: Sequence[ToolCall]) -> AsyncIterator[tuple[int, ToolResult]]:
        async for item in self.pool.execute_many([c.code for c in calls]):
            yield item

    def format_observation(self, result: ToolResult) -> str:
        return formatting.observation(result, self.cfg)

    async def aclose(self) -> None:
        await self.pool.aclose()


def build(options: Any, experiment: Any = None) -> PythonTool:
    """The ToolSpec factory: ``options`` come from ``plugin_config.python``."""
    return PythonTool(SandboxConfig.from_mapping(options))
