"""Process lifecycle (issue 14, items 1 and 7): what SIGINT, SIGTERM and SIGKILL leave behind.

Real ``simpletir-run`` and ``simpletir sandbox exec`` processes are started in their own session
(so a Ctrl-C can be sent to their whole process group, as a terminal does), their descendants
are recorded from ``/proc`` while they run, and after the signal every one of them must be gone
within 10 s. The cheap real run makes the sandbox work on every turn: the tiny model writes
dots, ``"."`` is a stop string and the code pattern takes a whole turn as code, so each turn
runs (failing) code in a jail.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from simpletir.core import reaper

BIN = Path(sys.executable).parent
ENV = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
ENV.pop("RESUME", None)
GONE_WITHIN_S = 10.0

RUN_ARGS = [
    "model_name=tiny-qwen2",
    "rollout.engine=hf",
    "tool_use=true",
    "tools=[python]",
    "val_only=true",
    "valid_dataset=arith",
    "n_val=2",
    "val_sample_size=8",
    "max_response_length=64",
    "max_prompt_length=512",
    "rollout.chat_template=false",
    "experiment_name=k",
    # every turn is a sandbox call (see the module docstring), for many turns
    "max_turns=30",
    "plugin_config.python.code_pattern=(?s)(.+)",
    'plugin_config.python.stop_strings=["."]',
    "plugin_config.python.workers=1",
    "plugin_config.python.light_workers=0",
    "plugin_config.python.preload=[math]",
    "plugin_config.python.warmup=false",
]
VLLM_ARGS = [
    "rollout.engine=vllm",
    "rollout.dtype=float32",
    "rollout.gpu_memory_utilization=0.05",  # other tests share the machine's memory
    "rollout.enforce_eager=true",
]


@pytest.fixture(scope="module")
def nsjail() -> None:
    from simpletir.core.errors import SandboxUnavailableError
    from simpletir.plugins.tools.python_sandbox.config import SandboxConfig
    from simpletir.plugins.tools.python_sandbox.provision import find_nsjail

    try:
        find_nsjail(SandboxConfig())
    except SandboxUnavailableError as exc:
        pytest.skip(f"nsjail sandbox unavailable here: {exc}")


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return "?"


class Watched:
    """A command in its own session whose descendants are recorded every 0.1 s until it exits."""

    def __init__(self, argv: list[str], cwd: Path, stdin: bytes | None = None) -> None:
        self.out, self.err = cwd / "stdout.txt", cwd / "stderr.txt"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=ENV,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        if stdin is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(stdin)
            self.proc.stdin.close()
        self.seen: dict[int, tuple[int, str, str]] = {}  # pid -> (start time, comm, cmdline)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._record, daemon=True)
        self._thread.start()

    def _record(self) -> None:
        while self.proc.poll() is None:
            for pid, born in reaper.descendants(self.proc.pid, reaper.proc_table()).items():
                with self._lock:
                    if pid not in self.seen:
                        self.seen[pid] = (born, _comm(pid), _cmdline(pid))
            time.sleep(0.1)

    def names(self) -> list[str]:
        with self._lock:
            return [f"{comm} {cmd}" for _, comm, cmd in self.seen.values()]

    def wait_for(self, what: str, ready: Callable[[], bool], timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.proc.poll() is None, (
                f"exited ({self.proc.returncode}) before {what}:\n{self.stderr()}"
            )
            assert time.monotonic() < deadline, f"no {what} within {timeout:g} s:\n{self.stderr()}"
            time.sleep(0.1)

    def alive(self) -> list[str]:
        with self._lock:
            seen = dict(self.seen)
        return [
            f"{pid} {cmd[:100]}" for pid, (born, _, cmd) in seen.items() if reaper.start_time(pid) == born
        ]

    def stop(self, sig: int, *, group: bool = False) -> float:
        """Send ``sig`` (to the process group: a terminal's Ctrl-C), wait for the command to
        exit and for every recorded descendant to be gone; returns the seconds that took."""
        sent = time.monotonic()
        self.stderr_at_signal = len(self.err.read_bytes())
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=60)
        self._thread.join()
        while self.alive() and time.monotonic() - sent < GONE_WITHIN_S:
            time.sleep(0.05)
        assert not self.alive(), (
            f"alive {GONE_WITHIN_S:g} s after {signal.Signals(sig).name}: {self.alive()}\n{self.stderr()}"
        )
        return time.monotonic() - sent

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def stderr_after_signal(self) -> list[str]:
        tail = self.err.read_bytes()[self.stderr_at_signal :].decode(errors="replace")
        return [line for line in tail.splitlines() if line.strip()]

    def kill_all(self) -> None:
        """Whatever a failed test left: not to be left for the next one."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        with self._lock:
            seen = dict(self.seen)
        for pid, (born, _, _) in seen.items():
            if reaper.start_time(pid) == born:
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def watched() -> Iterator[list[Watched]]:
    started: list[Watched] = []
    yield started
    for w in started:
        w.kill_all()


def _start_run(tmp_path: Path, started: list[Watched], *extra: str) -> Watched:
    w = Watched([str(BIN / "simpletir-run"), *RUN_ARGS, *extra], tmp_path)
    started.append(w)
    return w


def _has(w: Watched, needle: str) -> Callable[[], bool]:
    return lambda: any(needle in name for name in w.names())


# -- a real run -------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "group", "code", "line"),
    [
        (signal.SIGINT, True, 130, "simpletir: interrupted"),  # Ctrl-C: the whole process group
        (signal.SIGTERM, False, 143, "simpletir: stopped by SIGTERM"),  # kill, timeout, docker stop
        (signal.SIGKILL, False, -signal.SIGKILL, None),
    ],
    ids=["SIGINT", "SIGTERM", "SIGKILL"],
)
def test_run_stopped_by_a_signal_leaves_no_process(
    tmp_path: Path, watched: list[Watched], nsjail: None, sig: int, group: bool, code: int, line: str | None
) -> None:
    w = _start_run(tmp_path, watched)
    # The rollout is running once a jail exists (the pool starts on the first tool call).
    w.wait_for("sandbox jail", _has(w, "nsjail"))
    w.wait_for("reward workers", _has(w, "verify_worker"))
    time.sleep(0.5)
    w.stop(sig, group=group)
    assert w.proc.returncode == code, w.stderr()
    if line is not None:
        after = w.stderr_after_signal()
        assert after[-1] == line, w.stderr()
        assert len(after) <= 4, after  # the progress bars' last state, then the line
        assert "Traceback" not in w.stderr() and "Event loop is closed" not in w.stderr()
        # The journal and the run log were closed in order: the run log says why it stopped.
        assert "run failed: " in (tmp_path / "logs" / "k.log").read_text()


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_run_sigkilled_leaves_no_engine_and_logs_quietly(tmp_path: Path, watched: list[Watched]) -> None:
    """SIGKILL orphaned VLLM::EngineCore + VLLM::Worker (~4 GB, busy CPU) to PID 1; the reaper
    stops them. Until then vLLM's own log lines went to the run log, not the console."""
    pytest.importorskip("vllm")
    w = _start_run(tmp_path, watched, *VLLM_ARGS, "tool_use=false")
    w.wait_for("vLLM worker process", lambda: "VLLM::Worker" in _comms(w))
    time.sleep(1.0)
    took = w.stop(signal.SIGKILL)
    assert took < GONE_WITHIN_S
    console = w.stderr() + w.out.read_text(errors="replace")
    assert " INFO " not in console and "EngineCore" not in console, console
    run_log = (tmp_path / "logs" / "k.log").read_text()
    assert "vllm EngineCore" in run_log and "vllm MainProcess" in run_log


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_run_ctrl_c_is_quiet_and_leaves_no_process(
    tmp_path: Path, watched: list[Watched], nsjail: None
) -> None:
    """Ctrl-C reached vLLM's engine processes too, which printed their own tracebacks (~80
    lines) and left shared memory for the resource tracker to report; now only the main process
    gets it and shuts the engine down in order."""
    pytest.importorskip("vllm")
    w = _start_run(tmp_path, watched, *VLLM_ARGS)
    w.wait_for("sandbox jail", _has(w, "nsjail"))  # the rollout is running, with tool calls
    time.sleep(0.5)
    w.stop(signal.SIGINT, group=True)
    assert w.proc.returncode == 130, w.stderr()
    after = w.stderr_after_signal()
    assert after[-1] == "simpletir: interrupted" and len(after) <= 4, after
    assert "Traceback" not in w.stderr() and "leaked" not in w.stderr(), w.stderr()


