"""Side-by-side speed of bare ``python3 -c``, a cold one-shot nsjail, and the warm pool.

All three run in one process, one after the other, on the same machine state, so their ratios
mean something even when the absolute numbers move with machine load. ``bench/sandbox.py`` and
``simpletir sandbox bench`` both call :func:`run_benchmark`.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .config import SandboxConfig
from .jail import cold_command, next_uid
from .pool import SandboxPool
from .provision import find_nsjail, package_dir

TRIVIAL = "print(1+1)"
# A typical tool call of a math model: symbolic algebra with a printed result.
SYMPY = (
    "import sympy as sp\n"
    "x = sp.symbols('x')\n"
    "print(sp.solve(sp.Eq(x**2 - 5*x + 6, 0), x), sp.factorint(360), sp.Rational(3, 4) + sp.Rational(1, 6))"
)
# A heavier one (factoring, differentiation, a matrix inverse), reported for the pool only.
SYMPY_HEAVIER = (
    "import sympy as sp\n"
    "x = sp.symbols('x')\n"
    "print(sp.factor(x**4 - 1), sp.diff(x**3 * sp.sin(x), x), sp.binomial(10, 3),\n"
    "      sp.Matrix([[1, 2], [3, 4]]).inv())"
)


@dataclass
class Row:
    name: str
    rate: float  # executions per second of TRIVIAL, with `concurrency` in flight
    p50_ms: float  # median latency of one TRIVIAL run, one at a time
    sympy_p50_ms: float | None  # median latency of the SYMPY snippet, one at a time
    extra: dict[str, Any] = field(default_factory=dict)


def _p50(values: list[float]) -> float:
    return statistics.median(values)


def _timed(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000.0)
    return out


def _rate(fn: Callable[[], Any], n: int, concurrency: int) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as ex:
        list(ex.map(lambda _: fn(), range(n)))
    return n / (time.perf_counter() - start)


def _check(cmd: list[str], env: dict[str, str] | None = None) -> Callable[[], None]:
    def run() -> None:
        out = subprocess.run(cmd, capture_output=True, env=env, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {out.stderr.decode(errors='replace')[-500:]}")

    return run


def subprocess_rows(cfg: SandboxConfig, n: int, n_sympy: int, concurrency: int) -> list[Row]:
    """Bare ``python3 -c`` and a cold one-shot jail, each started per snippet."""
    pkg = package_dir(cfg)
    env = {"PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "1"}
    bare = [cfg.python, "-E", "-s", "-B", "-c"]
    rows = []
    bare_trivial = _check([*bare, TRIVIAL], env)
    # -E ignores PYTHONPATH, so the bare sympy run puts the package folder on sys.path itself.
    bare_sympy = _check([*bare, f"import sys; sys.path.insert(0, {pkg!r})\n{SYMPY}"], env)
    rows.append(
        Row(
            "bare python3 -c",
            _rate(bare_trivial, n, concurrency),
            _p50(_timed(bare_trivial, n)),
            _p50(_timed(bare_sympy, n_sympy)),
        )
    )
    nsjail = find_nsjail(cfg)
    uid = next_uid(cfg)
    cold_trivial = _check(cold_command(cfg, nsjail, pkg, uid, TRIVIAL))
    jail_site = "/opt/simpletir/site"
    cold_sympy = _check(
        cold_command(cfg, nsjail, pkg, uid, f"import sys; sys.path.insert(0, {jail_site!r})\n{SYMPY}")
    )
    rows.append(
        Row(
            "cold nsjail (one jail per snippet)",
            _rate(cold_trivial, n, concurrency),
            _p50(_timed(cold_trivial, n)),
            _p50(_timed(cold_sympy, n_sympy)),
        )
    )
    return rows


async def pool_row(cfg: SandboxConfig, n_rate: int, n_lat: int, n_sympy: int) -> Row:
    pool = SandboxPool(cfg)
    try:
        start = time.perf_counter()
        await pool.start()
        start_s = time.perf_counter() - start
        for _ in range(20):  # let every worker settle (first forks touch fresh pages)
            await pool.execute(TRIVIAL)
        latencies, inside = [], []
        for _ in range(n_lat):
            t0 = time.perf_counter()
            res = await pool.execute(TRIVIAL)
            latencies.append((time.perf_counter() - t0) * 1000.0)
            inside.append(res.duration_ms)
            if res.stdout != "2\n":
                raise RuntimeError(f"pool returned {res}")
        sympy_lat: dict[str, list[float]] = {SYMPY: [], SYMPY_HEAVIER: []}
        for _ in range(n_sympy):
            for snippet, lat in sympy_lat.items():
                t0 = time.perf_counter()
                res = await pool.execute(snippet)
                lat.append((time.perf_counter() - t0) * 1000.0)
                if res.exit_code != 0:
                    raise RuntimeError(f"sympy snippet failed in the pool: {res}")
        t0 = time.perf_counter()
        results = await asyncio.gather(*(pool.execute(TRIVIAL) for _ in range(n_rate)))
        rate = n_rate / (time.perf_counter() - t0)
        bad = [r for r in results if r.stdout != "2\n"]
        if bad:
            raise RuntimeError(f"{len(bad)} pool runs failed, e.g. {bad[0]}")
        return Row(
            f"warm pool ({cfg.workers} full + {cfg.light_workers} light workers)",
            rate,
            _p50(latencies),
            _p50(sympy_lat[SYMPY]),
            {
                "start_s": start_s,
                "in_worker_p50_ms": _p50(inside),
                "replaced": pool.replaced,
                "heavier_sympy_p50_ms": _p50(sympy_lat[SYMPY_HEAVIER]),
            },
        )
    finally:
        await pool.aclose()


def run_benchmark(
    cfg: SandboxConfig | None = None,
    *,
    n_rate: int = 3000,
    n_lat: int = 500,
    n_sympy: int = 100,
    n_subprocess: int = 100,
    concurrency: int | None = None,
) -> list[Row]:
    cfg = (cfg or SandboxConfig()).validate()
    concurrency = concurrency or os.cpu_count() or 2
    rows = subprocess_rows(cfg, n_subprocess, max(5, n_subprocess // 10), concurrency)
    rows.append(asyncio.run(pool_row(cfg, n_rate, n_lat, n_sympy)))
    return rows


def report(rows: list[Row]) -> str:
    bare, cold, warm = rows[0], rows[1], rows[2]
    lines = [
        f"{'':38} {'exec/s':>9} {'p50 ms':>8} {'sympy p50 ms':>13}",
    ]
    for row in rows:
        sympy = f"{row.sympy_p50_ms:13.1f}" if row.sympy_p50_ms is not None else f"{'-':>13}"
        lines.append(f"{row.name:38} {row.rate:9.0f} {row.p50_ms:8.2f} {sympy}")
    lines += [
        "",
        f"warm pool vs cold nsjail: {warm.rate / cold.rate:.1f}x exec/s, "
        f"{cold.p50_ms / warm.p50_ms:.1f}x lower p50 latency",
        f"warm pool vs bare python3 -c: {warm.rate / bare.rate:.1f}x exec/s, "
        f"{bare.p50_ms / warm.p50_ms:.1f}x lower p50 latency",
        f"added latency of the warm pool (p50 round trip of print(1+1), whose own run takes "
        f"microseconds): {warm.p50_ms:.2f} ms; in-worker part {warm.extra['in_worker_p50_ms']:.2f} ms",
        f"warm pool, heavier sympy snippet (factor, diff, Matrix.inv) p50: "
        f"{warm.extra['heavier_sympy_p50_ms']:.1f} ms",
        f"pool start (provision + preload + warm-up): {warm.extra['start_s']:.2f} s; "
        f"workers replaced during the run: {warm.extra['replaced']}",
        f"targets: >= 300 exec/s [{'met' if warm.rate >= 300 else 'MISSED'}], p50 added latency "
        f"<= 3 ms [{'met' if warm.p50_ms <= 3 else 'MISSED'}], sympy p50 <= 15 ms "
        f"[{'met' if (warm.sympy_p50_ms or 1e9) <= 15 else 'MISSED'}]",
    ]
    return "\n".join(lines)
