"""Shared settings of the trainer tests: the smallest real training run on CPU.

tiny-qwen2 with the hf engine and the hf backend, single-turn (no sandbox), generated arithmetic
(no data file), filters off. Steps take about a second on 2 CPU cores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY_RUN: dict[str, Any] = {
    "model_name": "tiny-qwen2",
    "rollout.engine": "hf",
    "trainer.device": "cpu",
    "tool_use": False,
    "tools": "[]",
    "filters": "[]",
    "train_dataset": "arith_train",
    "valid_dataset": "arith",
    "val_sample_size": 2,
    "plugin_config.arith_train.size": 8,
    "plugin_config.math_verify.workers": 1,
    "train_batch_size": 2,
    "algorithm.ppo_mini_batch_size": 1,
    "rollout.n": 2,
    "rollout.chat_template": False,
    "rollout.prompt_template": "{question}",
    "rollout.progress": False,
    "max_response_length": 2,
    "max_prompt_length": 512,
    "oversample": 1,
    "max_draws": 1,
    "total_training_steps": 2,
    "save_freq": 1,
    "test_freq": -1,
    "algorithm.lr": 1e-3,
    # math_verify gives a random model 0 everywhere: the entropy bonus keeps the gradient non-zero
    "algorithm.entropy_coeff": 0.01,
    "trainer.loggers": "[jsonl]",
}


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def tiny_overrides(tmp: Path | None, name: str, **extra: Any) -> list[str]:
    """``key=value`` overrides of a tiny run named ``name`` writing under ``tmp`` (None: cwd)."""
    values = {**TINY_RUN, "experiment_name": name}
    if tmp is not None:
        values.update(runs_dir=tmp / "runs", logs_dir=tmp / "logs", checkpoints_dir=tmp / "checkpoints")
    values.update(extra)
    return [f"{key}={_text(value)}" for key, value in values.items()]
