"""``simpletir plot``: curves of several runs from metrics.jsonl and the validation files, one PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from simpletir.core.errors import SimpletirError
from simpletir.viewer.plot import load_run, main, plot_runs


def make_run(root: Path, name: str, *, void: float, with_mismatch: bool) -> Path:
    run_dir = root / "runs" / name
    logs = root / "logs"
    run_dir.mkdir(parents=True)
    logs.mkdir(exist_ok=True)
    (run_dir / "config.yaml").write_text(f"experiment_name: {name}\nlogs_dir: {logs}\n")
    lines = [{"step": 0, "phase": "val", "metrics": {"pass@1": 0.1}}]
    for step in range(1, 6):
        metrics = {"reward/mean": 0.1 * step, "env/void_turn_ratio": void, "actor/grad_norm": float(step)}
        if with_mismatch:
            metrics["rollout/kl_engine_trainer"] = 1e-6 * step
        lines.append({"step": step, "phase": "train", "metrics": metrics})
    lines.append({"step": 3, "phase": "train", "metrics": {"reward/mean": 0.99}})  # a resumed step: last wins
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n{torn")
    (logs / f"{name}_val_epoch_5.json").write_text(json.dumps({"pass@1": 0.4, "step": 5}))
    return run_dir


def test_a_run_reads_its_steps_and_validations(tmp_path: Path) -> None:
    run = load_run(make_run(tmp_path, "a", void=0.5, with_mismatch=False))
    assert run.name == "a" and sorted(run.train) == [1, 2, 3, 4, 5]
    assert run.series("reward/mean")[1][2] == 0.99
    assert run.validation == {0: 0.1, 5: 0.4}  # metrics.jsonl's and the seed's val_epoch file
    assert run.series("rollout/kl_engine_trainer") == ([], [])


def test_two_runs_into_one_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = make_run(tmp_path, "mask", void=0.2, with_mismatch=True)
    b = make_run(tmp_path, "nomask", void=0.8, with_mismatch=False)
    assert main([str(a), str(b), "-o", str(tmp_path / "curves.png")]) == 0
    png = (tmp_path / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (2000, 850)
    assert "wrote" in capsys.readouterr().out
    assert not math.isnan(load_run(a).series("actor/grad_norm")[1][0])


def test_a_folder_without_metrics_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(SimpletirError, match=r"no metrics\.jsonl"):
        plot_runs([tmp_path], tmp_path / "x.png")
