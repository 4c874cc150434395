"""Helpers shared by the sandbox tests: one event loop per module, a pool, the process table."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from simpletir.core.errors import SandboxUnavailableError
from simpletir.plugins.tools.python_sandbox.config import SandboxConfig
from simpletir.plugins.tools.python_sandbox.pool import SandboxPool

T = TypeVar("T")
# Fast-starting workers for hostile snippets; one lane, so `workers` is the number of jails.
LIGHT = {"preload": ["math"], "warmup": False, "light_workers": 0}


class LoopRunner:
    """A pool's pipes belong to one loop, so a module's tests share one loop (and one pool)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def close(self) -> None:
        self.loop.close()


def start_pool(runner: LoopRunner, **options: Any) -> SandboxPool:
    pool = SandboxPool(SandboxConfig(**options))
    try:
        runner.run(pool.start())
    except SandboxUnavailableError as exc:
        runner.run(pool.aclose())
        pytest.skip(f"nsjail sandbox unavailable here: {exc}")
    return pool


@dataclass(frozen=True)
class Proc:
    pid: int
    uid: int
    name: str
    state: str


def processes(uids: set[int]) -> list[Proc]:
    """Live (non-zombie) processes whose real uid is one of ``uids``, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as fh:
                fields = dict(line.split(":", 1) for line in fh if ":" in line)
        except OSError:
            continue
        uid = int(fields["Uid"].split()[0])
        state = fields["State"].split()[0]
        if uid in uids and state not in ("Z", "X"):
            found.append(Proc(int(entry), uid, fields["Name"].strip(), state))
    return found


def still_alive(pids: list[int]) -> list[int]:
    """The pids of ``pids`` that still exist and are not zombies."""
    alive = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                    alive.append(pid)
        except (OSError, IndexError):
            pass
    return alive


def jail_processes(pool: SandboxPool) -> list[Proc]:
    """Live processes inside the pool's jails: every descendant of each worker's nsjail.

    Orphans and setsid daemons are re-parented to the jail's PID 1, so they stay in this tree."""
    found: list[Proc] = []
    stack = [pid for w in pool._workers for pid in w.jail_pids]
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/status") as fh:
                fields = dict(line.split(":", 1) for line in fh if ":" in line)
            with open(f"/proc/{pid}/task/{pid}/children") as fh:
                stack.extend(int(c) for c in fh.read().split())
        except OSError:
            continue
        state = fields["State"].split()[0]
        if state not in ("Z", "X"):
            found.append(Proc(pid, int(fields["Uid"].split()[0]), fields["Name"].strip(), state))
    return found


def assert_only_idle_workers(pool: SandboxPool, timeout: float = 5.0) -> None:
    """Every jail holds its server and one unused spare child, and nothing else.

    The server answers before it clears the namespace, so this polls for a short while."""
    expected = sorted(["sbx-server", "sbx-spare"] * len(pool._workers))
    deadline = time.monotonic() + timeout
    while True:
        procs = jail_processes(pool)
        if sorted(p.name for p in procs) == expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"unexpected processes in the jails: {procs}")
        time.sleep(0.02)
