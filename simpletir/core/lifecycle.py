"""What a command does when it is told to stop: SIGINT, SIGTERM, SIGHUP, SIGKILL.

:func:`process_lifecycle` wraps a command that starts processes (``simpletir-run``, ``simpletir
sandbox exec``):

* SIGINT (Ctrl-C) raises :class:`KeyboardInterrupt`, SIGTERM and SIGHUP raise
  :class:`Terminated` (a ``KeyboardInterrupt``, so asyncio and every ``finally`` treat it the
  same) in the main thread: from a callback of the running event loop when there is one (see
  :class:`_Handler`), else at once. The work in flight is cut, and the ``finally`` blocks and
  exit stacks close what was built: the rollout's tools, the vLLM engine, the sandbox pool, the
  reward workers, the journal and the loggers. The command then prints one line and exits
  130 (SIGINT), 143 (SIGTERM) or 129 (SIGHUP);
* a signal while that cleanup runs exits at once (``os._exit``), leaving the rest to
* the reaper (:mod:`simpletir.core.reaper`), a small watcher process which, when the command
  dies without cleaning up (SIGKILL, the second signal, a crash), stops every process the
  command had started: SIGTERM to its own children, SIGKILL 3 s later to whatever is left.

A signal whose disposition was changed before (``nohup`` ignores SIGHUP; an embedding program's
own handler) is left alone. Outside the main thread only the reaper is started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from asyncio import events as asyncio_events
from collections.abc import Iterator
from types import FrameType
from typing import Any

from simpletir.core import reaper


class Terminated(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM or SIGHUP; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal_name(signum))

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_status(exc: KeyboardInterrupt) -> tuple[int, str]:
    """(exit code, the one line to print) for a stop by signal."""
    if isinstance(exc, Terminated):
        return exc.exit_code, f"stopped by {signal_name(exc.signum)}"
    return 128 + signal.SIGINT, "interrupted"


RAISE_WITHIN_S = 2.0


class _Handler:
    """Turns the first signal into an exception in the main thread; see :func:`process_lifecycle`.

    While an event loop runs in the main thread the exception is raised from one of its own
    callbacks, between two steps, not in the middle of whatever asyncio was doing (a future half
    resolved, a lock half released: the cleanup's cancellations could then wait forever); it
    leaves the loop, and ``asyncio.run`` cancels the tasks, whose ``finally`` blocks run. If the
    loop does not get there within :data:`RAISE_WITHIN_S` (a long synchronous step, such as a
    training update), or a second signal comes first, it is raised wherever the main thread is.
    A signal after that exits at once.
    """

    def __init__(self, prog: str) -> None:
        self.prog = prog
        self.pending: KeyboardInterrupt | None = None
        self.raised = False
        self.nudging = False  # the next call is the timer's, not a signal
        self.timer: threading.Timer | None = None
        self.main = threading.main_thread().ident

    def __call__(self, signum: int, frame: FrameType | None) -> Any:
        nudge, self.nudging = self.nudging, False
        if self.raised:
            if nudge:  # the loop raised just before the timer's nudge arrived
                return
            line = f"{self.prog}: {signal_name(signum)} again: exiting without cleaning up\n"
            with contextlib.suppress(OSError):
                os.write(2, line.encode())
            os._exit(128 + signum)
        if self.pending is None:
            self.pending = KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)
            loop = asyncio_events._get_running_loop()
            if loop is not None:
                loop.call_soon_threadsafe(self.raise_pending)
                self.timer = threading.Timer(RAISE_WITHIN_S, self._nudge, (signum,))
                self.timer.daemon = True
                self.timer.start()
                return
        self.raise_pending()

    def raise_pending(self) -> None:
        if self.pending is not None and not self.raised:
            self.raised = True
            raise self.pending

    def _nudge(self, signum: int) -> None:
        if not self.raised and self.main is not None:
            self.nudging = True
            # A real signal (not _thread.interrupt_main): it also ends a blocking call (EINTR).
            signal.pthread_kill(self.main, signum)

    def close(self) -> None:
        """Before the previous handlers come back: no nudge may arrive after them."""
        self.raised = True  # a nudge still on its way does nothing
        if self.timer is not None:
            self.timer.cancel()
            self.timer.join(1.0)


@contextlib.contextmanager
def process_lifecycle(prog: str = "simpletir") -> Iterator[None]:
    """During the block: signals stop the command through its ``finally`` blocks, and a reaper
    stops its children if it dies without running them. See the module docstring."""
    watcher = reaper.start()
    handler = _Handler(prog)
    saved: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        defaults = {
            signal.SIGINT: signal.default_int_handler,
            signal.SIGTERM: signal.SIG_DFL,
            signal.SIGHUP: signal.SIG_DFL,
        }
        for signum, default in defaults.items():
            if signal.getsignal(signum) is default:
                saved[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        handler.close()
        for number, previous in saved.items():
            signal.signal(number, previous)
        if watcher is not None:
            # Reached when the block ends, normally or by an exception: its cleanup has run.
            watcher.stop()
