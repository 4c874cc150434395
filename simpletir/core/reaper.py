"""A watcher process that stops what a dead run left behind.

``simpletir-run`` and ``simpletir sandbox exec`` close everything they started on the way out,
also on SIGTERM and Ctrl-C (:mod:`simpletir.core.lifecycle`). A process that is killed outright
(SIGKILL, the OOM killer, a crash) runs no cleanup: its children (vLLM's ``EngineCore`` and
``Worker``, nsjail sandboxes running a snippet, reward workers) are re-parented to PID 1 and may
keep running, holding gigabytes and CPU.

:func:`start` launches this file as its own process (``python -I -S reaper.py PID``, in a new
session so a Ctrl-C or a ``kill -- -PGID`` meant for the run does not reach it; standard library
only, so it starts in milliseconds). Every ``interval`` seconds it records the run's descendants
from ``/proc`` (pid and start time, following parent links). When the run dies without having
said goodbye, it sends SIGTERM to the run's own children that are still the same processes
(same start time), which is how they are stopped normally (vLLM's engine core then stops its
workers, nsjail its jail), and SIGKILL ``grace`` seconds later to every recorded descendant
still there; then it exits. A run that ends normally stops it with :meth:`Reaper.stop` (it then
exits without touching anything).

How it learns of the death: its stdin is a pipe whose only writer is the run, so it reads
end-of-file the moment the run is gone (an explicit ``stop`` writes a byte first); a child that
inherited the pipe through a bare ``fork`` could hold it open, so the run's pid is also checked
on every tick. Descendants younger than one tick when the run died are not seen.

The multiprocessing resource tracker is left to exit by itself (it unlinks leaked shared memory
once the processes that used it are gone) and killed only if it is still there ``grace`` seconds
after them.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterable

INTERVAL_S = 0.5
GRACE_S = 3.0
STOP = b"q"
_TRACKER = b"multiprocessing.resource_tracker"

# (ppid, start time in clock ticks, state) per pid
Table = dict[int, tuple[int, int, str]]


def proc_table() -> Table:
    """Every process in ``/proc``: pid -> (ppid, start time, state)."""
    table: Table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                raw = fh.read()
        except OSError:
            continue
        fields = raw.rsplit(b")", 1)[-1].split()
        try:  # after the name: state ppid pgrp session ... (starttime is field 22 of stat)
            table[int(entry)] = (int(fields[1]), int(fields[19]), fields[0].decode())
        except (IndexError, ValueError):
            continue
    return table


def start_time(pid: int, table: Table | None = None) -> int | None:
    """The start time of a live (non-zombie) ``pid``, or None when it is gone."""
    if table is not None:
        row = table.get(pid)
    else:
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[-1].split()
            row = (int(fields[1]), int(fields[19]), fields[0].decode())
        except (OSError, IndexError, ValueError):
            return None
    if row is None or row[2] in ("Z", "X"):
        return None
    return row[1]


def descendants(root: int, table: Table) -> dict[int, int]:
    """pid -> start time of every live descendant of ``root`` in ``table``."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, int] = {}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found[child] = table[child][1]
                todo.append(child)
    return {pid: born for pid, born in found.items() if table[pid][2] not in ("Z", "X")}


def _is_tracker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return _TRACKER in fh.read()
    except OSError:
        return False


def _alive(tracked: dict[int, int], table: Table) -> list[int]:
    return [pid for pid, born in tracked.items() if start_time(pid, table) == born]


def _signal(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):  # gone meanwhile, or a jailed process only its jail may signal
            os.kill(pid, sig)


