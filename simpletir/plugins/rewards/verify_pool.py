"""A pool of verification worker processes with a hard per-verdict timeout.

Why not ``concurrent.futures.ProcessPoolExecutor``: it cannot stop one stuck task. A sympy call
on a pathological answer (a tower of exponents, thousands of nested parentheses) can run for
minutes inside C code, where no signal reaches it; the only bound that always holds is killing
the process. So each worker is a plain child process, and the parent:

- sends small batches of ``(task_id, answer, gold)`` and receives one result per item, so it
  knows when each item started (when the previous one finished);
- kills a worker whose current item overran ``timeout_s + grace_s``, records that item as
  ``timeout``, re-queues the rest of its batch and starts a replacement;
- treats a worker that dies (memory limit, segfault) the same way, with reason ``error``.

Inside the worker an interval timer of ``timeout_s`` interrupts Python-level work cleanly, so
the kill is the exception. Workers are started with ``python -m`` rather than multiprocessing's
fork or spawn: fork is unsafe in a parent that holds engine threads, and spawn re-imports the
caller's ``__main__`` (a script without a main guard would run twice).

The pool is used from one thread at a time (a lock makes concurrent callers take turns).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait

from simpletir.plugins.rewards.judge import JudgeOptions

TIMEOUT = "timeout"
ERROR = "error"
_WORKER_MODULE = "simpletir.plugins.rewards.verify_worker"
_MAX_START_FAILURES = 3


class VerifierPoolError(RuntimeError):
    """The pool cannot run verdicts at all (workers fail to start)."""


@dataclass
class _Worker:
    proc: subprocess.Popen[bytes]
    to_child: Connection
    from_child: Connection
    started_at: float
    ready: bool = False
    pending: deque[int] = field(default_factory=deque)
    item_started: float = 0.0


@dataclass
class PoolStats:
    """Counts a caller can report: verdicts run, workers killed for overrunning, crashes."""

    verdicts: int = 0
    killed: int = 0
    crashed: int = 0
    started: int = 0


class VerifierPool:
    """``run(tasks)`` returns one reason per ``(answer, gold)`` task, in order, in bounded time."""

    def __init__(
        self,
        *,
        workers: int,
        timeout_s: float,
        options: JudgeOptions,
        grace_s: float = 0.5,
        batch_size: int = 16,
        max_memory_mb: int = 4096,
        startup_timeout_s: float = 120.0,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.n_workers = workers
        self.timeout_s = timeout_s
        self.grace_s = grace_s
        self.options = options
        self.batch_size = max(1, batch_size)
        self.max_memory_mb = max_memory_mb
        self.startup_timeout_s = startup_timeout_s
        self.stats = PoolStats()
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._start_failures = 0
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Launch the workers (non-blocking: they import math-verify in the background)."""
        if self._closed:
            raise VerifierPoolError("the verification pool is closed")
        while len(self._workers) < self.n_workers:
            self._workers.append(self._spawn())

    def _spawn(self) -> _Worker:
        args = [
            sys.executable,
            "-m",
            _WORKER_MODULE,
            repr(self.timeout_s),
            str(self.max_memory_mb),
            str(self.options.float_rounding),
            str(self.options.numeric_precision),
            "1" if self.options.strict else "0",
        ]
        # Two pipes: the child reads tasks on fd 0 and writes results on fd 1 (it moves its own
        # stdout to stderr first, so a stray print cannot corrupt the stream).
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        assert proc.stdin is not None and proc.stdout is not None
        to_child = Connection(os.dup(proc.stdin.fileno()), readable=False)
        from_child = Connection(os.dup(proc.stdout.fileno()), writable=False)
        proc.stdin.close()
        proc.stdout.close()
        self.stats.started += 1
        return _Worker(proc, to_child, from_child, started_at=time.monotonic())

    def _retire(self, worker: _Worker) -> None:
        for conn in (worker.to_child, worker.from_child):
            with contextlib.suppress(OSError):
                conn.close()
        if worker.proc.poll() is None:
            worker.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):  # a SIGKILLed child always exits
            worker.proc.wait(timeout=5)

    def _replace(self, worker: _Worker) -> None:
        self._retire(worker)
        index = self._workers.index(worker)
        self._workers[index] = self._spawn()

    def close(self) -> None:
        """Stop every worker. Idempotent; safe after an error mid-run."""
        with self._lock:
            self._closed = True
            for worker in self._workers:
                with contextlib.suppress(OSError):  # polite stop; the kill in _retire is the backstop
                    worker.to_child.send(None)
            deadline = time.monotonic() + 1.0
            for worker in self._workers:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                self._retire(worker)
            self._workers.clear()

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- running -----------------------------------------------------------------------------
    def run(self, tasks: Sequence[tuple[str, str]]) -> list[str]:
        """Judge every ``(answer, gold)``; each costs at most ``timeout_s + grace_s`` of wall time.

        Returns the worker's reason (``correct``, ``wrong``, ``parse_error``,
        ``gold_parse_error``) or ``timeout`` / ``error`` per task.
        """
        if not tasks:
            return []
        with self._lock:
            self.start()
            try:
                return self._run(tasks)
            except BaseException:
                # Interrupted mid-run (Ctrl-C, a bug): results still in flight would be read by
                # the next run as its own, so busy workers are replaced.
                for worker in list(self._workers):
                    if worker.pending:
                        worker.pending.clear()
                        self._replace(worker)
                raise

    def _run(self, tasks: Sequence[tuple[str, str]]) -> list[str]:
        results: list[str | None] = [None] * len(tasks)
        queue: deque[int] = deque(range(len(tasks)))
        hard_limit = self.timeout_s + self.grace_s
        remaining = len(tasks)
        while remaining:
            self._dispatch(queue, tasks)
            now = time.monotonic()
            wake = [w.item_started + hard_limit for w in self._workers if w.pending]
            wake += [w.started_at + self.startup_timeout_s for w in self._workers if not w.ready]
            timeout = max(0.0, min(wake) - now) if wake else None
            by_conn = {id(w.from_child): w for w in self._workers}
            for conn in wait([w.from_child for w in self._workers], timeout=timeout):
                worker = by_conn[id(conn)]
                try:
                    message = worker.from_child.recv()
                except (EOFError, OSError):
                    remaining -= self._on_death(worker, queue, results)
                    continue
                if message[0] == "ready":
                    worker.ready = True
                    self._start_failures = 0
                    continue
                _, task_id, reason = message
                if not worker.pending or worker.pending[0] != task_id:  # pragma: no cover - protocol bug
                    raise VerifierPoolError(f"verification worker answered task {task_id} out of order")
                worker.pending.popleft()
                worker.item_started = time.monotonic()
                results[task_id] = reason
                remaining -= 1
                self.stats.verdicts += 1
            remaining -= self._enforce_deadlines(queue, results, hard_limit)
        return [reason if reason is not None else ERROR for reason in results]

    def _dispatch(self, queue: deque[int], tasks: Sequence[tuple[str, str]]) -> None:
        idle = [w for w in self._workers if w.ready and not w.pending]
        for worker in idle:
            if not queue:
                return
            # Spread what is left over the workers so one does not hoard the tail.
            share = -(-len(queue) // max(1, len(idle)))
            take = min(self.batch_size, share)
            batch = [queue.popleft() for _ in range(min(take, len(queue)))]
            try:
                worker.to_child.send([(i, tasks[i][0], tasks[i][1]) for i in batch])
            except OSError:  # died since the last look: the next wait() reports the EOF
                queue.extendleft(reversed(batch))
                continue
            worker.pending.extend(batch)
            worker.item_started = time.monotonic()

    def _enforce_deadlines(self, queue: deque[int], results: list[str | None], hard_limit: float) -> int:
        done = 0
        now = time.monotonic()
        for worker in list(self._workers):
            if worker.pending and now - worker.item_started > hard_limit:
                head = worker.pending.popleft()
                results[head] = TIMEOUT
                done += 1
                self.stats.killed += 1
                self.stats.verdicts += 1
                queue.extendleft(reversed(worker.pending))
                worker.pending.clear()
                self._replace(worker)
            elif not worker.ready and now - worker.started_at > self.startup_timeout_s:
                self._note_start_failure(f"not ready after {self.startup_timeout_s:.0f} s")
                self._replace(worker)
        return done

    def _on_death(self, worker: _Worker, queue: deque[int], results: list[str | None]) -> int:
        """A worker's pipe closed: it crashed (or never started). Returns verdicts settled."""
        code = worker.proc.poll()
        if not worker.ready:
            self._note_start_failure(f"exited with code {code} before it was ready (see its stderr above)")
            self._replace(worker)
            return 0
        settled = 0
        if worker.pending:
            # The item being judged killed it; it is not retried (it would kill the next one).
            results[worker.pending.popleft()] = ERROR
            settled = 1
            self.stats.verdicts += 1
            queue.extendleft(reversed(worker.pending))
            worker.pending.clear()
        self.stats.crashed += 1
        self._replace(worker)
        return settled

    def _note_start_failure(self, why: str) -> None:
        self._start_failures += 1
        if self._start_failures >= _MAX_START_FAILURES * self.n_workers:
            raise VerifierPoolError(
                f"math-verify workers ({sys.executable} -m {_WORKER_MODULE}) failed to start "
                f"{self._start_failures} times; last: {why}"
            )
