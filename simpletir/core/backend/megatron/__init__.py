"""The ``megatron`` trainer backend: megatron-core ``GPTModel`` at tensor-parallel size
``trainer.tensor_parallel_size``, behind the same :class:`~simpletir.core.backend.base.TrainerBackend`
seam as ``hf`` (the training loop does not know which one it drives).

* :mod:`.model`: the GPTModel of a HF Qwen2/Llama config (local spec + SDPA core attention on
  CPU; Transformer Engine's spec on CUDA when installed);
* :mod:`.convert`: HF ⇄ Megatron weights at any TP size (QKV group interleave, gate/up fusion,
  vocab padding, tied embeddings), streamed one parameter at a time;
* :mod:`.parallel_math`: log-probs and entropy from vocab-sharded logits, the TP-aware grad norm;
* :mod:`.rank`: one rank's shard and AdamW; :mod:`.launch`: rank 0 here, followers as processes.

Checkpoints hold the model as a HF folder (``model/``) and the Adam moments in HF names
(``optimizer/``), gathered over TP: ``simpletir export`` reads them like an ``hf`` checkpoint
and a run resumes at any TP size.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simpletir.core.backend.base import (
    MODEL_FOLDER,
    LossFn,
    TrainerBackend,
    check_backend_fits,
    load_tokenizer,
)

if TYPE_CHECKING:
    from torch import Tensor

    from simpletir.core.config import ExperimentConfig
    from simpletir.core.trainer.tensors import TrainBatch


class MegatronBackend(TrainerBackend):
    def __init__(self, model_dir: Path, config: ExperimentConfig) -> None:
        from simpletir.core.backend.megatron.launch import RankGroup

        check_backend_fits(config, model_dir)  # what the ranks would refuse, before any starts
        self.config = config
        self.tokenizer, self.pad_token_id = load_tokenizer(model_dir)
        self.ranks = RankGroup(Path(model_dir), config)

    def logprobs(self, batch: TrainBatch, *, with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
        result: tuple[Tensor, Tensor | None] = self.ranks.call("logprobs", batch, with_entropy)
        return result

    def reference_logprobs(self, batch: TrainBatch) -> Tensor:
        result: Tensor = self.ranks.call("reference_logprobs", batch)
        return result

    def train_step(self, batch: TrainBatch, loss_fn: LossFn, *, with_entropy: bool) -> dict[str, float]:
        # Every rank computes the same loss from the same all-reduced log-probs; loss_fn is sent
        # to the followers by pickling (the loop's MicroBatchLoss), rank 0 runs the loop's own.
        result: dict[str, float] = self.ranks.call("train_step", batch, loss_fn, with_entropy)
        return result

    def named_hf_tensors(self) -> Iterator[tuple[str, Tensor]]:
        yield from self.ranks.call_iter("hf_tensors", "param")

    def full_logits(self, batch: TrainBatch) -> Tensor:
        """Logits at response positions, gathered over the vocabulary shards (parity checks)."""
        result: Tensor = self.ranks.call("full_logits", batch)
        return result

    def hf_gradients(self) -> Iterator[tuple[str, Tensor]]:
        """The last step's gradients (after clipping) in HF names and shapes, gathered over TP."""
        yield from self.ranks.call_iter("hf_tensors", "grad")

    def export(self, folder: Path) -> None:
        self.ranks.call("export", folder)
        self.tokenizer.save_pretrained(folder)

    def save(self, folder: Path) -> None:
        self.ranks.call("save", folder)
        self.tokenizer.save_pretrained(folder / MODEL_FOLDER)

    def load(self, folder: Path) -> None:
        self.ranks.call("load", folder)

    @property
    def steps_taken(self) -> int:
        local: Any = self.ranks.local
        return int(local.steps_taken) if local is not None else 0

    def close(self) -> None:
        self.ranks.close()
