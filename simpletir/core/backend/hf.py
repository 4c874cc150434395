"""The ``hf`` trainer backend: a transformers causal LM and a torch AdamW in this process.

The embedded default: one process, CPU (fp32) or one CUDA device (fp32 master weights, bf16
autocast). Departures from a plain ``model(**batch).logits`` worth knowing:

* logits are computed only at the positions that predict response tokens (the decoder's hidden
  states are gathered first, then the LM head runs on ``[B, T]`` instead of ``[B, L]``);
* log-probs are of ``softmax(logits / rollout.temperature)``, the distribution the rollout
  sampled from (as verl and TRL do);
* dropout is switched off at load (every ``nn.Dropout`` and the config's ``*dropout`` rates), so
  the same weights give the same log-probs in the old-policy pass and in the update; the model
  is then kept in ``train()`` mode, which gradient checkpointing needs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from simpletir.core.backend.base import MODEL_FOLDER, LossFn, TrainerBackend, load_tokenizer, warmup_lr
from simpletir.core.errors import ConfigError, ModelNotFoundError
from simpletir.core.trainer.tensors import (
    TrainBatch,
    logprobs_by_micro_batch,
    micro_batches,
    response_positions,
)

if TYPE_CHECKING:
    from simpletir.core.config import ExperimentConfig

OPTIMIZER_FILE = "optimizer.pt"


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={setting!r} but torch sees no CUDA device")
    try:
        return torch.device(setting)
    except RuntimeError as exc:
        raise ConfigError(f"trainer.device={setting!r} is not a torch device (auto, cpu, cuda)") from exc


def _load_causal_lm(model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"trainer: cannot load {model_dir} as a causal LM: {exc}") from exc


def _without_dropout(model: Any) -> Any:
    """Every dropout rate to 0: ``nn.Dropout`` modules and the float ``*dropout*`` attributes that
    attention modules copy from the config at init (Qwen2's ``attention_dropout``)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for key, value in list(vars(module).items()):
            if "dropout" in key and isinstance(value, float):
                setattr(module, key, 0.0)
    for key, value in vars(model.config).items():
        if "dropout" in key and isinstance(value, float):
            setattr(model.config, key, 0.0)
    return model


class HFBackend(TrainerBackend):
    def __init__(self, model_dir: Path, config: ExperimentConfig) -> None:
        self.config = config
        self.device = resolve_device(config.trainer.device)
        self.tokenizer, self.pad_token_id = load_tokenizer(model_dir)
        self.model: Any = _without_dropout(_load_causal_lm(model_dir)).to(self.device)
        self.model.train()  # dropout is off (see the module docstring); checkpointing needs train()
        if config.trainer.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.temperature = config.rollout.temperature or 1.0  # greedy training rollouts: plain logits
        self.reference: Any = None
        if config.algorithm.use_kl_loss:
            self.reference = _load_causal_lm(model_dir).to(self.device).eval().requires_grad_(False)
        a = config.algorithm
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=a.lr,
            betas=(float(a.betas[0]), float(a.betas[1])),
            weight_decay=a.weight_decay,
        )
        self.steps_taken = 0  # optimiser steps: drives the warm-up schedule; saved with the optimiser

    # -- forward --------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _forward(self, model: Any, micro: TrainBatch, with_entropy: bool) -> tuple[Tensor, Tensor | None]:
        input_ids = micro.input_ids.to(self.device)
        attention = micro.attention_mask.to(self.device)
        with self._autocast():
            hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention).last_hidden_state
            positions = response_positions(micro).to(self.device)
            picked = hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
            logits = model.get_output_embeddings()(picked)
        log_probs = torch.log_softmax(logits.float() / self.temperature, dim=-1)
        targets = micro.responses.to(self.device).unsqueeze(-1)
        token_logprobs = log_probs.gather(-1, targets).squeeze(-1)
        entropy = -(log_probs.exp() * log_probs).sum(-1) if with_entropy else None
        return token_logprobs, entropy

    def _no_grad_pass(
        self, model: Any, batch: TrainBatch, with_entropy: bool
    ) -> tuple[Tensor, Tensor | None]:
        t = self.config.trainer
        return logprobs_by_micro_batch(
            batch,
            t.micro_batch_size,
            t.micro_batch_tokens,
            lambda micro: self._forward(model, micro, with_entropy),
            with_entropy,
        )

    def logprobs(self, batch: TrainBatch, *, with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
        return self._no_grad_pass(self.model, batch, with_entropy)

    def reference_logprobs(self, batch: TrainBatch) -> Tensor:
        if self.reference is None:
            raise RuntimeError("reference_logprobs: no reference model (algorithm.use_kl_loss is off)")
        return self._no_grad_pass(self.reference, batch, False)[0]

    # -- update ---------------------------------------------------------------------------
    def current_lr(self) -> float:
        a = self.config.algorithm
        return warmup_lr(a.lr, a.warmup_steps, self.steps_taken)

    def train_step(self, batch: TrainBatch, loss_fn: LossFn, *, with_entropy: bool) -> dict[str, float]:
        t = self.config.trainer
        self.optimizer.zero_grad(set_to_none=True)
        for micro in micro_batches(batch, t.micro_batch_size, t.micro_batch_tokens):
            logprobs, entropy = self._forward(self.model, micro, with_entropy)
            loss = loss_fn(micro, logprobs, entropy)  # on self.device; loss_fn moves the batch there
            loss.backward()
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip))
        lr = self.current_lr()
        skipped = not math.isfinite(grad_norm)
        if skipped:  # one bad batch must not write NaN into every weight
            self.optimizer.zero_grad(set_to_none=True)
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
            self.steps_taken += 1
        return {"actor/grad_norm": grad_norm, "actor/lr": lr, "actor/skipped_step": float(skipped)}

    # -- weights and state ----------------------------------------------------------------
    def named_hf_tensors(self) -> Iterator[tuple[str, Tensor]]:
        for name, param in self.model.named_parameters():
            yield name, param.detach()

    def export(self, folder: Path) -> None:
        from transformers.utils import logging as hf_logging

        folder.mkdir(parents=True, exist_ok=True)
        hf_logging.disable_progress_bar()  # "Writing model shards" at every checkpoint is noise
        try:
            self.model.save_pretrained(folder, safe_serialization=True)
        finally:
            hf_logging.enable_progress_bar()
        self.tokenizer.save_pretrained(folder)

    def save(self, folder: Path) -> None:
        self.export(folder / MODEL_FOLDER)
        torch.save(
            {"optimizer": self.optimizer.state_dict(), "steps_taken": self.steps_taken},
            folder / OPTIMIZER_FILE,
        )

    def load(self, folder: Path) -> None:
        from safetensors.torch import load_file

        weights: dict[str, Tensor] = {}
        for file in sorted((folder / MODEL_FOLDER).glob("*.safetensors")):
            weights.update(load_file(file))
        if not weights:
            raise ModelNotFoundError(f"checkpoint {folder}: no safetensors under {MODEL_FOLDER}/")
        result = self.model.load_state_dict(weights, strict=False)
        tied = {"lm_head.weight"} if getattr(self.model.config, "tie_word_embeddings", False) else set()
        if set(result.missing_keys) - tied or result.unexpected_keys:
            raise ModelNotFoundError(
                f"checkpoint {folder}: its weights do not fit the model (missing {result.missing_keys}, "
                f"unexpected {result.unexpected_keys})"
            )
        state = torch.load(folder / OPTIMIZER_FILE, map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps_taken = int(state["steps_taken"])

    def close(self) -> None:
        self.model = None
        self.reference = None