def _comms(w: Watched) -> list[str]:
    """The recorded processes' names now (vLLM renames its processes after they start)."""
    with w._lock:
        pids = list(w.seen)
    return [_comm(pid) for pid in pids]


# -- simpletir sandbox exec -------------------------------------------------------------------
SLEEPER = b"import time\nprint('started', flush=True)\ntime.sleep(30)\n"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_sandbox_exec_stopped_leaves_no_jail(
    tmp_path: Path, watched: list[Watched], nsjail: None, sig: int
) -> None:
    """A killed ``sandbox exec`` left nsjail and the snippet running until the snippet's timeout."""
    w = Watched(
        [str(BIN / "simpletir"), "sandbox", "exec", "-", "--timeout", "60", "-o", "workers=1"],
        tmp_path,
        stdin=SLEEPER,
    )
    watched.append(w)
    w.wait_for("snippet", lambda: "sbx-run" in _comms(w))  # the jail's child running the code
    time.sleep(0.5)
    w.stop(sig)
    if sig == signal.SIGTERM:
        assert w.proc.returncode == 143
        assert w.stderr().strip() == "simpletir sandbox: stopped by SIGTERM"
    else:
        assert w.proc.returncode == -signal.SIGKILL


# -- the reaper -------------------------------------------------------------------------------
PARENT = """
import os, signal, subprocess, sys, time
sys.path.insert(0, {root!r})
from simpletir.core import reaper
reaper.start(interval=0.1, grace=1.0)
# a child that ignores SIGTERM (it needs the SIGKILL), with a grandchild of its own
child = subprocess.Popen([sys.executable, "-c",
    "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"])
print(child.pid, flush=True)
time.sleep(60)
"""


