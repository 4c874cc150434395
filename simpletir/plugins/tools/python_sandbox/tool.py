"""The ``python`` tool: the :class:`~simpletir.core.specs.Tool` the rollout calls directly."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from simpletir.core.types import ToolCall, ToolResult

from . import formatting
from .config import SandboxConfig
from .pool import SandboxPool


class PythonTool:
    """Runs the last complete fenced Python block of a turn in the sandbox pool.

    Workers start on the first call (or on ``await tool.start()``); ``aclose()`` stops them.
    """

    name = "python"

    def __init__(self, cfg: SandboxConfig | None = None) -> None:
        self.cfg = (cfg or SandboxConfig()).validate()
        self.pool = SandboxPool(self.cfg)

    @property
    def stop_strings(self) -> Sequence[str]:
        return tuple(self.cfg.stop_strings)

    def parse_call(self, turn_text: str) -> ToolCall | None:
        code = formatting.find_code(turn_text, self.cfg.code_pattern)
        return None if code is None else ToolCall(tool=self.name, code=code)

    def ends_inside_block(self, turn_text: str) -> bool:
        """True when generation stopped inside an unclosed block (e.g. at a bare opening fence)."""
        return formatting.ends_inside_block(turn_text, self.cfg.code_pattern)

    async def start(self) -> None:
        await self.pool.start()

    async def run(self, call: ToolCall, *, timeout_s: float | None = None) -> ToolResult:
        return await self.pool.execute(call.code, timeout_s=timeout_s)

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
