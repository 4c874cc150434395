"""Start the tensor-parallel ranks from one command, keep them in step, stop them together.

This process is rank 0: it owns the rollout engine, the sandbox, logging and checkpoints, and
holds the first shard itself. Ranks 1..tp-1 are *followers*: fresh interpreters started here
(``python -m simpletir.core.backend.megatron.launch``, like torchrun's) that run
:func:`follower_main` on one end of a socket pair whose other end rank 0 keeps, build
their :class:`~simpletir.core.backend.megatron.rank.MegatronRank` and then execute, in order,
every call rank 0 sends them through a pipe. Rank 0 sends a call to every follower first and then
runs it itself, so the collectives inside meet; followers answer ``ok`` or their traceback.

Stopping: a follower that fails sends its traceback and exits, which breaks the collective rank 0
is waiting in (gloo reports the closed connection), and rank 0 raises the follower's error. A
follower that dies (killed, OOM) is seen the same way, through its pipe and exit code. Followers
ignore Ctrl-C (rank 0 receives it too and stops them) and ask the kernel to kill them if rank 0
dies (``PR_SET_PDEATHSIG``), so no rank outlives the run. Backend: gloo on CPU, NCCL on CUDA.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import traceback
import warnings
from collections.abc import Iterator
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from simpletir.core.errors import SimpletirError

if TYPE_CHECKING:
    from simpletir.core.backend.megatron.rank import MegatronRank
    from simpletir.core.config import ExperimentConfig

log = logging.getLogger("simpletir.trainer")

INIT_TIMEOUT_S = 600  # building a large model on every rank can take minutes
READY_TIMEOUT_S = 1800
PR_SET_PDEATHSIG = 1


class RankFailed(SimpletirError):
    """A tensor-parallel rank raised or died; the group is stopped."""


class RankSilent(RankFailed):
    """A rank did not answer in time (it may be waiting for another rank)."""


def rank_device(rank: int, setting: str) -> torch.device:
    on_cuda = setting.startswith("cuda") or (setting == "auto" and torch.cuda.is_available())
    return torch.device("cuda", rank) if on_cuda else torch.device("cpu")


THREADS_ENV = "SIMPLETIR_TRAINER_THREADS"


def threads_per_rank(world: int) -> int:
    """CPU threads each rank uses: the cores (or ``$SIMPLETIR_TRAINER_THREADS``, on a machine
    shared with other jobs) split between the ranks. A 2-core machine at TP=2 runs one thread
    per rank: oversubscribed cores make every collective wait for the slowest rank."""
    budget = int(os.environ.get(THREADS_ENV) or os.cpu_count() or 1)
    return max(1, budget // world)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def quiet_megatron() -> None:
    """Megatron warns at import and build about CUDA-only speed-ups and Apex, on every rank."""
    for pattern in (".*Apex is not installed.*", ".*CUDA_DEVICE_MAX_CONNECTIONS.*", ".*Transformer Engine.*"):
        warnings.filterwarnings("ignore", message=pattern)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\..*")


def init_distributed(rank: int, world: int, port: int, device: torch.device) -> None:
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(
        backend,
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=INIT_TIMEOUT_S),
    )


def shutdown_distributed() -> None:
    with contextlib.suppress(Exception):
        from megatron.core import parallel_state

        parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        with contextlib.suppress(Exception):
            torch.distributed.destroy_process_group()


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


# Messages are plain pickles (tensors by value): batches are token ids, answers are a status.
def send(conn: Connection, message: Any) -> None:
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def receive(conn: Connection) -> Any:
    return pickle.loads(conn.recv_bytes())


def follower_main(fd: int) -> None:
    """A follower rank: build the shard, then run rank 0's calls until told to stop."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # rank 0 handles Ctrl-C and stops us
    conn = Connection(fd)
    rank, world, port, model_dir, config = receive(conn)
    quiet_megatron()
    torch.set_num_threads(threads_per_rank(world))
    device = rank_device(rank, config.trainer.device)
    try:
        from simpletir.core.backend.megatron.rank import MegatronRank

        send(conn, ("imported", None))
        init_distributed(rank, world, port, device)
        worker = MegatronRank(model_dir, config, device)
        send(conn, ("ok", None))
        while True:
            try:
                message = receive(conn)
            except EOFError:  # rank 0 is gone
                break
            if message is None:
                break
            method, args = message
            result = getattr(worker, method)(*args)
            if isinstance(result, Iterator):
                for _ in result:  # take part in every gather; rank 0 keeps the tensors
                    pass
            send(conn, ("ok", None))
        worker.close()
    except BaseException:
        with contextlib.suppress(OSError):
            send(conn, ("error", traceback.format_exc()))
        os._exit(1)  # leave at once: our closed sockets break the collective rank 0 waits in
    shutdown_distributed()