def sweep(tracked: dict[int, int], top: set[int], grace: float = GRACE_S) -> int:
    """Stop every tracked process that is still the same one; returns how many there were.

    SIGTERM goes to ``top`` (the dead process's own children), as in their normal shutdown:
    vLLM's engine core then stops its workers, nsjail its jail. Whatever is left ``grace``
    seconds later, their children included (also those started meanwhile), gets SIGKILL.
    """
    table = proc_table()
    trackers = {pid for pid in _alive(tracked, table) if _is_tracker(pid)}
    found = [pid for pid in _alive(tracked, table) if pid not in trackers]
    _signal([pid for pid in found if pid in top], signal.SIGTERM)
    deadline = time.monotonic() + grace
    killed = False
    while True:
        table = proc_table()
        for pid, (ppid, born, state) in table.items():  # a child started after the last tick
            if ppid in tracked and pid not in tracked and state not in ("Z", "X"):
                tracked[pid] = born
        alive = [pid for pid in _alive(tracked, table) if pid not in trackers]
        if not alive or (killed and time.monotonic() >= deadline):
            break
        if not killed and time.monotonic() >= deadline:
            _signal(alive, signal.SIGKILL)
            killed = True
            deadline = time.monotonic() + grace
        time.sleep(0.05)
    # The resource tracker unlinks leaked shared memory once its clients are gone.
    deadline = time.monotonic() + grace
    while trackers and time.monotonic() < deadline:
        trackers = set(_alive({p: tracked[p] for p in trackers}, proc_table()))
        time.sleep(0.05)
    _signal(trackers, signal.SIGKILL)
    return len(found)


def watch(
    pid: int,
    born: int,
    interval: float = INTERVAL_S,
    grace: float = GRACE_S,
    baseline: frozenset[tuple[int, int]] = frozenset(),
) -> int:
    """The reaper's loop (stdin: the pipe from the run). Returns the process exit status.

    ``baseline``: (pid, start time) of the run's descendants from before :func:`start`, which
    are not the run's to answer for (an embedding program's own).
    """
    me = os.getpid()
    tracked: dict[int, int] = {}
    top: set[int] = set()  # the run's own children
    stopped = False
    while True:
        table = proc_table()
        if start_time(pid, table) != born:
            break
        for child, child_born in descendants(pid, table).items():
            if child != me and (child, child_born) not in baseline:
                tracked[child] = child_born
                if table[child][0] == pid:
                    top.add(child)
        readable, _, _ = select.select([0], [], [], interval)
        if readable:
            data = os.read(0, 64)
            if STOP in data:
                stopped = True
            if not data:  # the run closed the pipe: it exited, or it is stopping us
                break
    if stopped:
        return 0
    count = sweep(tracked, top, grace)
    if count:
        print(
            f"simpletir: process {pid} ended without cleaning up; stopped {count} process(es) it left",
            file=sys.stderr,
            flush=True,
        )
    return 0


# -- the run's side ---------------------------------------------------------------------------
class Reaper:
    """Handle on a started reaper: :meth:`stop` when the run has cleaned up after itself."""

    def __init__(self, proc: subprocess.Popen[bytes], write_fd: int) -> None:
        self.proc = proc
        self._fd: int | None = write_fd

    def stop(self) -> None:
        """The run closed what it started: let the reaper exit without sweeping."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.write(fd, STOP)
        except OSError:
            pass
        finally:
            os.close(fd)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=2)


def start(interval: float = INTERVAL_S, grace: float = GRACE_S) -> Reaper | None:
    """Start watching this process; None where there is no ``/proc`` to watch."""
    me = os.getpid()
    born = start_time(me)
    if born is None:
        return None
    baseline = ",".join(f"{p}:{b}" for p, b in descendants(me, proc_table()).items())
    read_fd, write_fd = os.pipe()  # both close-on-exec: no other child inherits the write end
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-I",
                "-S",
                os.path.abspath(__file__),
                str(me),
                str(born),
                str(interval),
                str(grace),
                baseline,
            ],
            stdin=read_fd,
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # no Ctrl-C, SIGHUP or process-group kill meant for the run
            close_fds=True,
        )
    except OSError:
        os.close(write_fd)
        return None
    finally:
        os.close(read_fd)
    return Reaper(proc, write_fd)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pid, born = int(argv[0]), int(argv[1])
    interval = float(argv[2]) if len(argv) > 2 else INTERVAL_S
    grace = float(argv[3]) if len(argv) > 3 else GRACE_S
    pairs = (item.split(":") for item in argv[4].split(",") if item) if len(argv) > 4 else ()
    baseline = frozenset((int(p), int(b)) for p, b in pairs)
    return watch(pid, born, interval, grace, baseline)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
