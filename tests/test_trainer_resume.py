"""A training run killed mid-step and resumed ends bit-identical to one that was never interrupted.

Real ``simpletir-run`` processes (tiny-qwen2, hf engine, hf backend, single-turn arith): one runs
4 steps straight; another is SIGKILLed during step 3 and rerun with ``RESUME=True``. The final
weights, the optimiser state and every step's metrics (timings aside) must be equal. The entropy
bonus keeps the gradient non-zero although a random model earns no reward, so AdamW's moments
(which a resume must restore) move the weights differently at every step.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from simpletir.core.loggers import read_metrics

pytestmark = pytest.mark.slow

NAME = "resume"
CONFIG = """\
experiment_name: resume
model_name: tiny-qwen2
train_dataset: arith_train
valid_dataset: arith
seed: 3
tool_use: false
tools: []
filters: []
max_prompt_length: 512
max_response_length: 12
train_batch_size: 4
oversample: 1
max_draws: 1
total_training_steps: 4
save_freq: 1
test_freq: -1
plugin_config:
  arith_train: {size: 16}
  math_verify: {workers: 1}
rollout:
  engine: hf
  n: 4
  chat_template: false
  prompt_template: "{question}"
  progress: false
algorithm:
  lr: 1.0e-3
  ppo_mini_batch_size: 2
  entropy_coeff: 0.01
trainer:
  device: cpu
  micro_batch_size: 4
  loggers: [jsonl]
"""
RUN = Path(sys.executable).parent / "simpletir-run"
TIMEOUT_S = 300


def environment(resume: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RESUME", "CONFIG_NAME")}
    env.update(WANDB_MODE="offline", HF_HUB_OFFLINE="1")
    if resume:
        env["RESUME"] = "True"
    return env


def start(cwd: Path, *overrides: str, resume: bool = False) -> subprocess.Popen[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    (cwd / "cfg.yaml").write_text(CONFIG)
    return subprocess.Popen(
        [str(RUN), "cfg.yaml", *overrides],
        cwd=cwd,
        env=environment(resume),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: a kill takes its helpers too
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return proc.returncode, err


def run_ok(cwd: Path, *overrides: str, resume: bool = False) -> None:
    code, err = finish(start(cwd, *overrides, resume=resume))
    assert code == 0, err[-3000:]


def train_metrics(cwd: Path) -> dict[int, dict[str, Any]]:
    """Step -> its metrics without timings; each step must be reported exactly once."""
    records = [r for r in read_metrics(cwd / "runs" / NAME / "metrics.jsonl") if r["phase"] == "train"]
    steps = [r["step"] for r in records]
    assert len(steps) == len(set(steps)), steps
    return {
        r["step"]: {
            "epoch": r["epoch"],
            **{k: v for k, v in r["metrics"].items() if not k.startswith(("timing/", "perf/"))},
        }
        for r in records
    }


def checkpoints(cwd: Path) -> Path:
    return cwd / "checkpoints" / NAME


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted((folder / "model").glob("*.safetensors"))
    assert files, folder
    loaded: dict[str, torch.Tensor] = {}
    for file in files:
        loaded.update(load_file(file))
    return loaded


def assert_same_state(a: Any, b: Any, where: str = "optimizer") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 steps, never interrupted."""
    cwd = tmp_path_factory.mktemp("uninterrupted")
    run_ok(cwd)
    return cwd


def test_killed_mid_step_and_resumed_is_bit_identical(reference: Path, tmp_path: Path) -> None:
    cwd = tmp_path / "interrupted"
    proc = start(cwd)
    metrics_file = cwd / "runs" / NAME / "metrics.jsonl"
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        # step 2 is reported right after its checkpoint is written: step 3 has begun
        if metrics_file.is_file() and any(r["step"] == 2 for r in read_metrics(metrics_file)):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.communicate()[1][-2000:]
    time.sleep(0.5)  # into step 3's rollout (a step takes seconds)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    root = checkpoints(cwd)
    assert (root / "latest").read_text() == "epoch_2\n", "killed too late: step 3 had been saved"
    assert not (root / "epoch_3").exists()
    assert sorted(train_metrics(cwd)) == [1, 2]

    run_ok(cwd, resume=True)

    assert sorted(train_metrics(cwd)) == [1, 2, 3, 4]
    assert train_metrics(cwd) == train_metrics(reference)
    assert (root / "latest").read_text() == "epoch_4\n"
    final, expected = weights(root / "epoch_4"), weights(checkpoints(reference) / "epoch_4")
    assert final.keys() == expected.keys()
    for name in expected:
        assert torch.equal(final[name], expected[name]), name
    # and the update did move them: the comparison is not between two copies of the start
    assert any(not torch.equal(final[n], weights(root / "epoch_3")[n]) for n in final)
    assert_same_state(
        torch.load(root / "epoch_4" / "optimizer.pt", weights_only=True),
        torch.load(checkpoints(reference) / "epoch_4" / "optimizer.pt", weights_only=True),
    )
    state = json.loads((root / "epoch_4" / "trainer_state.json").read_text())
    expected_state = json.loads((checkpoints(reference) / "epoch_4" / "trainer_state.json").read_text())
    assert state["sampler"] == expected_state["sampler"] and state["step"] == 4


def test_resume_with_more_steps_runs_only_the_new_ones(reference: Path, tmp_path: Path) -> None:
    cwd = tmp_path / "longer"
    for folder in ("runs", "checkpoints", "logs"):
        shutil.copytree(reference / folder, cwd / folder)
    before = train_metrics(cwd)
    run_ok(cwd, "total_training_steps=5", resume=True)
    after = train_metrics(cwd)
    assert sorted(after) == [1, 2, 3, 4, 5]
    assert {step: after[step] for step in before} == before  # steps 1-4 are not redone
    assert (checkpoints(cwd) / "latest").read_text() == "epoch_5\n"
    result = json.loads((cwd / "runs" / NAME / "result.json").read_text())
    assert result["metrics"]["steps"] == 5


def test_resume_under_another_config_is_refused(reference: Path) -> None:
    config_before = (reference / "runs" / NAME / "config.yaml").read_text()
    listing = sorted(p.name for p in checkpoints(reference).iterdir())
    started = time.monotonic()
    code, err = finish(start(reference, "algorithm.lr=2e-3", resume=True))
    assert code == 2, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("simpletir: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err[-2000:]
    assert "algorithm.lr: checkpoint 0.001, now 0.002" in errors[0]
    assert "cannot resume from" in errors[0] and "epoch_4" in errors[0]
    assert time.monotonic() - started < 60  # refused before any model was loaded or step run
    assert (reference / "runs" / NAME / "config.yaml").read_text() == config_before
    assert sorted(p.name for p in checkpoints(reference).iterdir()) == listing
