"""``simpletir plot RUN_DIR [RUN_DIR ...] -o curves.png``: training curves of runs, overlaid.

Reads each run's ``metrics.jsonl`` (training steps and validations) and the
``<logs_dir>/<run>_val_epoch_<N>.json`` files of its validations, and draws, against the step:
training reward, validation accuracy, void-turn ratio, response length, gradient norm, entropy,
the rollout/trainer mismatch and the trajectories trained on, one line per run, named after its
folder. A step logged twice (a resumed run) keeps its last line. Metrics a run does not have
(the mismatch is only measured at ``rollout.temperature`` 1) leave its line out of that panel,
which then says so.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simpletir.core.errors import SimpletirError
from simpletir.core.loggers import METRICS_FILE, read_metrics

# (title, metric keys tried in order, y label); "val:" keys come from the validations
PANELS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("training reward", ("reward/mean",), "mean reward (before filters)"),
    ("validation accuracy", ("val:pass@1",), "pass@1"),
    ("void-turn ratio", ("env/void_turn_ratio",), "trajectories with a void turn"),
    ("response length", ("response_length/mean",), "tokens (mean)"),
    ("gradient norm", ("actor/grad_norm",), "before clipping"),
    ("entropy", ("actor/entropy",), "nats per token (loss tokens)"),
    (
        "rollout/trainer mismatch",
        ("rollout/kl_engine_trainer", "rollout/logprob_diff_mean"),
        "KL(engine||trainer)",
    ),
    ("trajectories trained on", ("batch/trained_trajectories",), "rows with loss tokens"),
)


@dataclass
class RunCurves:
    """What one run logged: ``train[step]`` metrics and ``validation[step]`` overall pass@1."""

    name: str
    train: dict[int, dict[str, float]] = field(default_factory=dict)
    validation: dict[int, float] = field(default_factory=dict)

    def series(self, key: str) -> tuple[list[int], list[float]]:
        if key.startswith("val:"):
            points = sorted(self.validation.items())
        else:
            points = [(s, m[key]) for s, m in sorted(self.train.items()) if key in m]
        points = [(s, v) for s, v in points if isinstance(v, int | float) and math.isfinite(v)]
        return [s for s, _ in points], [float(v) for _, v in points]


def _logs_dir(run_dir: Path) -> Path | None:
    """The run's logs folder from its config.yaml (relative paths: from the cwd, else beside runs/)."""
    config = run_dir / "config.yaml"
    if not config.is_file():
        return None
    import yaml

    logs = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("logs_dir", "logs")
    path = Path(logs)
    if path.is_absolute() or path.is_dir():
        return path
    beside = run_dir.parent.parent / logs
    return beside if beside.is_dir() else None


def load_run(run_dir: str | Path) -> RunCurves:
    """A run's curves; a folder without ``metrics.jsonl`` is a one-line error."""
    run_dir = Path(run_dir)
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise SimpletirError(
            f"{run_dir}: no {METRICS_FILE} (not a run folder, or a run with trainer.loggers lacking jsonl)"
        )
    run = RunCurves(name=run_dir.name)
    for record in read_metrics(path):
        step = int(record.get("step", 0))
        metrics = record.get("metrics", {})
        if record.get("phase") == "val":
            if "pass@1" in metrics:
                run.validation[step] = float(metrics["pass@1"])
        else:
            run.train[step] = metrics
    logs = _logs_dir(run_dir)
    if logs is not None:  # the seed's files: complete validations even when metrics.jsonl lacks them
        for file in logs.glob(f"{run_dir.name}_val_epoch_*.json"):
            number = file.stem.rsplit("_", 1)[-1]
            if not number.isdigit():
                continue
            try:
                result: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(result.get("pass@1"), int | float):
                run.validation.setdefault(int(number), float(result["pass@1"]))
    return run


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path, *, title: str | None = None) -> Path:
    """Draw every run's curves into one PNG at ``out``; returns its path."""
    try:
        import matplotlib
    except ImportError as exc:
        raise SimpletirError("simpletir plot needs matplotlib: pip install matplotlib") from exc

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [load_run(r) for r in run_dirs]
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # two folders of the same name: tell them apart by their parents
        for run, run_dir in zip(runs, run_dirs, strict=True):
            run.name = f"{Path(run_dir).parent.name}/{run.name}"
    fig, axes = plt.subplots(2, 4, figsize=(20, 8.5))
    for ax, (panel, keys, ylabel) in zip(axes.flat, PANELS, strict=True):
        missing = []
        for i, run in enumerate(runs):
            color = f"C{i}"
            for key in keys:
                steps, values = run.series(key)
                if steps:
                    style = "s--" if key.startswith("val:") else "o-"
                    ax.plot(steps, values, style, color=color, markersize=3.5, linewidth=1.4, label=run.name)
                    break
            else:
                missing.append(run.name)
        ax.set_title(panel, fontsize=11)
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel, fontsize=9)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if missing:
            ax.text(0.02, 0.96, "not logged: " + ", ".join(missing), transform=ax.transAxes,
                    fontsize=8, va="top", color="gray")  # fmt: skip
    handles, labels = [], []
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.legend(handles, labels, loc="upper right", ncol=min(len(labels), 4), fontsize=10)
    fig.suptitle(
        title or "training curves: " + ", ".join(r.name for r in runs), x=0.01, ha="left", fontsize=12
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="simpletir plot",
        description="Training curves of one or more runs, overlaid, as a PNG: reward, validation "
        "accuracy, void-turn ratio, response length, gradient norm, entropy, rollout/trainer "
        "mismatch, trajectories trained on (from runs/<run>/metrics.jsonl and "
        "logs/<run>_val_epoch_<N>.json).",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (runs/<name>)")
    parser.add_argument("-o", "--output", default="curves.png", help="the PNG to write (default curves.png)")
    parser.add_argument("--title", default=None, help="figure title (default: the runs' names)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    out = plot_runs(args.runs, args.output, title=args.title)
    print(f"wrote {out}")
    return 0
