"""The allowed range of every numeric config key, in one table, checked before any heavy work.

Types are OmegaConf's job; this is what the types allow but a run cannot use (a negative
temperature, a top-p of 0, NaN anywhere). Every ``int``/``float`` field of the schema must have
a rule here (a test walks the schema), so a new key cannot slip in unchecked.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from simpletir.core.errors import ConfigError

Rule = tuple[Callable[[Any], bool], str]


def _finite(value: Any) -> bool:
    return isinstance(value, int) or math.isfinite(value)


def at_least(low: float) -> Rule:
    return (lambda v: _finite(v) and v >= low), f"must be at least {low:g}"


def positive() -> Rule:
    return (lambda v: _finite(v) and v > 0), "must be a positive number"


def unit_interval() -> Rule:
    return (lambda v: _finite(v) and 0 < v <= 1), "must be in (0, 1]"


def count_or(special: int, meaning: str) -> Rule:
    return (lambda v: v == special or v >= 1), f"must be {special} ({meaning}) or a count >= 1"


def greater_than(low: float) -> Rule:
    return (lambda v: _finite(v) and v > low), f"must be a number > {low:g}"


def anything() -> Rule:
    return (lambda v: True), ""


COUNT = at_least(1)

NUMERIC_RULES: dict[str, Rule] = {
    "seed": anything(),
    "max_turns": COUNT,
    "max_prompt_length": COUNT,
    "max_response_length": COUNT,
    "train_batch_size": COUNT,
    "oversample": COUNT,
    "max_draws": COUNT,
    "total_epochs": COUNT,
    "total_training_steps": COUNT,  # None (use total_epochs) is skipped
    "grad_clip": positive(),
    "start_clip_step": at_least(0),
    "n_val": COUNT,
    "val_sample_size": count_or(-1, "all"),
    "save_freq": count_or(-1, "never"),
    "test_freq": count_or(-1, "never"),
    "rollout.n": COUNT,
    "rollout.temperature": at_least(0),
    "rollout.top_p": unit_interval(),
    "rollout.top_k": count_or(-1, "off"),
    "rollout.val_temperature": at_least(0),
    "rollout.val_top_p": unit_interval(),
    "rollout.val_top_k": count_or(-1, "off"),
    "rollout.max_obs_tokens": COUNT,
    "rollout.max_concurrency": COUNT,
    "rollout.tools_timeout_s": positive(),  # None (each tool's own default) is skipped
    "rollout.gpu_memory_utilization": unit_interval(),
    "rollout.tensor_parallel_size": COUNT,
    "algorithm.clip_ratio_low": at_least(0),
    "algorithm.clip_ratio_high": at_least(0),
    "algorithm.clip_ratio_c": greater_than(1),
    "algorithm.kl_coef": at_least(0),
    "algorithm.entropy_coeff": at_least(0),
    "algorithm.lr": positive(),
    "algorithm.weight_decay": at_least(0),
    "algorithm.warmup_steps": at_least(0),
    "algorithm.tis_cap": at_least(0),
    "algorithm.ppo_mini_batch_size": COUNT,
    "algorithm.ppo_epochs": COUNT,
    "algorithm.overlong_buffer_len": at_least(0),
    "algorithm.overlong_penalty_factor": at_least(0),
    "trainer.tensor_parallel_size": COUNT,
    "trainer.micro_batch_size": COUNT,
    "trainer.micro_batch_tokens": at_least(0),
    "trainer.keep_checkpoints": COUNT,
    "trainer.weight_sync_bucket_mb": COUNT,
    "trainer.wandb_init_timeout_s": positive(),
    "rollout.max_trajectory_retries": at_least(0),
    "ray.num_cpus": COUNT,  # None (the machine's cores) is skipped
    "ray.object_store_mb": at_least(64),
    "ray.engine_replicas": COUNT,
    "ray.engine_cpus": at_least(0),
    "ray.engine_gpus": at_least(-1),  # -1 = auto
    "ray.sandbox_pools": COUNT,
    "ray.sandbox_cpus": at_least(0),
    "ray.reward_workers": COUNT,
    "ray.reward_cpus": at_least(0),
    "ray.trainer_cpus": at_least(0),
    "ray.trainer_gpus": at_least(-1),
    "ray.actor_restarts": at_least(0),
}


def get(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def check_numeric_ranges(config: Any) -> None:
    """The first key outside its range, as one :class:`ConfigError` naming key, value and rule."""
    for key, (ok, rule) in NUMERIC_RULES.items():
        value = get(config, key)
        if value is None or isinstance(value, bool):
            continue
        if not ok(value):
            raise ConfigError(f"{key} {rule}, got {value!r}")
