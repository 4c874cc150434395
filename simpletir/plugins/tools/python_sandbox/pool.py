"""The host side: a pool of warm workers behind an async API.

Each worker is one long-lived jail (see :mod:`.worker`) serving one snippet at a time over its
stdin/stdout. The pool hands idle workers to callers in arrival order; the number of callers
admitted at once is bounded (``max_queue``) so a burst cannot pile up unbounded work.

Failure handling, and why it cannot deadlock:
  * the worker enforces each snippet's wall time itself; the host waits ``host_grace_s`` longer
    and then treats the worker as wedged: it is killed (SIGKILL to nsjail, whose death kills
    the jail's PID 1 and with it the whole namespace) and replaced in the background;
  * a worker that dies (EOF on its pipe) is replaced the same way;
  * a caller cancelled mid-snippet kills its worker (the snippet may still be running) and
    a replacement starts;
  * replacements that keep failing mark the pool broken: every waiting caller then gets the
    error instead of waiting for a worker that will never come.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import signal
import struct
import sys
import tempfile
import time
import warnings
import weakref
from collections.abc import AsyncIterator, Sequence
from typing import Any

from simpletir.core.errors import SandboxUnavailableError
from simpletir.core.types import KilledBy, ToolResult

from . import jail, provision
from .config import SandboxConfig

LEN = struct.Struct("!I")
_REPLACE_ATTEMPTS = 3


class WorkerLost(Exception):
    """The worker stopped answering or died; it must be replaced."""


class Worker:
    """One jailed interpreter and its pipes."""

    def __init__(
        self, cfg: SandboxConfig, command: list[str], uid: int | None, scratch: str | None, lane: str
    ) -> None:
        self.cfg = cfg
        self.lane = lane  # "full" (preload) or "light" (light_preload)
        self.command = command
        self.uid = uid
        self.scratch = scratch  # unsafe_local only: the host folder the worker uses as /tmp
        self.proc: asyncio.subprocess.Process | None = None
        # nsjail's and the server's own messages; read back to explain a failure.
        self.log = tempfile.TemporaryFile(prefix="simpletir-sandbox-", suffix=".log")  # noqa: SIM115
        self.served = 0
        self.jail_pids: list[int] = []  # host pids of the jail's PID 1 (nsjail's child)
        self.log_text = ""

    async def start(self, registry: set[int]) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self.log,
            start_new_session=True,  # a Ctrl-C meant for the trainer does not hit the jail first
            limit=1 << 20,
        )
        registry.add(self.proc.pid)
        try:
            header, _ = await asyncio.wait_for(self._read_frame(), self.cfg.start_timeout_s)
        except (TimeoutError, WorkerLost) as exc:
            await self.close(registry)
            raise SandboxUnavailableError(self._start_failure(exc)) from None
        except BaseException:  # cancelled while starting: leave no process behind
            await asyncio.shield(self.close(registry))
            raise
        self.jail_pids = _children(self.proc.pid)
        if not header.get("ready") or header.get("errors"):
            await self.close(registry)
            raise SandboxUnavailableError(
                f"sandbox worker started but could not prepare: {header.get('errors')}; "
                "check plugin_config.python.preload / packages / memory_mb"
            )

    def _start_failure(self, exc: BaseException) -> str:
        what = "timed out" if isinstance(exc, TimeoutError) else "exited"
        log = self.log_tail()
        hint = provision.HOW_TO_FIX if self.uid is not None else ""
        return f"sandbox worker {what} while starting ({self.command[0]}): {log or 'no output'}. {hint}"

    def log_tail(self, limit: int = 1500) -> str:
        if self.log.closed:
            return self.log_text[-limit:]
        with contextlib.suppress(OSError, ValueError):
            self.log.seek(0, os.SEEK_END)
            size = self.log.tell()
            self.log.seek(max(0, size - limit))
            return self.log.read().decode(errors="replace").strip()
        return ""

    async def _read_frame(self) -> tuple[dict[str, Any], bytes]:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            raw = await self.proc.stdout.readexactly(LEN.size)
            header = json.loads(await self.proc.stdout.readexactly(LEN.unpack(raw)[0]))
            size = sum(v for k, v in header.items() if k.endswith(("_head", "_tail")))
            payload = await self.proc.stdout.readexactly(size) if size else b""
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            raise WorkerLost(f"worker pipe closed ({type(exc).__name__})") from exc
        return header, payload

    async def execute(self, request: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        assert self.proc is not None and self.proc.stdin is not None
        code = request["code"].encode("utf-8", "surrogatepass")
        meta = {k: v for k, v in request.items() if k != "code"}
        blob = json.dumps({**meta, "code_bytes": len(code)}).encode()
        try:
            self.proc.stdin.write(LEN.pack(len(blob)) + blob + code)
            await self.proc.stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise WorkerLost(f"worker pipe closed ({type(exc).__name__})") from exc
        frame = await self._read_frame()
        self.served += 1
        return frame

    def abandon(self) -> None:
        """Forget a worker whose event loop is gone: its process is already killed; close the
        raw pipes ourselves, since asyncio would try (and fail) to use the dead loop for it."""
        transport = getattr(self.proc, "_transport", None)
        if transport is not None:
            for fd in (0, 1):
                pipe = transport.get_pipe_transport(fd)
                raw = getattr(pipe, "_pipe", None)
                if raw is not None:
                    with contextlib.suppress(OSError):
                        raw.close()
                    pipe._pipe = None
            transport._closed = True
        with contextlib.suppress(OSError, ValueError):
            self.log.close()

    def kill(self) -> None:
        """SIGKILL nsjail: its child is PID 1 of the jail, and when PID 1 dies the kernel kills
        every process of the namespace, daemons included."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    async def close(self, registry: set[int]) -> None:
        """Stop the worker and return only once no process of its jail is left."""
        if self.proc is not None:
            try:
                if self.proc.stdin is not None:
                    # Graceful first: on end-of-file the server exits, and PID 1's exit makes the
                    # kernel kill and reap the whole namespace before nsjail sees it gone.
                    with contextlib.suppress(Exception):
                        self.proc.stdin.close()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(self.proc.wait(), 1.0)
                self.kill()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.proc.wait(), 5.0)
            finally:  # also when cancelled meanwhile (asyncio.run cancelling every task on Ctrl-C)
                self.kill()
                registry.discard(self.proc.pid)
                # asyncio has no public way to close a subprocess transport; without this its
                # pipes linger until garbage collection, after the loop is closed ("Event loop
                # is closed").
                transport = getattr(self.proc, "_transport", None)
                if transport is not None:
                    transport.close()
            deadline = time.monotonic() + 5.0
            while any(_alive(pid) for pid in self.jail_pids) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        if not self.log.closed:
            self.log_text = self.log_tail()
            self.log.close()
        if self.scratch:
            import shutil

            shutil.rmtree(self.scratch, ignore_errors=True)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(c) for c in fh.read().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a zombie holds no resources)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _kill_all(pids: set[int]) -> None:
    """Last resort at garbage collection or interpreter exit: no jail outlives its pool."""
    for pid in list(pids):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    pids.clear()


