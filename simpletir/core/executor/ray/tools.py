"""Tool pools as Ray actors, behind one :class:`~simpletir.core.specs.Tool` per configured tool.

Each actor builds the tool from its plugin spec (for ``python``: a warm nsjail pool of
``plugin_config.python.workers`` interpreters) and runs the calls sent to it on its own event
loop. :class:`RayTool` keeps a copy of the tool in this process that is never started: finding a
call in a turn, stop strings, instructions and the observation text are cheap and stay here; only
``run`` (and sessions) cross to an actor, each call to the pool with the fewest calls in flight.

A trajectory's session lives in the pool that opened it, and its calls go there (``PinnedSession``).
A pool that dies takes its sessions with it; Ray restarts it and the calls that were in flight
raise :class:`~simpletir.core.errors.ComponentLost`, so the rollout redoes those trajectories.
One Ray call per tool call: batching the calls that arrive together and streaming results back
(a Ray streaming generator) was tried and cost more CPU per call here (3.6 vs 2.8 ms), so it went.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import itertools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from simpletir.core.errors import ComponentLost
from simpletir.core.executor.ray.balance import LeastLoaded, remote, wait_until_alive
from simpletir.core.types import ToolCall, ToolContext, ToolResult

if TYPE_CHECKING:
    from simpletir.core.config import ExperimentConfig
    from simpletir.core.specs import ToolSpec


def _takes(function: Any, name: str) -> bool:
    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class ToolPoolWorker:
    """The actor: one tool built from its spec, plus the sessions opened in it."""

    def __init__(self, spec: ToolSpec, config: ExperimentConfig) -> None:
        from simpletir.core.components import build_spec

        self.tool = build_spec(spec, config)
        self.sessions: dict[int, Any] = {}
        self.run_takes_ctx = _takes(self.tool.run, "ctx")
        self.run_takes_timeout = _takes(self.tool.run, "timeout_s")
        self.served = 0

    def ping(self) -> bool:
        return True

    async def start(self) -> None:
        start = getattr(self.tool, "start", None)
        if callable(start):
            await _maybe_await(start())

    async def open_session(self, sid: int, ctx: ToolContext) -> bool:
        """Open a session; True when the tool made one (None means: no session to pin)."""
        session = await _maybe_await(self.tool.open_session(ctx))
        if session is None:
            return False
        self.sessions[sid] = session
        return True

    async def close_session(self, sid: int) -> None:
        session = self.sessions.pop(sid, None)
        close = getattr(self.tool, "close_session", None)
        if session is not None and callable(close):
            await _maybe_await(close(session))

    async def run(
        self, call: ToolCall, ctx: ToolContext | None, timeout_s: float | None, sid: int | None
    ) -> ToolResult:
        kwargs: dict[str, Any] = {}
        if self.run_takes_ctx and ctx is not None:
            kwargs["ctx"] = dataclasses.replace(
                ctx, session=self.sessions.get(sid) if sid is not None else None
            )
        if self.run_takes_timeout and timeout_s is not None:
            kwargs["timeout_s"] = timeout_s
        self.served += 1
        result: ToolResult = await self.tool.run(call, **kwargs)
        return result

    async def aclose(self) -> None:
        await self.tool.aclose()


@dataclass(frozen=True)
class PinnedSession:
    """A session that lives in pool ``pool`` under id ``sid``."""

    pool: int
    sid: int


class RayTool:
    """One tool whose calls run in pool actors; everything else runs on a local, unstarted copy."""

    def __init__(self, local: Any, pools: Sequence[Any]) -> None:
        self.local = local
        self.pools = list(pools)
        self.name = str(getattr(local, "name", type(local).__name__))
        self.balance = LeastLoaded(len(self.pools))
        self._lost: set[int] = set()  # pools that died and are being restarted by Ray
        self._recovering: set[asyncio.Task[None]] = set()
        self._sids = itertools.count()
        self.lost_calls = 0
        takes_timeout = _takes(local.run, "timeout_s")
        # Told its limit only when the tool itself takes one; enforcing it stays the tool's claim.
        self.enforces_timeout = takes_timeout and getattr(local, "enforces_timeout", False) is True
        own_timeout = getattr(local, "timeout_s", None)
        if own_timeout is not None:
            self.timeout_s = own_timeout
        instructions = getattr(local, "instructions", None)
        if instructions is not None:
            self.instructions = instructions
        self._has_sessions = callable(getattr(local, "open_session", None))

    @property
    def stop_strings(self) -> Sequence[str]:
        return tuple(self.local.stop_strings)

    def parse_call(self, turn_text: str, ctx: ToolContext | None = None) -> ToolCall | None:
        if ctx is not None and _takes(self.local.parse_call, "ctx"):
            result: ToolCall | None = self.local.parse_call(turn_text, ctx=ctx)
            return result
        result = self.local.parse_call(turn_text)
        return result

    def format_observation(self, result: ToolResult) -> str:
        text: str = self.local.format_observation(result)
        return text

    async def open_session(self, ctx: ToolContext) -> PinnedSession | None:
        if not self._has_sessions:
            return None
        pool = self.balance.pick(avoid=self._lost)
        if pool in self._lost:
            await wait_until_alive(self.pools[pool], f"tool {self.name!r} pool {pool}")
            self._lost.discard(pool)
        sid = next(self._sids)
        with self.balance.use(pool):
            opened = await remote(
                f"tool {self.name!r} pool {pool}", self.pools[pool].open_session.remote(sid, ctx)
            )
        return PinnedSession(pool, sid) if opened else None

    async def close_session(self, session: PinnedSession | None) -> None:
        if session is not None:
            await remote(
                f"tool {self.name!r} pool {session.pool}",
                self.pools[session.pool].close_session.remote(session.sid),
            )

    async def run(
        self, call: ToolCall, ctx: ToolContext | None = None, *, timeout_s: float | None = None
    ) -> ToolResult:
        session = ctx.session if ctx is not None else None
        pinned = session if isinstance(session, PinnedSession) else None
        pool = pinned.pool if pinned is not None else self.balance.pick(avoid=self._lost)
        if pool in self._lost:  # restarting: wait for it rather than lose the redone call to the restart
            await wait_until_alive(self.pools[pool], f"tool {self.name!r} pool {pool}")
            self._lost.discard(pool)
        shipped = dataclasses.replace(ctx, session=None) if ctx is not None else None  # ids, not objects
        with self.balance.use(pool):
            try:
                result: ToolResult = await remote(
                    f"tool {self.name!r} pool {pool}",
                    self.pools[pool].run.remote(call, shipped, timeout_s, pinned.sid if pinned else None),
                )
            except ComponentLost:
                self.lost_calls += 1
                self._mark_lost(pool)
                raise
        return result

    def _mark_lost(self, pool: int) -> None:
        """Calls avoid ``pool`` until it answers again (checked in the background)."""
        if pool in self._lost:
            return
        self._lost.add(pool)

        async def recover() -> None:
            try:
                await wait_until_alive(self.pools[pool], f"tool {self.name!r} pool {pool}")
            except ComponentLost:
                return  # dead for good: it stays avoided (used only when no other pool is up)
            self._lost.discard(pool)

        task = asyncio.ensure_future(recover())
        self._recovering.add(task)
        task.add_done_callback(self._recovering.discard)

    async def run_many(self, calls: Sequence[ToolCall]) -> AsyncIterator[tuple[int, ToolResult]]:
        async def one(i: int, call: ToolCall) -> tuple[int, ToolResult]:
            return i, await self.run(call)

        for done in asyncio.as_completed([one(i, c) for i, c in enumerate(calls)]):
            yield await done

    async def start(self) -> None:
        await asyncio.gather(*(remote(f"tool {self.name!r} pool", p.start.remote()) for p in self.pools))

    async def aclose(self) -> None:
        import ray

        try:
            await asyncio.wait_for(
                asyncio.gather(*(p.aclose.remote() for p in self.pools), return_exceptions=True), 60
            )
        finally:
            for pool in self.pools:
                ray.kill(pool, no_restart=True)
            await _maybe_await(self.local.aclose())
