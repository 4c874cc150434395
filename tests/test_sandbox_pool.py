"""The warm pool's behaviour: results, isolation, concurrency, cancellation, worker replacement,
backends, the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from sandbox_helpers import (
    LIGHT,
    LoopRunner,
    assert_only_idle_workers,
    jail_processes,
    start_pool,
    still_alive,
)

from simpletir.core.errors import SandboxUnavailableError
from simpletir.core.types import ToolCall
from simpletir.plugins.tools.python_sandbox import PythonTool, SandboxConfig
from simpletir.plugins.tools.python_sandbox.pool import SandboxPool


@pytest.fixture(scope="module")
def runner() -> Iterator[LoopRunner]:
    r = LoopRunner()
    yield r
    r.close()


@pytest.fixture(scope="module")
def pool(runner: LoopRunner) -> Iterator[SandboxPool]:
    """The default configuration: numpy and sympy preloaded, two workers."""
    p = start_pool(runner, workers=2)
    yield p
    runner.run(p.aclose())


def ex(runner: LoopRunner, pool: SandboxPool, code: str, **kw: float):  # type: ignore[no-untyped-def]
    return runner.run(pool.execute(code, **kw))


def test_results_and_exit_codes(runner: LoopRunner, pool: SandboxPool) -> None:
    r = ex(runner, pool, "print(1+1)")
    assert (r.stdout, r.stderr, r.exit_code, r.timed_out, r.killed_by, r.truncated) == (
        "2\n",
        "",
        0,
        False,
        None,
        False,
    )
    assert r.ok and 0 < r.duration_ms < 1000
    assert ex(runner, pool, "import sys; sys.exit(3)").exit_code == 3
    r = ex(runner, pool, "import sys; sys.exit('bye')")
    assert r.exit_code == 1 and r.stderr == "bye\n"
    r = ex(runner, pool, "x = 1\ny = x / 0")
    assert r.exit_code == 1 and r.stderr.splitlines()[-1] == "ZeroDivisionError: division by zero"
    assert 'File "<snippet>", line 2' in r.stderr and "y = x / 0" in r.stderr
    r = ex(runner, pool, "def f(:\n  pass")
    assert r.exit_code == 1 and "SyntaxError" in r.stderr
    r = ex(runner, pool, "print(input())")
    assert r.exit_code == 1 and "EOFError" in r.stderr  # stdin is empty, never the protocol
    assert ex(runner, pool, "if __name__ == '__main__':\n    print('main')").stdout == "main\n"


def test_final_answer_helper(runner: LoopRunner, pool: SandboxPool) -> None:
    r = ex(runner, pool, "import sympy as sp\nfinal_answer(sp.Rational(1, 3) + 1)")
    assert r.stdout == "\\boxed{4/3}\n"
    assert ex(runner, pool, "def g():\n    final_answer(42)\ng()").stdout == "\\boxed{42}\n"


def test_preloaded_packages_are_fast_and_usable(runner: LoopRunner, pool: SandboxPool) -> None:
    r = ex(
        runner,
        pool,
        "import numpy as np, sympy as sp, mpmath\n"
        "x = sp.symbols('x')\nprint(sp.solve(x**2 - 4, x), np.arange(4).sum())",
    )
    assert r.stdout == "[-2, 2] 6\n", r
    assert r.duration_ms < 300  # importing sympy cold takes well over a second here


def test_snippets_without_heavy_modules_run_on_light_workers(runner: LoopRunner, pool: SandboxPool) -> None:
    # The probe spells the names in pieces so that it does not itself name a heavy module.
    probe = "import sys\nprint(sorted(m for m in ('num' + 'py', 'sym' + 'py') if m in sys.modules))"
    assert pool.route("print(1)") == "light" and pool.route("import numpy") == "full"
    assert ex(runner, pool, probe).stdout == "[]\n"  # light worker: nothing heavy loaded
    r = ex(runner, pool, probe + "\n# sympy")  # naming sympy routes to a full worker
    assert r.stdout == "['numpy', 'sympy']\n"
    r = ex(runner, pool, "mod = __import__('sym' + 'py')\nprint(mod.Integer(2) + 1)", timeout_s=30)
    assert r.stdout == "3\n"  # a hidden import still works on a light worker, only slower


def test_random_state_differs_between_snippets(runner: LoopRunner, pool: SandboxPool) -> None:
    code = "import random, numpy as np\nprint(random.random(), np.random.rand())"
    outs = {ex(runner, pool, code).stdout for _ in range(4)}
    assert len(outs) == 4


def test_run_many_yields_every_index_once(runner: LoopRunner, pool: SandboxPool) -> None:
    tool = PythonTool(pool.cfg)
    tool.pool = pool
    calls = [
        ToolCall("python", f"import time\ntime.sleep({(7 - i % 7) * 0.01})\nprint({i})") for i in range(20)
    ]

    async def collect() -> list[tuple[int, str]]:
        return [(i, r.stdout) async for i, r in tool.run_many(calls)]

    got = runner.run(collect())
    assert sorted(got) == [(i, f"{i}\n") for i in range(20)]
    assert [i for i, _ in got] != list(range(20))  # they came back as they finished


def test_concurrent_calls_beyond_the_queue_bound(runner: LoopRunner) -> None:
    small = start_pool(runner, workers=1, max_queue=2, **LIGHT)
    try:

        async def many():  # type: ignore[no-untyped-def]
            return await asyncio.gather(*(small.execute(f"print({i})") for i in range(30)))

        results = runner.run(many())
        assert [r.stdout for r in results] == [f"{i}\n" for i in range(30)]
    finally:
        runner.run(small.aclose())


def test_cancellation_replaces_the_worker(runner: LoopRunner) -> None:
    p = start_pool(runner, workers=1, **LIGHT)
    try:

        async def cancel_one() -> None:
            task = asyncio.ensure_future(p.execute("import time\ntime.sleep(30)"))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        runner.run(cancel_one())
        assert p.replaced == 1
        assert ex(runner, p, "print('after')").stdout == "after\n"
        assert_only_idle_workers(p)
    finally:
        runner.run(p.aclose())


def test_wedged_worker_is_killed_and_replaced(runner: LoopRunner) -> None:
    p = start_pool(runner, workers=1, host_grace_s=0.5, **LIGHT)
    try:
        (worker,) = p._workers
        old_pids = [proc.pid for proc in jail_processes(p)]
        os.kill(worker.jail_pids[0], signal.SIGSTOP)  # the host can stop the jail's PID 1
        r = ex(runner, p, "print(1)", timeout_s=0.5)
        assert r.timed_out and "did not answer" in r.stderr, r
        assert ex(runner, p, "print('fresh')").stdout == "fresh\n"
        assert p.replaced == 1 and still_alive(old_pids) == []
    finally:
        runner.run(p.aclose())


def test_dead_worker_is_reported_and_replaced(runner: LoopRunner) -> None:
    p = start_pool(runner, workers=1, **LIGHT)
    try:
        (worker,) = p._workers
        os.kill(worker.jail_pids[0], signal.SIGKILL)
        r = ex(runner, p, "print(1)")
        assert r.exit_code is None and r.killed_by == "signal" and "died" in r.stderr, r
        assert ex(runner, p, "print('fresh')").stdout == "fresh\n"
    finally:
        runner.run(p.aclose())


def test_pool_that_cannot_replace_workers_fails_instead_of_hanging(runner: LoopRunner) -> None:
    p = start_pool(runner, workers=1, **LIGHT)
    try:
        (worker,) = p._workers
        p._nsjail = "/bin/false"  # every replacement will fail to start
        os.kill(worker.jail_pids[0], signal.SIGKILL)
        assert ex(runner, p, "print(1)").killed_by == "signal"
        with pytest.raises(SandboxUnavailableError, match="cannot be replaced"):
            ex(runner, p, "print(2)")
    finally:
        runner.run(p.aclose())


def test_aclose_is_idempotent_and_leaves_nothing(runner: LoopRunner) -> None:
    p = start_pool(runner, workers=2, **LIGHT)
    assert_only_idle_workers(p)  # a fresh spare names itself a moment after its fork
    procs = jail_processes(p)
    assert sorted(proc.name for proc in procs) == ["sbx-server"] * 2 + ["sbx-spare"] * 2
    runner.run(p.aclose())
    runner.run(p.aclose())
    assert still_alive([proc.pid for proc in procs]) == []
    with pytest.raises(RuntimeError, match="closed"):
        ex(runner, p, "print(1)")


def test_pool_follows_a_new_event_loop() -> None:
    p = SandboxPool(SandboxConfig(workers=1, **LIGHT))  # type: ignore[arg-type]
    try:
        assert asyncio.run(p.execute("print(1)")).stdout == "1\n"
        assert asyncio.run(p.execute("print(2)")).stdout == "2\n"
    except SandboxUnavailableError as exc:
        pytest.skip(str(exc))
    finally:
        asyncio.run(p.aclose())


def test_missing_nsjail_is_a_clear_error() -> None:
    p = SandboxPool(SandboxConfig(workers=1, nsjail_path="/nonexistent/nsjail"))
    with pytest.raises(SandboxUnavailableError, match="nsjail_path='/nonexistent/nsjail'"):
        asyncio.run(p.execute("print(1)"))
    p = SandboxPool(SandboxConfig(workers=1, nsjail_path="/bin/false", **LIGHT))  # type: ignore[arg-type]
    with pytest.raises(SandboxUnavailableError, match="Fix:"):
        asyncio.run(p.execute("print(1)"))


def test_unsafe_local_backend_warns_loudly() -> None:
    p = SandboxPool(SandboxConfig(workers=1, backend="unsafe_local", **LIGHT))  # type: ignore[arg-type]

    async def go() -> str:
        try:
            return (await p.execute("import os\nopen('f', 'w').write('x')\nprint(os.listdir('.'))")).stdout
        finally:
            await p.aclose()

    with pytest.warns(RuntimeWarning, match="WITHOUT ANY ISOLATION"):
        assert asyncio.run(go()) == "['f']\n"


def test_cli_exec_prints_one_json_object() -> None:
    cmd = [
        sys.executable,
        "-m",
        "simpletir.plugins.tools.python_sandbox.cli",
        "exec",
        "-",
        "-o",
        "preload=[]",
    ]
    out = subprocess.run(
        cmd, input="print('hi')\nraise SystemExit(4)", capture_output=True, text=True, timeout=60
    )
    if out.returncode == 2 and "sandbox" in out.stderr:
        pytest.skip(out.stderr)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert set(data) == {
        "stdout",
        "stderr",
        "exit_code",
        "timed_out",
        "killed_by",
        "duration_ms",
        "truncated",
        "error",  # the tool's own failure (Tool v1); None for the sandbox's results
    }
    assert data["stdout"] == "hi\n" and data["exit_code"] == 4 and data["error"] is None
    bad = subprocess.run([*cmd, "-o", "workers=zero"], input="", capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "plugin_config.python.workers='zero'" in bad.stderr


def test_closing_run_many_early_cancels_the_rest(runner: LoopRunner) -> None:
    p = start_pool(runner, workers=2, **LIGHT)
    try:
        codes = ["print('quick')"] + ["import time\ntime.sleep(20)"] * 5

        async def first_then_close() -> tuple[int, str]:
            agen = p.execute_many(codes)
            index, result = await agen.__anext__()
            await agen.aclose()
            return index, result.stdout

        assert runner.run(first_then_close()) == (0, "quick\n")
        assert p.replaced >= 1  # the sleepers were cancelled and their workers replaced
        assert ex(runner, p, "print('served')").stdout == "served\n"
        assert_only_idle_workers(p)
    finally:
        runner.run(p.aclose())


@pytest.mark.slow
def test_bench_quick_runs_all_three_side_by_side(capsys: pytest.CaptureFixture[str]) -> None:
    from simpletir.plugins.tools.python_sandbox.cli import main

    if main(["bench", "--quick", "-o", "light_workers=1", "-o", "workers=1"]) == 2:
        pytest.skip(capsys.readouterr().err)
    out = capsys.readouterr().out
    for row in ("bare python3 -c", "cold nsjail", "warm pool (1 full + 1 light workers)", "targets:"):
        assert row in out, out


def test_cache_folder_writable_by_others_is_refused(tmp_path: os.PathLike[str]) -> None:
    cache = os.path.join(tmp_path, "cache")
    os.mkdir(cache)
    os.chmod(cache, 0o777)  # anyone could have planted packages or a worker here
    p = SandboxPool(SandboxConfig(workers=1, cache_dir=cache, **LIGHT))  # type: ignore[arg-type]
    with pytest.raises(SandboxUnavailableError, match="writable by others"):
        asyncio.run(p.execute("print(1)"))


def test_code_is_passed_verbatim_whatever_its_size_or_characters(runner: LoopRunner) -> None:
    p = start_pool(runner, workers=1, capture_bytes=100, max_output_bytes=10_000, **LIGHT)
    try:
        big = "x = 1\n" * 40_000 + "print(len(open('/dev/null').name), 'ünï', '\\u2603')"  # > a pipe
        assert ex(runner, p, big).stdout == "9 ünï ☃\n"
        assert (
            ex(runner, p, "print('\\ud800'.encode('utf-8', 'surrogatepass'))").stdout
            == "b'\\xed\\xa0\\x80'\n"
        )
        # The tail ring keeps exactly the last capture_bytes, across many small writes.
        r = ex(runner, p, "import sys\nfor i in range(1000): sys.stdout.write(f'{i:04d}')")
        assert r.stdout.startswith("0000000100020003") and r.stdout.endswith("09970998" + "0999")
        head, _, tail = r.stdout.partition("\n... [")
        assert len(head) == 100 and len(tail.split("] ...\n")[1]) == 100 and r.truncated
        r = ex(runner, p, "import sys\nsys.stderr.write('a' * 150 + 'MemoryError')\nsys.exit(1)")
        assert r.killed_by == "memory" and r.stderr.endswith("aMemoryError"), r
    finally:
        runner.run(p.aclose())


def test_pool_refuses_a_second_running_event_loop() -> None:
    import threading

    p = SandboxPool(SandboxConfig(workers=1, **LIGHT))  # type: ignore[arg-type]
    first: list[object] = []
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(p.start())
    except SandboxUnavailableError as exc:
        loop.close()
        pytest.skip(str(exc))
    thread = threading.Thread(
        target=lambda: first.append(
            loop.run_until_complete(p.execute("import time; time.sleep(1); print('a')"))
        )
    )
    thread.start()
    try:
        import time

        time.sleep(0.3)
        with pytest.raises(RuntimeError, match="another running event loop"):
            asyncio.run(p.execute("print('b')"))
    finally:
        thread.join()
        loop.run_until_complete(p.aclose())
        loop.close()
    assert first and first[0].stdout == "a\n", first  # type: ignore[attr-defined]


def test_cli_exec_of_a_file_that_is_not_utf8_still_prints_json(
    tmp_path: os.PathLike[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from simpletir.plugins.tools.python_sandbox.cli import main

    path = os.path.join(tmp_path, "bad.py")
    with open(path, "wb") as fh:
        fh.write(b"print(1)\ns = '\xff\xfe'\n")
    if main(["exec", path, "-o", "preload=[]"]) == 2:
        pytest.skip(capsys.readouterr().err)
    data = json.loads(capsys.readouterr().out)
    assert data["exit_code"] == 1 and "Error" in data["stderr"] and data["stdout"] == "", data


@pytest.mark.parametrize("delay", [0.0, 0.01, 0.03])
def test_aclose_during_start_leaves_nothing(runner: LoopRunner, delay: float) -> None:
    p = SandboxPool(SandboxConfig(workers=2, **LIGHT))  # type: ignore[arg-type]

    async def close_while_starting() -> tuple[bool, BaseException | None]:
        call = asyncio.ensure_future(p.execute("print(1)"))
        await asyncio.sleep(delay)
        finished_first = call.done()  # a quiet machine can start and run it within `delay`
        await p.aclose()
        try:
            await call
        except (RuntimeError, SandboxUnavailableError) as exc:
            return finished_first, exc
        return finished_first, None

    finished_first, error = runner.run(close_while_starting())
    assert finished_first or error is not None, "a call still pending at aclose() ran after it"
    # No worker may be started (or left running) by a start that aclose() interrupted.
    assert not p._workers and not p._pids, (p._workers, p._pids)


def test_extreme_timeouts_neither_leak_a_worker_nor_crash_it(runner: LoopRunner) -> None:
    p = start_pool(runner, workers=1, **LIGHT)
    try:
        for bad in (float("inf"), float("nan"), 0.0):
            with pytest.raises(ValueError, match="timeout_s"):
                runner.run(p.execute("print(1)", timeout_s=bad), timeout=5)
        r = runner.run(p.execute("print(1)", timeout_s=3e9), timeout=5)  # ~95 years: fine
        assert r.stdout == "1\n" and p.replaced == 0, r
    finally:
        runner.run(p.aclose())
