"""A run's identity on disk: its folder, chosen atomically, locked for the run's life.

* A fresh run takes ``<runs_dir>/<experiment_name>``, or ``-2``, ``-3``... when taken; the choice
  is an ``mkdir`` that fails when the folder exists, so ten simultaneous starts of one name get
  ten folders. ``resume`` reuses ``<runs_dir>/<experiment_name>`` itself.
* The run holds an exclusive ``flock`` on ``<run_dir>/.lock`` (holding its PID) until it ends: a
  second run of the same folder (a double ``RESUME=True``) is refused, naming the holder. The
  kernel drops the lock when the holder dies, however it dies, so a stale lock is taken over.
* A fresh run that fails before doing any work (bad data found late, a model that does not
  load) removes its folder again, so the fixed rerun gets the plain name back.
* File names under ``logs/`` follow the folder's name (``ExperimentConfig.run_name``), so runs
  never overwrite each other's accuracy, generations or log files.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from simpletir.core.errors import SimpletirError

LOCK_FILE = ".lock"
# What a run folder holds before its stage has done any work.
_BOOKKEEPING = {
    "config.yaml",
    "plugins.json",
    LOCK_FILE,
    "wandb_id",
    "wandb",
    "metrics.jsonl",
    "eval_journal.jsonl",
}

_CAUSES = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder",
    errno.ENAMETOOLONG: "name too long",
    errno.EEXIST: "it exists and is not a folder",
}
FILESYSTEM_ERRNOS = frozenset(_CAUSES)


class RunDirError(SimpletirError):
    """The run folder cannot be made, locked or written."""


def describe_os_error(exc: OSError, path: str | Path | None = None) -> str:
    """``'runs/x/config.yaml: disk full (No space left on device)'``: the path and the cause."""
    where = path if path is not None else (exc.filename or "?")
    cause = _CAUSES.get(exc.errno or 0, exc.strerror or str(exc))
    detail = f" ({exc.strerror})" if exc.strerror and exc.strerror.lower() != cause else ""
    return f"{where}: {cause}{detail}"


def choose_run_dir(runs_dir: str | Path, name: str, *, resume: bool) -> Path:
    """Create (atomically) and return this run's folder."""
    root = Path(runs_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        base = root / name
        if resume:
            base.mkdir(exist_ok=True)
            return base
        suffix = 1
        while True:
            candidate = base if suffix == 1 else root / f"{name}-{suffix}"
            try:
                candidate.mkdir()
                return candidate
            except FileExistsError:
                suffix += 1
    except OSError as exc:
        raise RunDirError(f"cannot make the run folder: {describe_os_error(exc)}") from exc


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/.lock`` exclusively for the block; refuse when another live run holds it."""
    path = run_dir / LOCK_FILE
    try:
        handle: IO[str] = path.open("a+", encoding="utf-8")
    except OSError as exc:
        raise RunDirError(f"cannot lock the run folder: {describe_os_error(exc)}") from exc
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            raise RunDirError(
                f"run folder {run_dir} is in use by another run (PID {holder}); wait for it to end, "
                "or choose another experiment_name"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


def holds_work(run_dir: Path) -> bool:
    """Whether the folder holds anything a stage made (a journal line, a step, a checkpoint...)."""
    for entry in run_dir.iterdir():
        if entry.name not in _BOOKKEEPING:
            return True
        if entry.name == "metrics.jsonl" and entry.stat().st_size > 0:
            return True
        if entry.name == "eval_journal.jsonl" and entry.read_bytes().count(b"\n") > 1:
            return True  # the header line, then groups
    return False


def remove_if_unused(run_dir: Path) -> bool:
    """Remove a fresh run's folder that holds no work (the run failed before starting it)."""
    if run_dir.is_dir() and not holds_work(run_dir):
        shutil.rmtree(run_dir, ignore_errors=True)
        return True
    return False