class SandboxPool:
    """``await pool.execute(code)`` runs one snippet in a fresh forked child of a warm worker."""

    def __init__(self, cfg: SandboxConfig) -> None:
        self.cfg = cfg.validate()
        self._pids: set[int] = set()
        self._finalizer = weakref.finalize(self, _kill_all, self._pids)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: dict[str, asyncio.Queue[Worker | None]] = {}
        lanes = {"full": self.cfg.workers, "light": self.cfg.light_workers}
        self._lanes = {lane: n for lane, n in lanes.items() if n > 0}
        # A snippet that names none of these modules runs on a light worker (when there are any).
        names = "|".join(re.escape(m) for m in self.cfg.heavy_modules)
        self._heavy = re.compile(rf"\b(?:{names})\b") if names else None
        self._admission: asyncio.Semaphore | None = None
        self._workers: set[Worker] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._retiring: set[Worker] = set()  # killed workers whose pipes _replacement still closes
        self._start_lock: asyncio.Lock | None = None
        self._started = False
        self._broken: BaseException | None = None
        self._closed = False
        self._nsjail: str | None = None
        self._package_dir: str | None = None
        self.replaced = 0  # workers replaced after a death, a wedge or a cancellation

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Provision packages and start every worker (also done lazily by the first call)."""
        self._bind_loop()
        assert self._start_lock is not None
        async with self._start_lock:
            if self._started:
                return
            if self._closed:
                raise RuntimeError("sandbox pool is closed")
            if self.cfg.backend == "unsafe_local":
                warnings.warn(
                    "plugin_config.python.backend=unsafe_local: model-written code runs WITHOUT ANY "
                    "ISOLATION as this user. Use it only to debug on a machine you can lose.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                print("WARNING: python sandbox backend unsafe_local: NO ISOLATION", file=sys.stderr)
            else:
                self._nsjail = provision.find_nsjail(self.cfg)
            self._package_dir = await asyncio.to_thread(provision.package_dir, self.cfg)
            if self._closed:  # aclose() ran meanwhile: start nothing
                raise RuntimeError("sandbox pool is closed")
            workers = [self._new_worker(lane) for lane, n in self._lanes.items() for _ in range(n)]
            results = await asyncio.gather(*(w.start(self._pids) for w in workers), return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors or self._closed:
                for w in workers:
                    await w.close(self._pids)
                raise RuntimeError("sandbox pool is closed") if self._closed else errors[0]
            for w in workers:
                self._workers.add(w)
                self._idle[w.lane].put_nowait(w)
            self._started = True

    def _bind_loop(self) -> None:
        """Pipes belong to one event loop; a pool used from a new loop restarts its workers."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        if self._loop is not None and self._loop.is_running() and not self._loop.is_closed():
            # Another thread's loop owns the workers now; taking them would kill its snippets.
            raise RuntimeError("sandbox pool is in use by another running event loop; use one pool per loop")
        if self._loop is not None:
            _kill_all(self._pids)
            for worker in self._workers | self._retiring:
                worker.abandon()
            self._workers.clear()
            self._retiring.clear()
            self._tasks.clear()
        self._loop = loop
        self._idle = {lane: asyncio.Queue() for lane in self._lanes}
        self._admission = asyncio.Semaphore(self.cfg.max_queue)
        self._start_lock = asyncio.Lock()
        self._started = False
        self._broken = None

    def _new_worker(self, lane: str) -> Worker:
        light = lane == "light"
        if self.cfg.backend == "unsafe_local":
            scratch = tempfile.mkdtemp(prefix="simpletir-unsafe-")
            cmd = jail.unsafe_local_command(self.cfg, self._package_dir, scratch, light=light)
            return Worker(self.cfg, cmd, None, scratch, lane)
        assert self._nsjail is not None
        uid = jail.next_uid(self.cfg)
        cmd = jail.worker_command(self.cfg, self._nsjail, self._package_dir, uid, light=light)
        return Worker(self.cfg, cmd, uid, None, lane)

    async def aclose(self) -> None:
        """Stop every worker and wait for them. Idempotent."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        if self._loop is not None and self._loop is asyncio.get_running_loop():
            assert self._start_lock is not None
            if self._start_lock.locked():
                _kill_all(self._pids)  # a start in progress: its workers fail fast, then
                async with self._start_lock:  # it closes them and raises "closed"
                    pass
            await asyncio.gather(*self._tasks, return_exceptions=True)
            # A replacement cancelled above may not have closed its old worker's pipes: close
            # them here, in this loop (left to the garbage collector: "Event loop is closed").
            retiring = list(self._workers | self._retiring)
            await asyncio.gather(*(w.close(self._pids) for w in retiring), return_exceptions=True)
            self._retiring.clear()
            self._workers.clear()
            for queue in self._idle.values():
                queue.put_nowait(None)  # wake anyone still waiting: they will see _closed
        _kill_all(self._pids)
        for worker in self._workers:  # only left when closed from another event loop
            worker.abandon()
        self._workers.clear()

    @property
    def worker_uids(self) -> list[int]:
        return sorted(w.uid for w in self._workers if w.uid is not None)

    # -- execution ------------------------------------------------------------------------
    async def execute(self, code: str, *, timeout_s: float | None = None) -> ToolResult:
        """Run one snippet; failures of the code (or of a worker) come back as a result."""
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, got {type(code).__name__}")
        timeout = self.cfg.timeout_s if timeout_s is None else float(timeout_s)
        if not 0 < timeout < math.inf:
            raise ValueError(f"timeout_s must be > 0 and finite, got {timeout_s!r}")
        # Built before a worker is taken: nothing may raise between taking and returning it.
        request = {
            "code": code,
            "timeout_s": timeout,
            "cpu_s": self.cfg.cpu_s or int(timeout) + 2,
            "memory_mb": self.cfg.memory_mb,
            "max_output_bytes": self.cfg.max_output_bytes,
        }
        self._bind_loop()
        if not self._started:
            await self.start()
        assert self._admission is not None
        async with self._admission:
            worker = await self._acquire(self.route(code))
            started = time.perf_counter()
            try:
                header, payload = await asyncio.wait_for(
                    worker.execute(request), timeout + self.cfg.host_grace_s
                )
            except asyncio.CancelledError:
                self._replace(worker)
                raise
            except (TimeoutError, WorkerLost) as exc:
                self._replace(worker)
                return _lost_result(exc, worker, timeout, time.perf_counter() - started)
            except BaseException:
                self._replace(worker)
                raise
            self._idle[worker.lane].put_nowait(worker)
        return _to_result(header, payload)

    def route(self, code: str) -> str:
        """``light`` when the snippet names no heavy module and light workers exist."""
        if "light" not in self._lanes:
            return "full"
        if "full" not in self._lanes or self._heavy is None or not self._heavy.search(code):
            return "light"
        return "full"

    async def execute_many(
        self, codes: Sequence[str], *, timeout_s: float | None = None
    ) -> AsyncIterator[tuple[int, ToolResult]]:
        """Yield ``(index, result)`` as snippets finish; at most ``workers * 2`` in flight, so a
        long list never becomes a long list of tasks. Closing the iterator cancels the rest."""
        window = max(1, (self.cfg.workers + self.cfg.light_workers) * 2)
        pending: set[asyncio.Task[tuple[int, ToolResult]]] = set()
        items = iter(enumerate(codes))

        async def one(i: int, code: str) -> tuple[int, ToolResult]:
            return i, await self.execute(code, timeout_s=timeout_s)

        try:
            while True:
                while len(pending) < window:
                    nxt = next(items, None)
                    if nxt is None:
                        break
                    pending.add(asyncio.ensure_future(one(*nxt)))
                if not pending:
                    return
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    yield task.result()
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    async def _acquire(self, lane: str) -> Worker:
        queue = self._idle[lane]
        while True:
            if self._closed:
                raise RuntimeError("sandbox pool is closed")
            if self._broken is not None:
                raise SandboxUnavailableError(f"sandbox workers cannot be replaced: {self._broken}")
            worker = await queue.get()
            if worker is not None:
                return worker
            queue.put_nowait(None)  # a wake-up: pass it on to the next waiter

    def _replace(self, worker: Worker) -> None:
        """Kill a worker that may be busy or wedged and start another in the background."""
        worker.kill()
        self._workers.discard(worker)
        self._retiring.add(worker)
        self.replaced += 1
        task = asyncio.get_running_loop().create_task(self._replacement(worker))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replacement(self, old: Worker) -> None:
        await old.close(self._pids)
        self._retiring.discard(old)
        last: BaseException | None = None
        for attempt in range(_REPLACE_ATTEMPTS):
            if self._closed:
                return
            worker = self._new_worker(old.lane)
            try:
                await worker.start(self._pids)
            except Exception as exc:
                last = exc
                await worker.close(self._pids)
                await asyncio.sleep(0.2 * (attempt + 1))
                continue
            if self._closed:
                await worker.close(self._pids)
                return
            self._workers.add(worker)
            self._idle[worker.lane].put_nowait(worker)
            return
        self._broken = last
        for queue in self._idle.values():
            queue.put_nowait(None)


def _decode(data: bytes) -> str:
    # Binary output must not break the JSON/text path: invalid UTF-8 becomes \xNN, NUL visible.
    return data.decode("utf-8", errors="backslashreplace").replace("\x00", "\\x00")


def _stream(header: dict[str, Any], payload: bytes, offset: int, name: str) -> tuple[str, int, bool]:
    head_n, tail_n, omitted = header[f"{name}_head"], header[f"{name}_tail"], header[f"{name}_omitted"]
    head = payload[offset : offset + head_n]
    tail = payload[offset + head_n : offset + head_n + tail_n]
    text = _decode(head)
    if omitted:
        text += f"\n... [{omitted} bytes of {name} omitted by the sandbox] ...\n"
    text += _decode(tail)
    return text, offset + head_n + tail_n, omitted > 0


def _to_result(header: dict[str, Any], payload: bytes) -> ToolResult:
    stdout, offset, cut_out = _stream(header, payload, 0, "out")
    stderr, _, cut_err = _stream(header, payload, offset, "err")
    killed_by: KilledBy | None = header.get("killed_by")
    return ToolResult(
        stdout=stdout,
        stderr=stderr,
        exit_code=header.get("exit_code"),
        timed_out=killed_by == "timeout",
        killed_by=killed_by,
        duration_ms=float(header.get("duration_ms", 0.0)),
        truncated=cut_out or cut_err or killed_by == "output_limit",
    )


def _lost_result(exc: BaseException, worker: Worker, timeout: float, elapsed: float) -> ToolResult:
    wedged = isinstance(exc, TimeoutError)
    note = (
        f"sandbox worker did not answer within {timeout:g} s (+ grace); it was killed and replaced"
        if wedged
        else f"sandbox worker died ({exc}); it was replaced. {worker.log_tail(300)}"
    )
    return ToolResult(
        stdout="",
        stderr=note,
        exit_code=None,
        timed_out=wedged,
        killed_by="timeout" if wedged else "signal",
        duration_ms=elapsed * 1000.0,
        truncated=False,
    )
