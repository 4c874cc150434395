"""One tensor-parallel rank of the Megatron backend: its shard of the policy, its optimiser.

Every rank runs the same calls in the same order (the controller in
:mod:`simpletir.core.backend.megatron` sees to that); the collectives inside them (vocab-parallel
log-probs, the grad norm, gathers for export) are what keeps them in step. Results are identical
on every rank; the controller uses rank 0's.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from simpletir.core.backend.base import MODEL_FOLDER, warmup_lr
from simpletir.core.backend.megatron import convert
from simpletir.core.backend.megatron.model import build_gpt_model, check_divisible, model_shape, padded_vocab
from simpletir.core.backend.megatron.parallel_math import (
    clip_gradients,
    global_grad_norm,
    logprobs_and_entropy,
    mask_padded_vocab,
)
from simpletir.core.errors import ModelNotFoundError
from simpletir.core.trainer.tensors import (
    TrainBatch,
    logprobs_by_micro_batch,
    micro_batches,
    response_positions,
)

if TYPE_CHECKING:
    from simpletir.core.backend.base import LossFn
    from simpletir.core.config import ExperimentConfig

OPTIMIZER_FOLDER = "optimizer"  # Adam moments in HF names: a checkpoint resumes at any TP size
OPTIMIZER_STATE = "optimizer_state.json"
FILE_BYTES = 2 << 30  # safetensors files of at most ~2 GiB, like save_pretrained's shards
HF_SIDE_FILES = ("config.json", "generation_config.json")


class HFWeights:
    """Tensors of a HF folder's safetensors files, read one at a time by name."""

    def __init__(self, folder: Path) -> None:
        from safetensors import safe_open

        self.folder = folder
        self.where: dict[str, Path] = {}
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise ModelNotFoundError(f"{folder}: no safetensors weights")
        for file in files:
            with safe_open(str(file), framework="pt") as handle:
                self.where.update(dict.fromkeys(handle.keys(), file))

    def read(self, name: str, *, tied_to: str | None = None) -> Tensor:
        from safetensors import safe_open

        if name not in self.where and tied_to is not None:
            name = tied_to
        if name not in self.where:
            raise ModelNotFoundError(f"{self.folder}: no tensor {name!r} in its safetensors files")
        with safe_open(str(self.where[name]), framework="pt") as handle:
            return handle.get_tensor(name).float()


