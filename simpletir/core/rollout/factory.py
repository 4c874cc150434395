"""Build the policy engine a config names.

Kept apart from :mod:`.engine` (the interface) so the interface imports none of its
implementations: :mod:`.hf_engine` and :mod:`.vllm_engine` import :mod:`.engine`, and only this
module imports them (lazily, since vLLM and transformers are heavy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from simpletir.core.errors import ConfigError
from simpletir.core.rollout.engine import PolicyEngine

if TYPE_CHECKING:
    from simpletir.core.config import ExperimentConfig


def build_engine(config: ExperimentConfig) -> PolicyEngine:
    """The engine ``config.rollout.engine`` names, loading ``config.model_name``."""
    from simpletir.core.rollout.models import resolve_model

    rollout = config.rollout
    model_dir = resolve_model(config.model_name)
    max_model_len = config.max_prompt_length + config.max_response_length
    if rollout.engine == "hf":
        from simpletir.core.rollout.hf_engine import HFEngine

        return HFEngine(model_dir, dtype=rollout.dtype, seed=config.seed, max_model_len=max_model_len)
    if rollout.engine == "vllm":
        from simpletir.core.rollout.vllm_engine import VLLMEngine

        return VLLMEngine(
            model_dir,
            dtype=rollout.dtype,
            seed=config.seed,
            max_model_len=max_model_len,
            gpu_memory_utilization=rollout.gpu_memory_utilization,
            tensor_parallel_size=rollout.tensor_parallel_size,
            enforce_eager=rollout.enforce_eager,
            max_num_seqs=rollout.max_concurrency,
        )
    raise ConfigError(f"rollout.engine={rollout.engine!r} is not one of 'vllm', 'hf'")
