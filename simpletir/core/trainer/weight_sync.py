"""Push the trainer's weights into the rollout engine after each optimiser step.

The backend yields its parameters under Hugging Face names; the engine loads them in buckets of
``trainer.weight_sync_bucket_mb`` (vLLM: one file per bucket in shared memory, all loaded by a
single RPC, so no per-parameter round trips and a bounded copy per bucket). What moved is
counted for ``perf/sync_bytes`` and timed as ``timing/sync_s`` by the loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from simpletir.core.errors import ConfigError

if TYPE_CHECKING:
    from torch import Tensor

    from simpletir.core.backend import TrainerBackend
    from simpletir.core.rollout import PolicyEngine


@dataclass
class SyncStats:
    tensors: int = 0
    bytes: int = 0


def sync_weights(backend: TrainerBackend, engine: PolicyEngine, *, bucket_mb: int) -> SyncStats:
    """Send every parameter once; returns how many tensors and bytes moved."""
    stats = SyncStats()

    def counted() -> Iterator[tuple[str, Tensor]]:
        for name, tensor in backend.named_hf_tensors():
            stats.tensors += 1
            stats.bytes += tensor.numel() * tensor.element_size()
            yield name, tensor

    engine.update_weights(counted(), bucket_bytes=bucket_mb * 2**20)
    return stats


def check_weight_sync(
    backend: TrainerBackend, engine: PolicyEngine, *, bucket_mb: int, model: str
) -> SyncStats:
    """The first sync, before any rollout: a model whose weights the engine cannot take fails here,
    in one line, instead of after the first step's rollout."""
    try:
        return sync_weights(backend, engine, bucket_mb=bucket_mb)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise ConfigError(
            f"the weights of model_name={model!r} cannot be synced from trainer.backend into "
            f"rollout.engine ({type(exc).__name__}: {exc})"
        ) from exc