def write_safetensors(folder: Path, tensors: Iterator[tuple[str, Tensor]], prefix: str = "model") -> None:
    """Stream ``tensors`` into ``prefix-0000k-of-0000n.safetensors`` files plus an index."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    files: list[dict[str, Tensor]] = [{}]
    size = 0
    written: list[Path] = []

    def flush() -> None:
        path = folder / f"{prefix}-part{len(written):05d}.safetensors"
        save_file(files[-1], str(path), metadata={"format": "pt"})
        written.append(path)
        files.append({})

    for name, tensor in tensors:
        if size and size + tensor.numel() * tensor.element_size() > FILE_BYTES:
            flush()
            size = 0
        files[-1][name] = tensor.detach().to("cpu").contiguous().clone()
        size += tensor.numel() * tensor.element_size()
    flush()
    # the names HF expects: model-00001-of-00002.safetensors + model.safetensors.index.json
    total = len(written)
    weight_map: dict[str, str] = {}
    for index, path in enumerate(written, start=1):
        final = folder / f"{prefix}-{index:05d}-of-{total:05d}.safetensors"
        path.rename(final)
        from safetensors import safe_open

        with safe_open(str(final), framework="pt") as handle:
            weight_map.update(dict.fromkeys(handle.keys(), final.name))
    index_file = folder / f"{prefix}.safetensors.index.json"
    index_file.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))


def _read_prefixed(weights: HFWeights, prefix: str, name: str) -> Tensor:
    return weights.read(prefix + name)


class MegatronRank:
    """This process's shard of the policy (and of the reference model), and its AdamW."""

    def __init__(self, model_dir: Path, config: ExperimentConfig, device: torch.device) -> None:
        from megatron.core import parallel_state
        from transformers import AutoConfig

        self.config = config
        self.model_dir = Path(model_dir)
        self.device = device
        tp = config.trainer.tensor_parallel_size
        if not parallel_state.model_parallel_is_initialized():
            parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp)
        self.tp = tp
        self.tp_rank = parallel_state.get_tensor_model_parallel_rank()
        self.group = parallel_state.get_tensor_model_parallel_group() if tp > 1 else None
        self.shape = model_shape(AutoConfig.from_pretrained(model_dir), str(model_dir))
        check_divisible(self.shape, tp)
        self.vocab_start = self.tp_rank * (padded_vocab(self.shape, tp) // tp)
        self.temperature = config.rollout.temperature or 1.0
        self.bf16 = config.trainer.param_dtype == "bfloat16"
        if device.type == "cuda":  # megatron's model-parallel RNG (CPU has no tracker to seed)
            from megatron.core import tensor_parallel

            tensor_parallel.model_parallel_cuda_manual_seed(config.seed)
        weights = HFWeights(self.model_dir)
        self.model = self._build(weights)
        self.model.train()  # dropout is 0 in the config: train() and eval() are the same function
        self.reference = (
            self._build(weights).eval().requires_grad_(False) if config.algorithm.use_kl_loss else None
        )
        a = config.algorithm
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # bfloat16 parameters: AdamW updates float32 master copies, which carry the TP attributes
        # (the grad norm reads them) and are what checkpoints and weight sync take
        self.masters = [self._master_of(p) for p in self.params] if self.bf16 else self.params
        self.names = [name for name, _ in self.model.named_parameters()]
        if self.bf16:  # from the checkpoint's float32 values, not from their bfloat16 rounding
            self._load_hf(zip(self.names, self.masters, strict=True), weights.read)
        self.optimizer = torch.optim.AdamW(
            self.masters, lr=a.lr, betas=(float(a.betas[0]), float(a.betas[1])), weight_decay=a.weight_decay
        )
        self.steps_taken = 0

    def _build(self, weights: HFWeights) -> Any:
        model = build_gpt_model(self.shape, tp=self.tp, on_cuda=self.device.type == "cuda", bf16=self.bf16)
        convert.mark_tensor_parallel(model)
        self._load_hf(model.named_parameters(), weights.read)
        return model

    @staticmethod
    def _master_of(param: torch.nn.Parameter) -> torch.nn.Parameter:
        from megatron.core.tensor_parallel import copy_tensor_model_parallel_attributes

        master = torch.nn.Parameter(param.detach().float().clone())
        copy_tensor_model_parallel_attributes(master, param)
        return master

    def _load_hf(self, named: Iterable[tuple[str, Tensor]], read: Callable[..., Tensor]) -> None:
        def read_tied(name: str) -> Tensor:
            tied = "model.embed_tokens.weight" if name == "lm_head.weight" else None
            return read(name, tied_to=tied) if tied else read(name)

        convert.load_from_hf(self.shape, named, read_tied, self.tp_rank, self.tp)

    # -- forward --------------------------------------------------------------------------
    def _logits(self, model: Any, micro: TrainBatch) -> Tensor:
        """This rank's vocabulary slice of the logits at response positions, ``[B, T, V/tp]``.

        GPTModel's own modules, called in its order (embedding, RoPE, decoder with the final norm,
        output layer) rather than ``GPTModel.forward``: the LM head then runs only on the hidden
        states that predict response tokens, gathered batch-first, so the logits come out
        ``[B, T, V/tp]`` without the sequence-first ``[L, B, V/tp]`` tensor and its transposed copy.
        Rows are right-padded: positions ``0..L-1`` are right for every row and the causal mask
        keeps valid tokens from seeing the padding.
        """
        ids = micro.input_ids.to(self.device)
        positions = torch.arange(ids.shape[1], device=self.device).expand_as(ids)
        hidden = model.embedding(input_ids=ids, position_ids=positions)  # [L, B, H]
        rotary = model.rotary_pos_emb(ids.shape[1])
        hidden = model.decoder(hidden_states=hidden, attention_mask=None, rotary_pos_emb=rotary)
        picked = response_positions(micro).to(self.device)  # [B, T]
        hidden = hidden.transpose(0, 1)  # [B, L, H] view
        hidden = hidden.gather(1, picked.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        weight = model.shared_embedding_or_output_weight() if self.shape.tied_embeddings else None
        logits, _ = model.output_layer(hidden, weight=weight)
        return logits

    def _forward(self, model: Any, micro: TrainBatch, with_entropy: bool) -> tuple[Tensor, Tensor | None]:
        logits = self._logits(model, micro).float() / self.temperature
        logits = mask_padded_vocab(logits, self.vocab_start, self.shape.vocab_size)
        return logprobs_and_entropy(
            logits, micro.responses.to(self.device), self.vocab_start, self.group, with_entropy
        )

    def full_logits(self, batch: TrainBatch) -> Tensor:
        """Logits at response positions over the whole (unpadded) vocabulary, gathered over TP.

        For parity checks only: training never gathers logits.
        """
        with torch.no_grad():
            local = self._logits(self.model, batch).float()
            if self.group is not None:
                pieces = [torch.empty_like(local) for _ in range(self.tp)]
                torch.distributed.all_gather(pieces, local.contiguous(), group=self.group)
                local = torch.cat(pieces, dim=-1)
        return local[..., : self.shape.vocab_size].cpu()

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

    def logprobs(self, batch: TrainBatch, with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
        return self._no_grad_pass(self.model, batch, with_entropy)

    def reference_logprobs(self, batch: TrainBatch) -> Tensor:
        if self.reference is None:
            raise RuntimeError("reference_logprobs: no reference model (algorithm.use_kl_loss is off)")
        return self._no_grad_pass(self.reference, batch, False)[0]

    # -- update ---------------------------------------------------------------------------
    def current_lr(self) -> float:
        a = self.config.algorithm
        return warmup_lr(a.lr, a.warmup_steps, self.steps_taken)

    def train_step(self, batch: TrainBatch, loss_fn: LossFn, with_entropy: bool) -> dict[str, float]:
        t = self.config.trainer
        self.optimizer.zero_grad(set_to_none=True)
        for p in self.params:
            p.grad = None
        for micro in micro_batches(batch, t.micro_batch_size, t.micro_batch_tokens):
            logprobs, entropy = self._forward(self.model, micro, with_entropy)
            loss_fn(micro, logprobs, entropy).backward()
        if self.bf16:
            for master, p in zip(self.masters, self.params, strict=True):
                master.grad = None if p.grad is None else p.grad.float()
        grad_norm = global_grad_norm(self.masters, self.group, self.device)
        lr = self.current_lr()
        skipped = not math.isfinite(grad_norm)
        if skipped:  # one bad batch must not write NaN into every weight
            self.optimizer.zero_grad(set_to_none=True)
        else:
            clip_gradients(self.masters, self.config.grad_clip, grad_norm)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
            self.steps_taken += 1
            if self.bf16:
                with torch.no_grad():
                    for master, p in zip(self.masters, self.params, strict=True):
                        p.copy_(master)
        return {"actor/grad_norm": grad_norm, "actor/lr": lr, "actor/skipped_step": float(skipped)}

    # -- weights in HF names --------------------------------------------------------------
    def _local(self, kind: str) -> Iterator[tuple[str, Tensor]]:
        """This rank's shards (float32 masters when the parameters are bfloat16)."""
        for name, p in zip(self.names, self.masters, strict=True):
            if kind == "param":
                yield name, p.detach()
            elif kind == "grad":
                yield name, p.grad if p.grad is not None else torch.zeros_like(p)
            else:  # an Adam moment: zeros before the first step
                yield name, self.optimizer.state.get(p, {}).get(kind, torch.zeros_like(p))

    def hf_tensors(self, kind: str = "param") -> Iterator[tuple[str, Tensor]]:
        """Full tensors in HF names, gathered over TP (a collective: every rank iterates)."""
        yield from convert.iter_hf(self.shape, self._local(kind), self.group, self.tp)

    def export(self, folder: Path) -> None:
        """An HF model folder (rank 0 writes; the others only take part in the gathers)."""
        writing = self.tp_rank == 0
        tensors = self.hf_tensors("param")
        if writing:
            write_safetensors(folder, tensors)
            for name in HF_SIDE_FILES:
                if (self.model_dir / name).is_file():
                    shutil.copy2(self.model_dir / name, folder / name)
        else:
            for _ in tensors:
                pass

    def save(self, folder: Path) -> None:
        self.export(folder / MODEL_FOLDER)
        for kind in ("exp_avg", "exp_avg_sq"):
            tensors = ((f"{kind}.{name}", t) for name, t in self.hf_tensors(kind))
            if self.tp_rank == 0:
                write_safetensors(folder / OPTIMIZER_FOLDER, tensors, prefix=kind)
            else:
                for _ in tensors:
                    pass
        if self.tp_rank == 0:
            state = {"steps_taken": self.steps_taken, "tensor_parallel_size": self.tp}
            (folder / OPTIMIZER_FOLDER / OPTIMIZER_STATE).write_text(json.dumps(state))

    def load(self, folder: Path) -> None:
        model = HFWeights(folder / MODEL_FOLDER)
        self._load_hf(self.model.named_parameters(), model.read)
        if self.bf16:  # the checkpoint holds the float32 masters: load them exactly
            self._load_hf(zip(self.names, self.masters, strict=True), model.read)
        state_file = folder / OPTIMIZER_FOLDER / OPTIMIZER_STATE
        if not state_file.is_file():
            raise ModelNotFoundError(
                f"checkpoint {folder}: no {OPTIMIZER_FOLDER}/{OPTIMIZER_STATE} (not a megatron checkpoint?)"
            )
        self.steps_taken = int(json.loads(state_file.read_text())["steps_taken"])
        moments = HFWeights(folder / OPTIMIZER_FOLDER)
        self.optimizer.state.clear()
        if self.steps_taken == 0:
            return
        shards: dict[str, dict[str, Tensor]] = {}
        for kind in ("exp_avg", "exp_avg_sq"):
            holder = {name: torch.empty_like(p) for name, p in zip(self.names, self.masters, strict=True)}
            read = functools.partial(_read_prefixed, moments, f"{kind}.")
            convert.load_from_hf(self.shape, holder.items(), read, self.tp_rank, self.tp)
            shards[kind] = holder
        for name, p in zip(self.names, self.masters, strict=True):
            self.optimizer.state[p] = {
                "step": torch.tensor(float(self.steps_taken)),
                "exp_avg": shards["exp_avg"][name],
                "exp_avg_sq": shards["exp_avg_sq"][name],
            }

    def close(self) -> None:
        self.model = None
        self.reference = None
        self.optimizer = None  # type: ignore[assignment]
