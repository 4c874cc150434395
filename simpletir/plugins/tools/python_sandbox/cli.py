"""``simpletir sandbox ...``: run a file in the sandbox, benchmark it, or provision it.

    simpletir sandbox exec FILE|-  [--timeout S] [-o key=value ...]
        prints one JSON object {stdout, stderr, exit_code, timed_out, killed_by, duration_ms,
        truncated}; exits 0 when the sandbox ran the code (whatever the code did).
    simpletir sandbox bench [--quick] [-o key=value ...]
        bare python3 -c vs cold nsjail vs the warm pool, side by side.
    simpletir sandbox setup [-o key=value ...]
        provisions the package folder and starts one worker to prove the jail works.

``-o`` sets any option of ``plugin_config.python`` (see docs/sandbox.md), e.g. ``-o workers=4``.
Until the top-level CLI wires it, run ``python -m simpletir.plugins.tools.python_sandbox.cli``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from typing import Any

from simpletir.core.errors import ConfigError, SimpletirError
from simpletir.core.lifecycle import exit_status, process_lifecycle

from .config import SandboxConfig
from .pool import SandboxPool


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _config(options: list[str]) -> SandboxConfig:
    values: dict[str, Any] = {}
    for item in options:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"-o {item!r}: expected key=value (e.g. -o workers=4)")
        values[key.strip()] = _value(raw)
    return SandboxConfig.from_mapping(values)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="simpletir sandbox", description="The python tool's sandbox (nsjail warm pool)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("exec", help="run a Python file (or - for stdin) and print a JSON result")
    ex.add_argument("file", help="path of the code to run, or - to read it from stdin")
    ex.add_argument(
        "--timeout", type=_seconds, default=None, help="wall-clock limit in seconds (> 0, finite)"
    )
    bench = sub.add_parser("bench", help="bare python3 -c vs cold nsjail vs warm pool")
    bench.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke test)")
    sub.add_parser("setup", help="provision packages and prove a worker starts")
    for p in (ex, bench, sub.choices["setup"]):
        p.add_argument(
            "-o",
            "--option",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="a plugin_config.python option (repeatable)",
        )
    return parser


def _seconds(text: str) -> float:
    """A finite, positive number of seconds (argparse turns the ValueError into one usage line)."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number of seconds > 0")
    return value


async def _exec(cfg: SandboxConfig, code: str, timeout: float | None) -> dict[str, Any]:
    # One snippet needs one worker: start only the lane the pool would route it to.
    light = SandboxPool(cfg).route(code) == "light"
    preload = cfg.light_preload if light else cfg.preload
    cfg = dataclasses.replace(
        cfg, workers=1, light_workers=0, preload=list(preload), warmup=cfg.warmup and not light
    )
    pool = SandboxPool(cfg)
    try:
        result = await pool.execute(code, timeout_s=timeout)
    finally:
        await pool.aclose()
    return result.to_dict()


async def _setup(cfg: SandboxConfig) -> str:
    pool = SandboxPool(dataclasses.replace(cfg, workers=1, light_workers=0))
    try:
        result = await pool.execute("import sys; print(sys.version.split()[0])")
    finally:
        await pool.aclose()
    if not result.ok:
        raise SimpletirError(f"the sandbox started but a test snippet failed: {result}")
    from .provision import package_dir

    return f"sandbox ready: packages in {package_dir(cfg)}, jailed Python {result.stdout.strip()}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        # SIGTERM/Ctrl-C close the pool (no jail outlives the command); a reaper stops the
        # jails if the command is killed outright.
        with process_lifecycle("simpletir sandbox"):
            return _run(args)
    except SimpletirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP (lifecycle.Terminated)
        code, line = exit_status(exc)
        print(f"simpletir sandbox: {line}", file=sys.stderr)
        return code


def _run(args: argparse.Namespace) -> int:
    """One subcommand; its errors and stops are reported by :func:`main`."""
    cfg = _config(args.option)
    if args.command == "exec":
        if args.file == "-":
            stdin = getattr(sys.stdin, "buffer", None)
            raw = stdin.read() if stdin is not None else sys.stdin.read().encode()
        else:
            try:
                with open(args.file, "rb") as fh:
                    raw = fh.read()
            except OSError as exc:
                raise SimpletirError(f"cannot read {args.file!r}: {exc.strerror}") from None
        # Bytes that are not UTF-8 reach the snippet (and fail there, reported as JSON).
        code = raw.decode("utf-8", "surrogateescape")
        print(json.dumps(asyncio.run(_exec(cfg, code, args.timeout)), ensure_ascii=False))
    elif args.command == "bench":
        from .benchmark import report, run_benchmark

        sizes = dict(n_rate=300, n_lat=50, n_sympy=10, n_subprocess=10) if args.quick else {}
        print(report(run_benchmark(cfg, **sizes)))
    else:
        print(asyncio.run(_setup(cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
