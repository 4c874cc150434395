"""The trainer backend seam: everything the training loop needs from the thing holding the weights.

The loop (:mod:`simpletir.core.trainer.loop`) never imports torch models or optimisers; it hands
a backend padded :class:`~simpletir.core.trainer.tensors.TrainBatch` es and a loss function made
of :mod:`simpletir.core.algo`'s pure functions. A backend is chosen once, by ``trainer.backend``:

* ``hf``: transformers + a torch AdamW in this process (:mod:`simpletir.core.backend.hf`);
* ``megatron``: megatron-core at ``trainer.tensor_parallel_size``, rank 0 in this process and the
  other ranks in processes it starts (:mod:`simpletir.core.backend.megatron`).

Parameters cross the seam in Hugging Face names, so weight sync into the rollout engine, the
checkpoint's model folder and ``simpletir export`` are the same for every backend.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simpletir.core.errors import ConfigError, StageUnavailableError

if TYPE_CHECKING:
    from torch import Tensor

    from simpletir.core.config import ExperimentConfig
    from simpletir.core.trainer.tensors import TrainBatch

# Every backend's checkpoint keeps the policy as a Hugging Face folder under this name, so export,
# weight sync and resume read one layout whichever backend wrote it.
MODEL_FOLDER = "model"

# loss_fn(micro_batch, logprobs [b, T], entropy [b, T] or None) -> this micro-batch's share of
# the mini-batch loss (already scaled, so the backend only sums gradients).
LossFn = Callable[["TrainBatch", "Tensor", "Tensor | None"], "Tensor"]


def load_tokenizer(model_dir: Path) -> tuple[Any, int]:
    """The policy's tokenizer and the id batches are padded with (pad, else EOS, else 0)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pad = tokenizer.pad_token_id
    return tokenizer, int(pad if pad is not None else (tokenizer.eos_token_id or 0))


def warmup_lr(lr: float, warmup_steps: int, steps_taken: int) -> float:
    """The learning rate of the next optimiser step: linear warm-up over ``warmup_steps``."""
    if warmup_steps <= 0:
        return lr
    return lr * min(1.0, (steps_taken + 1) / warmup_steps)


class TrainerBackend(abc.ABC):
    """Holds the policy (and optimiser); computes log-probs; takes optimiser steps."""

    #: the tokenizer of the policy (saved beside the weights in checkpoints and exports)
    tokenizer: Any
    #: id used to pad batches
    pad_token_id: int

    @abc.abstractmethod
    def logprobs(self, batch: TrainBatch, *, with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
        """Response-aligned ``[B, T]`` log-probs of ``batch.responses`` (and entropy), no gradient."""

    @abc.abstractmethod
    def reference_logprobs(self, batch: TrainBatch) -> Tensor:
        """Log-probs under the frozen reference policy (only built when ``use_kl_loss``)."""

    @abc.abstractmethod
    def train_step(self, batch: TrainBatch, loss_fn: LossFn, *, with_entropy: bool) -> dict[str, float]:
        """Forward/backward over micro-batches of ``batch``, clip, one optimiser step.

        Returns ``actor/grad_norm`` (before clipping), ``actor/lr`` and ``actor/skipped_step``
        (1 when the gradient was not finite and the step was skipped).
        """

    @abc.abstractmethod
    def named_hf_tensors(self) -> Iterator[tuple[str, Tensor]]:
        """The policy's parameters under Hugging Face names (what ``update_weights`` takes)."""

    @abc.abstractmethod
    def save(self, folder: Path) -> None:
        """Write the full training state (model as an HF folder under ``model/``, optimiser...)."""

    @abc.abstractmethod
    def load(self, folder: Path) -> None:
        """Restore what :meth:`save` wrote, exactly."""

    @abc.abstractmethod
    def export(self, folder: Path) -> None:
        """A Hugging Face model folder (config, safetensors, tokenizer, generation config)."""

    def close(self) -> None:  # noqa: B027 - optional: most backends free memory by being dropped
        """Free memory. Idempotent."""


def check_backend_available(config: ExperimentConfig) -> None:
    """Say before any heavy work when ``trainer.backend`` cannot be built here."""
    name = config.trainer.backend
    if name == "megatron":
        try:
            import megatron.core  # noqa: F401
        except ImportError as exc:
            raise StageUnavailableError(
                f"trainer.backend=megatron needs megatron-core ({exc}); pip install 'megatron-core>=0.16' "
                "(the cpu and gpu extras have it), or use trainer.backend=hf"
            ) from exc
        return
    if name != "hf":
        raise ConfigError(f"trainer.backend={name!r} is not one of 'hf', 'megatron'")
    if config.trainer.tensor_parallel_size > 1:
        raise ConfigError(
            f"trainer.tensor_parallel_size={config.trainer.tensor_parallel_size} needs "
            "trainer.backend=megatron (the hf backend holds the whole model in one process)"
        )


def check_backend_fits(config: ExperimentConfig, model_dir: Path) -> None:
    """Refuse a model the backend cannot shard (megatron: heads vs ``tensor_parallel_size``)
    from its config alone, before the engine and the sandbox start."""
    if config.trainer.backend != "megatron":
        return
    if config.trainer.gradient_checkpointing:
        raise ConfigError(
            "trainer.gradient_checkpointing=true is not supported by trainer.backend=megatron "
            "(megatron's recomputation forks the CUDA RNG tracker); use trainer.micro_batch_tokens "
            "to bound activation memory, or trainer.backend=hf"
        )
    from transformers import AutoConfig

    from simpletir.core.backend.megatron.model import check_divisible, model_shape

    check_divisible(
        model_shape(AutoConfig.from_pretrained(model_dir), str(model_dir)),
        config.trainer.tensor_parallel_size,
    )


def build_backend(config: ExperimentConfig, model_dir: Path) -> TrainerBackend:
    """The backend ``config.trainer.backend`` names (imported only when chosen)."""
    check_backend_available(config)
    if config.trainer.backend == "megatron":
        from simpletir.core.backend.megatron import MegatronBackend

        return MegatronBackend(model_dir, config)
    from simpletir.core.backend.hf import HFBackend

    return HFBackend(model_dir, config)
