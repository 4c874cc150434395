"""The trainer backend in a Ray actor, behind the same :class:`TrainerBackend`.

The actor builds the backend ``trainer.backend`` names (``hf``; Megatron's tensor-parallel ranks
as actors are not built yet) with :func:`~simpletir.core.backend.build_backend`. Batches and the
loss function travel to it; the loss function's per-micro-batch metrics (``loss_fn.parts``) come
back with the step's result and are appended to the caller's object, so the loop reads them as
it does locally.

The trainer is never restarted: its optimiser state would be gone. A dead trainer actor stops the
run with :class:`TrainerLost` (one line, exit 2); checkpoints are written atomically, so the last
one is intact and ``RESUME=True`` continues from it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from simpletir.core.backend.base import LossFn, TrainerBackend
from simpletir.core.errors import SimpletirError
from simpletir.core.executor.ray.balance import actor_errors, describe, stop_actors

if TYPE_CHECKING:
    from torch import Tensor

    from simpletir.core.config import ExperimentConfig
    from simpletir.core.trainer.tensors import TrainBatch

T = TypeVar("T")


class TrainerLost(SimpletirError):
    """The trainer backend's actor died; the run cannot go on (its optimiser state is gone)."""


class BackendWorker:
    """The actor: one backend, as :func:`~simpletir.core.backend.build_backend` builds it."""

    def __init__(self, config: ExperimentConfig, model_dir: Path) -> None:
        from simpletir.core.backend import build_backend

        self.backend = build_backend(config, model_dir)

    def pad_token_id(self) -> int:
        return int(self.backend.pad_token_id)

    def logprobs(self, batch: TrainBatch, with_entropy: bool) -> tuple[Tensor, Tensor | None]:
        return self.backend.logprobs(batch, with_entropy=with_entropy)

    def reference_logprobs(self, batch: TrainBatch) -> Tensor:
        return self.backend.reference_logprobs(batch)

    def train_step(
        self, batch: TrainBatch, loss_fn: LossFn, with_entropy: bool
    ) -> tuple[dict[str, float], list[dict[str, float]]]:
        parts = getattr(loss_fn, "parts", None)
        if isinstance(parts, list):
            parts.clear()  # only what this step adds goes back
        result = self.backend.train_step(batch, loss_fn, with_entropy=with_entropy)
        return result, list(parts) if isinstance(parts, list) else []

    def weight_buckets(self, bucket_bytes: int) -> list[Any]:
        """The parameters as object-store buckets of raw bytes (see ``engine.pack``): a reader on
        this node maps them without a copy, and nothing is pickled tensor by tensor."""
        import ray

        from simpletir.core.executor.ray.engine import buckets_of, pack

        return [ray.put(pack(b)) for b in buckets_of(self.backend.named_hf_tensors(), bucket_bytes)]

    def save(self, folder: Path) -> None:
        self.backend.save(folder)

    def load(self, folder: Path) -> None:
        self.backend.load(folder)

    def export(self, folder: Path) -> None:
        self.backend.export(folder)

    def close(self) -> None:
        self.backend.close()


class RayBackend(TrainerBackend):
    def __init__(
        self, actor: Any, tokenizer: Any, checkpoints: Path | None = None, bucket_bytes: int = 512 * 2**20
    ) -> None:
        self.actor = actor
        self.bucket_bytes = bucket_bytes
        self.tokenizer = tokenizer
        self.checkpoints = checkpoints
        self.pad_token_id = self._get(actor.pad_token_id.remote())
        self._closed = False

    def _get(self, ref: Any) -> Any:
        import ray

        try:
            return ray.get(ref)
        except actor_errors() as exc:
            where = f" under {self.checkpoints}" if self.checkpoints else ""
            raise TrainerLost(
                f"the trainer backend's Ray actor died ({describe(exc)}); the run stops. Checkpoints{where} "
                "are written atomically, so the last one is intact: RESUME=True continues from it"
            ) from exc

    def logprobs(self, batch: TrainBatch, *, with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
        out: tuple[Tensor, Tensor | None] = self._get(self.actor.logprobs.remote(batch, with_entropy))
        return out

    def reference_logprobs(self, batch: TrainBatch) -> Tensor:
        out: Tensor = self._get(self.actor.reference_logprobs.remote(batch))
        return out

    def train_step(self, batch: TrainBatch, loss_fn: LossFn, *, with_entropy: bool) -> dict[str, float]:
        result, parts = self._get(self.actor.train_step.remote(batch, loss_fn, with_entropy))
        local_parts = getattr(loss_fn, "parts", None)
        if isinstance(local_parts, list):
            local_parts.extend(parts)
        return dict(result)

    def named_hf_tensors(self) -> Iterator[tuple[str, Tensor]]:
        """Bucket by bucket from the actor's object store entries (read-only views of them)."""
        from simpletir.core.executor.ray.engine import unpack

        for ref in self._get(self.actor.weight_buckets.remote(self.bucket_bytes)):
            yield from unpack(self._get(ref))

    def save(self, folder: Path) -> None:
        self._get(self.actor.save.remote(folder))

    def load(self, folder: Path) -> None:
        self._get(self.actor.load.remote(folder))

    def export(self, folder: Path) -> None:
        self._get(self.actor.export.remote(folder))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        stop_actors([self.actor])