class RankGroup:
    """Rank 0 (this process, :attr:`local`) and its followers; :meth:`call` runs on all."""

    def __init__(self, model_dir: Path, config: ExperimentConfig) -> None:
        self.world = config.trainer.tensor_parallel_size
        self.device = rank_device(0, config.trainer.device)
        self.threads = threads_per_rank(self.world)
        self.followers: list[tuple[subprocess.Popen[bytes], Connection]] = []
        self.local: MegatronRank | None = None
        quiet_megatron()
        port = _free_port()
        try:
            for rank in range(1, self.world):
                ours, theirs = socket.socketpair()
                process = subprocess.Popen(
                    [sys.executable, "-m", "simpletir.core.backend.megatron.launch", str(theirs.fileno())],
                    pass_fds=[theirs.fileno()],
                )
                theirs.close()
                conn = Connection(ours.detach())
                self.followers.append((process, conn))
                send(conn, (rank, self.world, port, Path(model_dir), config))
            for rank in range(1, self.world):
                self._answer(rank, "start", timeout=INIT_TIMEOUT_S)  # "imported": alive and ready to join
            with self._threads():
                init_distributed(0, self.world, port, self.device)
                from simpletir.core.backend.megatron.rank import MegatronRank

                self.local = MegatronRank(Path(model_dir), config, self.device)
            for rank in range(1, self.world):
                self._answer(rank, "start", timeout=READY_TIMEOUT_S)
        except BaseException:
            self.close()
            raise
        if self.world > 1:
            log.info(
                "megatron: %d tensor-parallel ranks (%s, %d threads each); rank 0 is this process",
                self.world,
                "nccl" if self.device.type == "cuda" else "gloo",
                self.threads,
            )

    @contextlib.contextmanager
    def _threads(self) -> Iterator[None]:
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def _answer(self, rank: int, method: str, timeout: float | None = None) -> None:
        process, conn = self.followers[rank - 1]
        if not wait([conn], timeout=timeout):
            raise RankSilent(f"megatron rank {rank} did not answer {method!r} within {timeout:.0f} s")
        try:
            status, detail = receive(conn)
        except (EOFError, OSError):  # its end of the socket closed: the process is gone
            status, detail = "dead", None
        if status == "dead":
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
            raise RankFailed(f"megatron rank {rank} died during {method!r} (exit code {process.returncode})")
        if status == "error":
            raise RankFailed(f"megatron rank {rank} failed in {method!r}:\n{detail}")

    def _send(self, method: str, args: tuple[Any, ...]) -> None:
        for rank, (_, conn) in enumerate(self.followers, start=1):
            try:
                send(conn, (method, args))
            except (BrokenPipeError, OSError):
                self._answer(rank, method, timeout=5)
                raise RankFailed(f"megatron rank {rank} is gone (sending {method!r})") from None

    def _failed(self, method: str, exc: BaseException) -> BaseException:
        """Rank 0's error, or the follower's that caused it (a broken collective)."""
        for rank in range(1, self.world):
            try:
                self._answer(rank, method, timeout=10)
            except RankSilent:  # waiting for rank 0 in a collective: the error is rank 0's own
                continue
            except RankFailed as follower_error:
                return follower_error
        return exc

    def call(self, method: str, *args: Any) -> Any:
        """Run ``method`` on every rank; rank 0's result."""
        if self.local is None:
            raise RankFailed("the megatron ranks were stopped (an earlier error); the run cannot go on")
        try:
            self._send(method, args)
            with self._threads():
                result = getattr(self.local, method)(*args)
            for rank in range(1, self.world):
                self._answer(rank, method)
        except BaseException as exc:
            error = self._failed(method, exc) if not isinstance(exc, RankFailed | KeyboardInterrupt) else exc
            self.close()
            if error is exc:
                raise
            raise error from exc
        return result

    def call_iter(self, method: str, *args: Any) -> Iterator[Any]:
        """Like :meth:`call` for a generator: rank 0's items, one at a time."""
        if self.local is None:
            raise RankFailed("the megatron ranks were stopped (an earlier error); the run cannot go on")
        try:
            self._send(method, args)
            before = torch.get_num_threads()
            torch.set_num_threads(self.threads)
            try:
                yield from getattr(self.local, method)(*args)
            finally:
                torch.set_num_threads(before)
            for rank in range(1, self.world):
                self._answer(rank, method)
        except BaseException as exc:
            error = self._failed(method, exc) if not isinstance(exc, RankFailed | GeneratorExit) else exc
            self.close()
            if error is exc:
                raise
            raise error from exc

    def close(self) -> None:
        """Stop the followers (politely, then by force) and leave the process group. Idempotent."""
        for _, conn in self.followers:
            with contextlib.suppress(OSError):
                send(conn, None)
        for process, conn in self.followers:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
            conn.close()
        self.followers = []
        if self.local is not None:
            self.local.close()
            self.local = None
        shutdown_distributed()


if __name__ == "__main__":
    follower_main(int(sys.argv[1]))