def test_reaper_stops_what_a_killed_process_left(tmp_path: Path) -> None:
    root = str(Path(__file__).resolve().parents[1])
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT.format(root=root)], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        deadline = time.monotonic() + 30
        while len(reaper.descendants(child, reaper.proc_table())) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)  # one reaper tick after the grandchild started
        family = reaper.descendants(parent.pid, reaper.proc_table())
        assert child in family and len(family) == 3  # the reaper, the child, the grandchild
        parent.kill()
        parent.wait()
        sent = time.monotonic()
        while any(reaper.start_time(pid) == born for pid, born in family.items()):
            assert time.monotonic() - sent < 5.0, [p for p, b in family.items() if reaper.start_time(p) == b]
            time.sleep(0.05)
    finally:
        parent.kill()
        parent.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)  # the child and grandchild, if still there


def test_a_stopped_reaper_leaves_processes_alone() -> None:
    watcher = reaper.start(interval=0.05, grace=0.5)
    assert watcher is not None
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.3)
        watcher.stop()
        assert watcher.proc.returncode == 0
        time.sleep(0.3)
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


# -- signals turned into exceptions -----------------------------------------------------------
SIGNALLED = """
import asyncio, json, os, signal, sys, time
from simpletir.core.lifecycle import Terminated, exit_status, process_lifecycle
out = {}
try:  # a plain wait
    with process_lifecycle():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
except KeyboardInterrupt as exc:
    out["sync"] = [type(exc).__name__, *exit_status(exc)]
cleaned = []
async def work():
    try:
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.sleep(5)
    finally:
        cleaned.append(True)
try:  # inside asyncio.run: raised out of the loop, the task's finally runs
    with process_lifecycle():
        asyncio.run(work())
except KeyboardInterrupt as exc:
    out["async"] = [type(exc).__name__, *exit_status(exc), cleaned == [True]]
async def busy():
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(4)  # a long synchronous step: the loop cannot raise between steps
    await asyncio.sleep(5)
started = time.monotonic()
try:
    with process_lifecycle():
        asyncio.run(busy())
except Terminated as exc:
    out["busy_s"] = time.monotonic() - started
out["handler_restored"] = signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
print(json.dumps(out))
"""


def test_signals_become_exceptions_that_run_the_cleanup() -> None:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SIGNALLED)],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["sync"] == ["Terminated", 143, "stopped by SIGTERM"]
    assert out["async"] == ["KeyboardInterrupt", 130, "interrupted", True]
    assert out["busy_s"] < 3.5  # raised inside the synchronous step after ~2 s
    assert out["handler_restored"]


# -- vLLM's logging ---------------------------------------------------------------------------
def test_vllm_logging_goes_to_the_run_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    import logging

    from simpletir.core.loggers import vllm_logging, vllm_logging_config

    monkeypatch.delenv("VLLM_LOGGING_CONFIG_PATH", raising=False)
    monkeypatch.delenv("VLLM_CONFIGURE_LOGGING", raising=False)
    log_file = tmp_path / "run.log"
    logger = logging.getLogger("vllm.some.module")
    with vllm_logging(log_file):
        path = os.environ["VLLM_LOGGING_CONFIG_PATH"]  # what vLLM's engine processes read
        config = json.loads(Path(path).read_text())
        assert config == vllm_logging_config(log_file)
        assert config["disable_existing_loggers"] is False
        logger.info("engine chatter")
        logger.error("engine failure")
    assert "VLLM_LOGGING_CONFIG_PATH" not in os.environ and not Path(path).exists()
    logger.info("after the run")  # not in the run log any more
    text = log_file.read_text()
    assert "engine chatter" in text and "engine failure" in text and "after the run" not in text
    err = capfd.readouterr().err
    assert "engine failure" in err and "engine chatter" not in err

    with vllm_logging(log_file, verbose=True):
        logger.info("verbose chatter")
    assert "verbose chatter" in capfd.readouterr().err


def test_a_users_vllm_logging_config_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from simpletir.core.loggers import vllm_logging

    monkeypatch.setenv("VLLM_LOGGING_CONFIG_PATH", "/my/config.json")
    with vllm_logging(tmp_path / "run.log"):
        assert os.environ["VLLM_LOGGING_CONFIG_PATH"] == "/my/config.json"
    assert os.environ["VLLM_LOGGING_CONFIG_PATH"] == "/my/config.json"


def test_verbose_flag_reaches_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from simpletir import cli
    from simpletir.core import run as run_module

    seen: list[bool] = []

    def fake_run(config: object, pm: object, *, verbose: bool = False) -> dict[str, object]:
        seen.append(verbose)
        return {}

    monkeypatch.setattr(run_module, "run_experiment", fake_run)
    no_tools = ["tool_use=false", "valid_dataset=arith", "val_only=true"]
    assert cli.main(["run", "quickstart_cpu", "--verbose", *no_tools]) == 0
    assert cli.main(["run", "quickstart_cpu", *no_tools]) == 0
    assert seen == [True, False]
