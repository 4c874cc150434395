"""Hostile snippets: each must be contained and reported, the pool must keep serving, and no
process of the run may survive it (checked in the host's process table)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sandbox_helpers import (
    LIGHT,
    LoopRunner,
    assert_only_idle_workers,
    jail_processes,
    processes,
    start_pool,
    still_alive,
)

from simpletir.core.types import ToolResult
from simpletir.plugins.tools.python_sandbox.pool import SandboxPool

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runner() -> Iterator[LoopRunner]:
    r = LoopRunner()
    yield r
    r.close()


@pytest.fixture(scope="module")
def pool(runner: LoopRunner) -> Iterator[SandboxPool]:
    p = start_pool(runner, workers=1, timeout_s=1.5, max_output_bytes=4 * 1024 * 1024, **LIGHT)
    yield p
    pids = [proc.pid for proc in jail_processes(p)]
    runner.run(p.aclose())
    assert pids and still_alive(pids) == [], "processes of the jails outlived aclose()"


def run(runner: LoopRunner, pool: SandboxPool, code: str, **kw: float) -> ToolResult:
    result = runner.run(pool.execute(code, **kw))
    # After every hostile snippet: the pool still serves and nothing of the run is left.
    follow = runner.run(pool.execute("print(6*7)"))
    assert follow.stdout == "42\n" and follow.ok, follow
    assert_only_idle_workers(pool)
    return result


def test_infinite_loop_times_out(runner: LoopRunner, pool: SandboxPool) -> None:
    r = run(runner, pool, "print('start', flush=True)\nwhile True:\n    pass")
    assert r.timed_out and r.killed_by == "timeout" and r.stdout == "start\n"
    assert 1400 <= r.duration_ms < 3000


def test_sleep_times_out_with_per_call_timeout(runner: LoopRunner, pool: SandboxPool) -> None:
    r = run(runner, pool, "import time\ntime.sleep(60)", timeout_s=0.3)
    assert r.timed_out and r.duration_ms < 1500


def test_signal_ignoring_process(runner: LoopRunner, pool: SandboxPool) -> None:
    code = (
        "import signal, os\n"
        "for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU):\n"
        "    signal.signal(s, signal.SIG_IGN)\n"
        "while True: pass"
    )
    assert run(runner, pool, code).timed_out


def test_fork_bomb(runner: LoopRunner, pool: SandboxPool) -> None:
    code = (
        "import os\n"
        "n = 0\n"
        "try:\n"
        "    while True:\n"
        "        if os.fork() == 0:\n"
        "            import time; time.sleep(100)\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    print('stopped after', n, type(e).__name__)\n"
    )
    r = run(runner, pool, code)
    assert "stopped after" in r.stdout, r
    assert int(r.stdout.split()[2]) < 64  # max_processes=32 per jail


def test_thread_bomb(runner: LoopRunner, pool: SandboxPool) -> None:
    code = (
        "import threading, time\n"
        "ts = []\n"
        "try:\n"
        "    for _ in range(10000):\n"
        "        t = threading.Thread(target=time.sleep, args=(100,), daemon=True); t.start(); ts.append(t)\n"
        "except RuntimeError as e:\n"
        "    print('threads', len(ts), e, flush=True)\n"
        "import os; os._exit(0)\n"
    )
    r = run(runner, pool, code)
    assert "threads" in r.stdout and int(r.stdout.split()[1]) < 64, r


def test_fd_bomb(runner: LoopRunner, pool: SandboxPool) -> None:
    code = "fs = []\ntry:\n    while True: fs.append(open('/dev/null'))\nexcept OSError:\n    print(len(fs))"
    r = run(runner, pool, code)
    assert r.ok and int(r.stdout.split()[0]) < 64, r


def test_memory_bomb(runner: LoopRunner, pool: SandboxPool) -> None:
    r = run(runner, pool, "x = bytearray(4 * 1024**3)")
    assert r.killed_by == "memory" and "MemoryError" in r.stderr, r
    # Zero-filling ~1 GiB takes a while on loaded cores: give it time to hit the limit.
    r = run(runner, pool, "xs = []\nwhile True: xs.append(bytearray(50 * 1024**2))", timeout_s=15.0)
    assert r.killed_by == "memory", r


def test_200mb_of_output(runner: LoopRunner, pool: SandboxPool) -> None:
    r = run(
        runner, pool, "import sys\nchunk = 'y' * 1024 * 1024\nfor _ in range(200): sys.stdout.write(chunk)"
    )
    assert r.killed_by == "output_limit" and r.truncated
    assert len(r.stdout) < 200_000 and r.stdout.startswith("yyyy")


def test_binary_output(runner: LoopRunner, pool: SandboxPool) -> None:
    r = run(
        runner,
        pool,
        "import sys, os\nos.write(1, bytes(range(256)) * 4)\nsys.stderr.buffer.write(b'\\xff\\xfe\\x00')",
    )
    assert r.ok and "\\x00" in r.stdout and "\\xff" in r.stdout and "\\xff" in r.stderr
    assert "\x00" not in r.stdout + r.stderr


def test_disk_filling(runner: LoopRunner, pool: SandboxPool) -> None:
    code = (
        "import os\n"
        "try:\n"
        "    with open('/tmp/big', 'wb') as f:\n"
        "        for _ in range(1000): f.write(b'z' * 1024 * 1024)\n"
        "except OSError as e:\n"
        "    print('stopped', e.errno)\n"
    )
    r = run(runner, pool, code)
    # RLIMIT_FSIZE (16 MiB) ends it with SIGXFSZ, or the 32 MiB tmpfs with ENOSPC.
    assert r.exit_code == -25 or "stopped" in r.stdout, r
    gone = runner.run(pool.execute("import os; print(os.listdir('/tmp'))"))
    assert gone.stdout == "[]\n"
    for target in ("/big", "/usr/big", "/opt/simpletir/site/x"):
        r = run(runner, pool, f"open({target!r}, 'w')")
        assert r.exit_code == 1 and ("Read-only" in r.stderr or "Permission" in r.stderr), r


def test_segfault(runner: LoopRunner, pool: SandboxPool) -> None:
    r = run(runner, pool, "import ctypes\nctypes.string_at(0)")
    assert r.exit_code == -11 and r.killed_by == "signal", r


def test_escaped_daemon_is_killed(runner: LoopRunner, pool: SandboxPool) -> None:
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        for fd in (0, 1, 2): os.close(fd)\n"
        "        time.sleep(1000)\n"
        "    os._exit(0)\n"
        "time.sleep(0.2)\n"
        "print('parent done')\n"
    )
    r = run(runner, pool, code)  # run() checks that the daemon is gone from the process table
    assert r.stdout == "parent done\n"


def test_network_is_unreachable(runner: LoopRunner, pool: SandboxPool) -> None:
    code = (
        "import socket\n"
        "for host in ('1.1.1.1', '127.0.0.1'):\n"
        "    try:\n"
        "        socket.create_connection((host, 80), timeout=1); print('connected', host)\n"
        "    except OSError as e:\n"
        "        print('blocked', host, e.errno)\n"
        "try:\n"
        "    socket.getaddrinfo('example.com', 80); print('resolved')\n"
        "except OSError as e:\n"
        "    print('no dns')\n"
    )
    r = run(runner, pool, code)
    assert "connected" not in r.stdout and "resolved" not in r.stdout, r
    assert r.stdout.count("blocked") == 2


@pytest.mark.parametrize(
    "path", ["/etc/shadow", "/etc/passwd", "/root", str(REPO / "pyproject.toml"), "/proc/1/environ"]
)
def test_host_files_are_out_of_reach(runner: LoopRunner, pool: SandboxPool, path: str) -> None:
    code = (
        "import os\n"
        f"p = {path!r}\n"
        "try:\n"
        "    print('LISTED', os.listdir(p)) if os.path.isdir(p) else print('READ', open(p).read()[:50])\n"
        "except OSError as e:\n"
        "    print('denied', type(e).__name__)\n"
    )
    r = run(runner, pool, code)
    assert "denied" in r.stdout, r


def test_killing_the_parent_fails(runner: LoopRunner, pool: SandboxPool) -> None:
    code = (
        "import os, signal\n"
        "for pid in (os.getppid(), 1):\n"
        "    for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGSTOP, signal.SIGINT):\n"
        "        try: os.kill(pid, sig)\n"
        "        except OSError as e: print('err', e)\n"
        "try: os.kill(-1, signal.SIGKILL)\n"
        "except OSError as e: print('err', e)\n"
        "print('still here')\n"
    )
    r = run(runner, pool, code)  # run() checks that the server survived and still serves
    assert r.stdout.endswith("still here\n"), r


def test_ptrace_and_proc_mem_of_the_server_fail(runner: LoopRunner, pool: SandboxPool) -> None:
    code = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print('ptrace', libc.ptrace(16, 1, 0, 0), ctypes.get_errno())\n"
        "try:\n"
        "    open('/proc/1/mem', 'rb'); print('mem opened')\n"
        "except OSError as e:\n"
        "    print('mem denied')\n"
    )
    r = run(runner, pool, code)
    assert "ptrace -1" in r.stdout and "mem denied" in r.stdout, r


def test_state_does_not_leak_between_snippets(runner: LoopRunner, pool: SandboxPool) -> None:
    run(
        runner,
        pool,
        "import math, builtins\nmath.pi = 3\nbuiltins.LEAK = 1\nopen('/tmp/note', 'w').write('x')",
    )
    r = run(
        runner, pool, "import math, os\nprint(math.pi, hasattr(__builtins__, 'LEAK'), os.listdir('/tmp'))"
    )
    assert r.stdout == "3.141592653589793 False []\n", r


def test_cpu_limit_below_the_timeout(runner: LoopRunner) -> None:
    cpu_pool = start_pool(runner, workers=1, timeout_s=10.0, cpu_s=1, **LIGHT)
    try:
        r = run(runner, cpu_pool, "while True: pass")
        assert r.killed_by == "cpu" and not r.timed_out and r.duration_ms < 5000, r
    finally:
        runner.run(cpu_pool.aclose())


@pytest.mark.skipif(os.geteuid() != 0, reason="checks host uid mapping as root")
def test_jail_runs_as_its_own_unprivileged_uid(runner: LoopRunner, pool: SandboxPool) -> None:
    r = run(runner, pool, "import os; print(os.getuid(), os.getpid() > 1)")
    assert r.stdout == "65534 True\n"
    assert all(uid >= 1000 for uid in pool.worker_uids)
    # Everything running under the jail's host uid is the jail's own server and spare.
    assert sorted(p.name for p in processes(set(pool.worker_uids))) == ["sbx-server", "sbx-spare"]


def test_mixed_hostile_and_benign_burst_never_deadlocks(runner: LoopRunner) -> None:
    burst = start_pool(runner, workers=2, timeout_s=1.0, **LIGHT)
    hostile = [
        "while True: pass",
        "import os\nwhile True:\n    try: os.fork()\n    except OSError: pass",
        "import os, time\nif os.fork() == 0:\n    os.setsid(); time.sleep(100)\nprint('left a daemon')",
        "import sys\nwhile True: sys.stdout.write('z' * 65536)",
        "import ctypes\nctypes.string_at(0)",
    ]
    codes = [hostile[i % len(hostile)] if i % 3 == 0 else f"print({i} * 2)" for i in range(40)]
    try:

        async def all_of_them() -> list[ToolResult]:
            # Hostile ones get 1 s; benign ones more, since CPU is shared between jails (a
            # sibling's fork bomb may starve them for a while on loaded cores).
            return list(
                await asyncio.gather(
                    *(burst.execute(c, timeout_s=10.0 if c.startswith("print(") else 1.0) for c in codes)
                )
            )

        results = runner.run(all_of_them(), timeout=120)
        for i, (code, r) in enumerate(zip(codes, results, strict=True)):
            if code.startswith("print("):
                assert r.stdout == f"{i * 2}\n", (i, r)
        assert_only_idle_workers(burst)
    finally:
        runner.run(burst.aclose())


def test_sysv_and_posix_ipc_do_not_cross_snippets(runner: LoopRunner, pool: SandboxPool) -> None:
    # SysV segments and message queues outlive their creator inside the jail's IPC namespace.
    code = (
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print(libc.shmget(0x5eed, 4096, 0o1666), libc.msgget(0x5eed, 0o1666),\n"
        "      libc.semget(0x5eed, 1, 0o1666), libc.mq_open(b'/leak', 0o100 | 2, 0o666, None))\n"
    )
    r = run(runner, pool, code)
    assert r.stdout == "-1 -1 -1 -1\n", r
    r = run(runner, pool, "print(open('/proc/sysvipc/shm').read().count('\\n'))")
    assert r.stdout == "1\n", r  # the header line only


SCAN_OWN_MEMORY = (
    "import ctypes\n"
    "needle = {needle}\n"
    "hits = 0\n"
    "for line in open('/proc/self/maps').read().splitlines():\n"
    "    f = line.split()\n"
    "    if not f[1].startswith('r') or (len(f) > 5 and f[5].startswith(('/', '[v'))):\n"
    "        continue\n"
    "    a, b = (int(x, 16) for x in f[0].split('-'))\n"
    "    hits += ctypes.string_at(a, b - a).count(needle)\n"
    "print(hits)\n"
)


def test_previous_snippets_code_and_output_are_not_in_the_next_ones_memory(
    runner: LoopRunner, pool: SandboxPool
) -> None:
    # The next child is forked from the server: whatever the server held (the last request,
    # the last output) must not be readable in its heap. The needle exists once in the scanner.
    for needle, snippet in (
        ("b'Q7ZX' * 40", "print('Q7ZX' * 40)"),
        ("b'K9W-' * 40", "s = '" + "K9W-" * 40 + "'"),
        ("b'E3R-' * 40", "import sys; sys.stderr.write('E3R-' * 40)"),
    ):
        scan = SCAN_OWN_MEMORY.format(needle=needle)
        before = runner.run(pool.execute(scan))
        runner.run(pool.execute(snippet))
        after = runner.run(pool.execute(scan))
        assert before.ok and after.stdout == before.stdout, (snippet, before, after)


def test_new_namespaces_cannot_be_created_with_clone(runner: LoopRunner, pool: SandboxPool) -> None:
    # unshare/setns are denied; clone(CLONE_NEWUSER | ...) and clone3 must not be a way around.
    code = (
        "import ctypes, os, threading\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "for flag in (0x10000000, 0x30000000, 0x40000000, 0x00020000):\n"
        "    pid = libc.syscall(56, flag | 17, 0, 0, 0, 0)\n"
        "    if pid == 0:\n"
        "        os._exit(0)\n"
        "    print(pid, ctypes.get_errno())\n"
        "    if pid > 0: os.waitpid(pid, 0)\n"
        "args = (ctypes.c_uint64 * 11)(0x10000000, 0, 0, 0, 17)\n"
        "print('clone3', libc.syscall(435, args, 88), ctypes.get_errno())\n"
        "t = threading.Thread(target=print, args=('thread ok',)); t.start(); t.join()\n"
        "print('fork ok' if os.fork() or os._exit(0) else '')\n"
    )
    r = run(runner, pool, code)
    assert r.stdout == "-1 1\n" * 4 + "clone3 -1 38\nthread ok\nfork ok\n", r


def test_the_server_s_limits_and_scheduling_cannot_be_changed(runner: LoopRunner, pool: SandboxPool) -> None:
    # The server (same uid) forks every later snippet: changing its rlimits, CPU affinity or
    # scheduling would carry over to them (sabotage, or a channel from one snippet to the next).
    check = (
        "import os, resource\n"
        "limits = (resource.RLIMIT_AS, resource.RLIMIT_NOFILE, resource.RLIMIT_NPROC)\n"
        "print(os.sched_getaffinity(0), os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0),\n"
        "      [resource.getrlimit(r) for r in limits])\n"
    )
    before = run(runner, pool, check)
    attack = (
        "import os, resource\n"
        "for pid in (1, os.getppid()):\n"
        "    for f in (lambda: os.sched_setaffinity(pid, {0}),\n"
        "              lambda: os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0)),\n"
        "              lambda: os.sched_setparam(pid, os.sched_param(0)),\n"
        "              lambda: resource.prlimit(pid, resource.RLIMIT_NOFILE, (20, 20)),\n"
        "              lambda: resource.prlimit(pid, resource.RLIMIT_AS, (300 << 20, 300 << 20)),\n"
        "              lambda: os.setpriority(os.PRIO_USER, 0, 19)):\n"
        "        try: f(); print('changed')\n"
        "        except OSError: pass\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (30, 30))  # its own limits: still allowed\n"
        "os.sched_setaffinity(0, {0})\n"
        "print('done')\n"
    )
    r = run(runner, pool, attack)
    assert r.stdout == "done\n", r
    after = run(runner, pool, check)
    assert after.stdout == before.stdout, (before, after)


def test_scratch_folders_come_back_pristine(runner: LoopRunner, pool: SandboxPool) -> None:
    # Whatever a snippet does to /tmp and /dev/shm (a tree deeper than the fd limit, folders it
    # locked, the folders' own mode, times and xattrs) must not reach the next snippet.
    check = (
        "import os\n"
        "for d in ('/tmp', '/dev/shm'):\n"
        "    st = os.stat(d)\n"
        "    open(d + '/probe', 'w').close()\n"
        "    print(d, sorted(os.listdir(d)), oct(st.st_mode), st.st_mtime == 12345, os.listxattr(d))\n"
    )
    before = run(runner, pool, check)
    attack = (
        "import os\n"
        "for d in ('/tmp', '/dev/shm'):\n"
        "    os.chdir(d)\n"
        "    for i in range(300):\n"
        "        os.mkdir('d'); os.chdir('d')\n"
        "        if i == 150:\n"
        "            os.mkdir('locked'); open('locked/secret', 'w').write('s'); os.chmod('locked', 0)\n"
        "    open('secret', 'w').write('s')\n"
        "    try: os.setxattr(d, 'user.leak', b'1')\n"
        "    except OSError: pass\n"
        "    os.utime(d, (12345, 12345))\n"
        "    os.chmod(d, 0o500)\n"
        "print('planted')\n"
    )
    assert run(runner, pool, attack).stdout == "planted\n"
    after = run(runner, pool, check)
    assert after.ok and after.stdout == before.stdout, (before, after)


def test_io_uring_is_denied(runner: LoopRunner, pool: SandboxPool) -> None:
    # A large kernel attack surface that math code never needs (blocked by Docker's default too).
    code = (
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "params = ctypes.create_string_buffer(120)\n"
        "print(libc.syscall(425, 4, params), ctypes.get_errno())\n"
    )
    assert run(runner, pool, code).stdout == "-1 1\n"
