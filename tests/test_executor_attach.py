"""``simpletir-run ... executor=ray ray.address=auto`` attaches to a Ray cluster someone started
(``ray start --head``), runs its actors there, and leaves the cluster running when it ends."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _trainer_helpers import tiny_overrides

from simpletir.core.loggers import read_metrics

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
ATTACH = [
    "executor=ray",
    "ray.address=auto",
    "ray.engine_cpus=0.5",
    "ray.reward_cpus=0.25",
    "ray.trainer_cpus=0.5",
]


def environment(**extra: str) -> dict[str, str]:
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    return {**env, **extra}


def processes_under(folder: str) -> list[int]:
    """Pids whose command line names ``folder`` (the head's own temp dir: only its processes)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if folder.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
    return found


@contextlib.contextmanager
def ray_head() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``ray start --head --block`` in its own session; yields its address; stops all of it."""
    # Short: Ray's unix socket paths under the temp dir must fit in 107 bytes.
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")
    head = subprocess.Popen(
        [
            *(str(BIN / "ray"), "start", "--head", "--block", "--port=0", "--num-cpus=2"),
            *("--object-store-memory=200000000", "--include-dashboard=false", "--disable-usage-stats"),
            f"--temp-dir={temp}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environment(),
        start_new_session=True,
    )
    try:
        address = None
        deadline = time.monotonic() + 120
        assert head.stdout is not None
        while address is None and time.monotonic() < deadline:
            line = head.stdout.readline()
            if not line:
                break
            found = re.search(r"ray start --address='([^']+)'", line)
            address = found.group(1) if found else None
        assert address, "ray start --head did not report its address"
        yield address, head
    finally:
        # SIGTERM makes `ray start --block` drain for up to 30 s first; its whole session goes now.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=30)
        for pid in processes_under(temp):  # anything of this head's that left the session
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def test_simpletir_run_attaches_to_a_running_head_and_leaves_it_running(tmp_path: Path) -> None:
    with ray_head() as (address, head):
        run = subprocess.run(
            [str(BIN / "simpletir-run"), *tiny_overrides(None, "attached"), *ATTACH],
            cwd=tmp_path,
            env=environment(RAY_ADDRESS=address),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        assert f"Connecting to existing Ray cluster at address: {address}" in run.stderr
        assert "Started a local Ray instance" not in run.stderr
        assert head.poll() is None  # the run did not stop a cluster it did not start
    steps = [r["step"] for r in read_metrics(tmp_path / "runs" / "attached" / "metrics.jsonl")]
    assert steps == [1, 2]


def test_an_address_with_no_cluster_is_one_clear_error(tmp_path: Path) -> None:
    run = subprocess.run(
        [
            str(BIN / "simpletir-run"),
            *tiny_overrides(None, "nowhere"),
            "executor=ray",
            "ray.address=127.0.0.1:9",
        ],
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr[-2000:]
    assert "ray.address='127.0.0.1:9': cannot attach to a Ray cluster" in run.stderr
