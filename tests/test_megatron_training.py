"""``simpletir-run`` with ``trainer.backend=megatron trainer.tensor_parallel_size=2``: real runs.

tiny-qwen2-gqa (4 query / 2 KV heads: splits over 2 ranks), hf rollout engine, single-turn arith,
filters off; the entropy bonus keeps the gradient non-zero although a random model earns no reward.
The loop is the one the ``hf`` backend runs, so the first step's numbers must be the same as the
``hf`` backend's; checkpoints hold the gathered model and Adam moments, so a TP=2 run resumes at
TP=1; Ctrl-C stops rank 0 and every follower.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from simpletir.core.loggers import read_metrics

pytest.importorskip("megatron.core")
pytestmark = pytest.mark.slow

NAME = "mtrain"
CONFIG = """\
experiment_name: mtrain
model_name: tiny-qwen2-gqa
train_dataset: arith_train
valid_dataset: arith
seed: 5
tool_use: false
tools: []
filters: []
max_prompt_length: 512
max_response_length: 8
train_batch_size: 2
oversample: 1
max_draws: 1
total_training_steps: 2
save_freq: 1
test_freq: -1
plugin_config:
  arith_train: {size: 8}
  math_verify: {workers: 1}
rollout:
  engine: hf
  n: 2
  chat_template: false
  prompt_template: "{question}"
  progress: false
algorithm:
  lr: 1.0e-3
  ppo_mini_batch_size: 2
  entropy_coeff: 0.01
trainer:
  device: cpu
  micro_batch_size: 2
  loggers: [jsonl]
"""
RUN = Path(sys.executable).parent / "simpletir-run"
TIMEOUT_S = 420


def run(cwd: Path, *overrides: str, resume: bool = False) -> subprocess.Popen[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    (cwd / "cfg.yaml").write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if k not in ("RESUME", "CONFIG_NAME")}
    env.update(WANDB_MODE="offline", HF_HUB_OFFLINE="1")
    if resume:
        env["RESUME"] = "True"
    return subprocess.Popen(
        [str(RUN), "cfg.yaml", *overrides],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def run_ok(cwd: Path, *overrides: str, resume: bool = False) -> str:
    proc = run(cwd, *overrides, resume=resume)
    try:
        _, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, err[-4000:]
    return err


def train_metrics(cwd: Path) -> dict[int, dict[str, Any]]:
    records = read_metrics(cwd / "runs" / NAME / "metrics.jsonl")
    return {r["step"]: r["metrics"] for r in records if r["phase"] == "train"}


MEGATRON_TP2 = ("trainer.backend=megatron", "trainer.tensor_parallel_size=2")


def test_tp2_trains_checkpoints_and_resumes_at_tp1(tmp_path: Path) -> None:
    cwd = tmp_path / "tp2"
    err = run_ok(cwd, *MEGATRON_TP2)
    assert "megatron: 2 tensor-parallel ranks (gloo" in err
    steps = train_metrics(cwd)
    assert sorted(steps) == [1, 2]
    assert all(m["actor/grad_norm"] > 0 and m["actor/skipped_step"] == 0 for m in steps.values())
    ckpt = cwd / "checkpoints" / NAME / "epoch_2"
    assert (ckpt / "model" / "model.safetensors.index.json").is_file()
    assert (ckpt / "optimizer" / "optimizer_state.json").is_file()
    # simpletir export reads it like an hf checkpoint; transformers loads the result
    from transformers import AutoModelForCausalLM

    from simpletir.core.trainer.export import export_checkpoint

    exported = AutoModelForCausalLM.from_pretrained(export_checkpoint(ckpt, tmp_path / "exported"))
    assert exported.config.num_key_value_heads == 2

    # Same numbers as the hf backend on the first step (identical rollouts: same weights and
    # seeds). Not the grad norm: with no reward, the gradient is the entropy bonus's alone, ~0 at
    # a random model's near-uniform softmax, and what is left of it is float32 rounding (the
    # gradient tests in test_megatron.py use real advantages).
    hf = tmp_path / "hf"
    run_ok(hf, "total_training_steps=1")
    want = train_metrics(hf)[1]
    for key in ("actor/loss", "actor/entropy", "response_length/mean", "actor/pg_loss"):
        assert steps[1][key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key

    # resumed at another TP size: step 3 runs from epoch_2's weights and moments
    err = run_ok(
        cwd,
        "trainer.backend=megatron",
        "trainer.tensor_parallel_size=1",
        "total_training_steps=3",
        resume=True,
    )
    assert "continuing at step 3 of 3" in err
    assert sorted(train_metrics(cwd)) == [1, 2, 3]
    assert (cwd / "checkpoints" / NAME / "epoch_3" / "model").is_dir()


def test_ctrl_c_stops_every_rank(tmp_path: Path) -> None:
    proc = run(tmp_path, *MEGATRON_TP2, "total_training_steps=50", "save_freq=-1")
    deadline = time.monotonic() + TIMEOUT_S
    metrics = tmp_path / "runs" / NAME / "metrics.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and any(r["phase"] == "train" for r in read_metrics(metrics)):
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    followers = subprocess.run(
        ["pgrep", "-g", str(proc.pid), "-f", "simpletir.core.backend.megatron.launch"],
        capture_output=True,
        text=True,
    ).stdout.split()
    assert len(followers) == 1, "rank 1 should be running in the run's process group"
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    try:
        proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 130
    time.sleep(1)
    assert not Path(f"/proc/{followers[0]}").exists(), "rank 1 outlived the run"
