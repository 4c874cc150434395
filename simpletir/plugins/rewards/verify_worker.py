"""Entry point of one verification worker: ``python -m simpletir.plugins.rewards.verify_worker``.

Arguments: ``timeout_s max_memory_mb float_rounding numeric_precision strict``. Reads batches of
``(task_id, answer, gold)`` from fd 0 and writes ``("r", task_id, reason)`` per item to fd 1,
after a ``("ready", pid)`` once math-verify is imported. ``None`` (or EOF) stops it.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
from multiprocessing.connection import Connection


class _ItemTimeout(BaseException):
    # BaseException so math-verify's broad ``except Exception`` cannot swallow it.
    pass


def _on_alarm(signum: int, frame: object) -> None:
    raise _ItemTimeout


def main(argv: list[str]) -> int:
    timeout_s = float(argv[0])
    max_memory_mb = int(argv[1])
    # The results stream owns fd 1; anything printed goes to stderr instead.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    inbox = Connection(os.dup(0), writable=False)
    outbox = Connection(out_fd, readable=False)
    # Ctrl-C goes to the whole process group; the parent decides, and kills us if needed.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if max_memory_mb > 0:
        limit = max_memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    from simpletir.plugins.rewards.judge import JudgeOptions, judge, quiet_math_verify

    quiet_math_verify()
    options = JudgeOptions(float_rounding=int(argv[2]), numeric_precision=int(argv[3]), strict=argv[4] == "1")
    judge("1", "1", options)  # import sympy and antlr now, not inside the first timed verdict
    signal.signal(signal.SIGALRM, _on_alarm)
    outbox.send(("ready", os.getpid()))
    while True:
        try:
            batch = inbox.recv()
        except EOFError:
            return 0
        if batch is None:
            return 0
        for task_id, answer, gold in batch:
            try:
                signal.setitimer(signal.ITIMER_REAL, timeout_s)
                try:
                    reason = judge(answer, gold, options)
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            except _ItemTimeout:
                reason = "timeout"
            except MemoryError:
                reason = "error"
            except Exception:  # a math-verify bug must not take the worker down
                reason = "error"
            outbox.send(("r", task_id, reason))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
