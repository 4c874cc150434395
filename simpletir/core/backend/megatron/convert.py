"""Hugging Face ⇄ Megatron-core weights for dense Qwen2 / Llama, at any tensor-parallel size.

Two steps each way, so that sharding is one rule per parameter and layout is one rule per name:

* layout: HF tensors ⇄ the *full* (unsharded) Megatron tensor. Megatron stores attention as one
  ``linear_qkv`` whose rows are grouped by KV head: for each of the ``ng`` query groups, its
  ``heads_per_group`` query heads, then its key head, then its value head (weight and bias). The
  MLP's gate and up projections are one ``linear_fc1`` and the vocabulary is padded to a multiple
  of the TP size (zero rows; their logits are masked);
* sharding: the full tensor is cut in ``tp`` equal chunks along the parameter's partition
  dimension (0 for column-parallel and vocab-parallel, 1 for row-parallel; norms are
  replicated). ``linear_fc1`` is the exception: each rank holds ``[gate_r; up_r]``, so gate and up
  are cut separately. Gathering is the inverse: an all-gather over the TP group, then the same cut
  undone.

Export streams ``(hf_name, tensor)`` one parameter at a time (weight sync buckets them), so no rank
ever holds more than one full parameter beyond its shard. The same functions carry gradients and
Adam moments, which have the parameters' shapes: that is how a checkpoint stays TP-independent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor

from simpletir.core.backend.megatron.model import ModelShape, padded_vocab

LAYER = "decoder.layers."


def partition_dim(name: str) -> int | None:
    """The dimension ``name`` is split along over TP ranks (None: replicated)."""
    if name.endswith(
        ("word_embeddings.weight", "output_layer.weight", "linear_qkv.weight", "linear_qkv.bias")
    ):
        return 0
    if name.endswith("linear_fc1.weight"):
        return 0
    if name.endswith(("linear_proj.weight", "linear_fc2.weight")):
        return 1
    if "layernorm" in name:
        return None
    raise KeyError(f"megatron parameter {name!r}: no sharding rule (unsupported model layout)")


def mark_tensor_parallel(model: torch.nn.Module) -> None:
    """Set megatron's TP attributes on every sharded parameter.

    Megatron sets them only while initialising weights (``perform_initialization``), which this
    backend skips because it loads HF weights; the TP-aware grad norm reads them.
    """
    for name, param in model.named_parameters():
        dim = partition_dim(name)
        if dim is not None:  # megatron's own setter refuses parameters that have some already
            param.tensor_model_parallel = True  # type: ignore[attr-defined]
            param.partition_dim = dim  # type: ignore[attr-defined]
            param.partition_stride = 1  # type: ignore[attr-defined]


# -- layout: HF <-> full Megatron tensors -----------------------------------------------------


def _layer_hf(index: int, suffix: str) -> str:
    return f"model.layers.{index}.{suffix}"


def hf_names(shape: ModelShape, name: str) -> list[str]:
    """The HF tensors one Megatron parameter is made of."""
    if name == "embedding.word_embeddings.weight":
        return ["model.embed_tokens.weight"]
    if name == "output_layer.weight":
        return ["lm_head.weight"]
    if name == "decoder.final_layernorm.weight":
        return ["model.norm.weight"]
    index_text, _, rest = name.removeprefix(LAYER).partition(".")
    i = int(index_text)
    simple = {
        "input_layernorm.weight": "input_layernorm.weight",
        "pre_mlp_layernorm.weight": "post_attention_layernorm.weight",
        "self_attention.linear_proj.weight": "self_attn.o_proj.weight",
        "mlp.linear_fc2.weight": "mlp.down_proj.weight",
    }
    if rest in simple:
        return [_layer_hf(i, simple[rest])]
    if rest in ("self_attention.linear_qkv.weight", "self_attention.linear_qkv.bias"):
        kind = rest.rsplit(".", 1)[1]
        return [_layer_hf(i, f"self_attn.{p}_proj.{kind}") for p in "qkv"]
    if rest == "mlp.linear_fc1.weight":
        return [_layer_hf(i, "mlp.gate_proj.weight"), _layer_hf(i, "mlp.up_proj.weight")]
    raise KeyError(f"megatron parameter {name!r}: no HF counterpart (unsupported model layout)")


def to_megatron(shape: ModelShape, name: str, hf: list[Tensor], tp: int) -> Tensor:
    """The full Megatron tensor ``name`` from its HF tensors (in :func:`hf_names` order)."""
    if name.endswith(("word_embeddings.weight", "output_layer.weight")):
        (table,) = hf
        pad = padded_vocab(shape, tp) - table.shape[0]
        return torch.cat([table, table.new_zeros(pad, table.shape[1])]) if pad else table
    if "linear_qkv" in name:
        q, k, v = hf
        ng, hd = shape.num_kv_heads, shape.head_dim
        tail = q.shape[1:]
        grouped = torch.cat(
            [
                q.reshape(ng, shape.heads_per_group * hd, *tail),
                k.reshape(ng, hd, *tail),
                v.reshape(ng, hd, *tail),
            ],
            dim=1,
        )
        return grouped.reshape(-1, *tail)
    if name.endswith("linear_fc1.weight"):
        return torch.cat(hf)  # [gate; up]: the per-rank interleave is a sharding matter
    (single,) = hf
    return single


def to_hf(shape: ModelShape, name: str, full: Tensor) -> list[tuple[str, Tensor]]:
    """The inverse of :func:`to_megatron`."""
    names = hf_names(shape, name)
    if name.endswith(("word_embeddings.weight", "output_layer.weight")):
        return [(names[0], full[: shape.vocab_size])]
    if "linear_qkv" in name:
        ng, hd = shape.num_kv_heads, shape.head_dim
        tail = full.shape[1:]
        grouped = full.reshape(ng, (shape.heads_per_group + 2) * hd, *tail)
        q, k, v = grouped.split([shape.heads_per_group * hd, hd, hd], dim=1)
        return [(n, t.reshape(-1, *tail)) for n, t in zip(names, (q, k, v), strict=True)]
    if name.endswith("linear_fc1.weight"):
        gate, up = full.chunk(2, dim=0)
        return [(names[0], gate), (names[1], up)]
    return [(names[0], full)]


# -- sharding ---------------------------------------------------------------------------------


def shard(name: str, full: Tensor, rank: int, tp: int) -> Tensor:
    """This rank's piece of the full Megatron tensor ``name``."""
    dim = partition_dim(name)
    if dim is None or tp == 1:
        return full
    if name.endswith("linear_fc1.weight"):
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp, dim=0)[rank], up.chunk(tp, dim=0)[rank]])
    return full.chunk(tp, dim=dim)[rank]


def unshard(name: str, pieces: list[Tensor]) -> Tensor:
    """The full tensor from every rank's piece (rank order)."""
    dim = partition_dim(name)
    if dim is None or len(pieces) == 1:
        return pieces[0]
    if name.endswith("linear_fc1.weight"):
        halves = [p.chunk(2, dim=0) for p in pieces]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves])
    return torch.cat(pieces, dim=dim)


def gather(name: str, local: Tensor, group: object | None, tp: int) -> Tensor:
    """All-gather ``local`` over the TP group into the full tensor (every rank gets it)."""
    if tp == 1 or partition_dim(name) is None:
        return local
    pieces = [torch.empty_like(local) for _ in range(tp)]
    torch.distributed.all_gather(pieces, local.contiguous(), group=group)
    return unshard(name, pieces)


# -- whole models -----------------------------------------------------------------------------


def load_from_hf(
    shape: ModelShape,
    named_params: Iterable[tuple[str, Tensor]],
    read_hf: Callable[[str], Tensor],
    rank: int,
    tp: int,
) -> None:
    """Copy HF tensors (``read_hf(name)``) into this rank's shards, in place, checking shapes."""
    with torch.no_grad():
        for name, param in named_params:
            full = to_megatron(shape, name, [read_hf(n) for n in hf_names(shape, name)], tp)
            piece = shard(name, full, rank, tp)
            if piece.shape != param.shape:
                raise ValueError(
                    f"{name}: the HF weights give a shard of {tuple(piece.shape)}, the model has "
                    f"{tuple(param.shape)} (config and weights disagree?)"
                )
            param.copy_(piece.to(param.dtype))


def iter_hf(
    shape: ModelShape, named_local: Iterable[tuple[str, Tensor]], group: object | None, tp: int
) -> Iterator[tuple[str, Tensor]]:
    """``(hf_name, full tensor)`` of every local shard, gathered over TP, one parameter at a time.

    A collective per parameter: every rank of the TP group must consume this generator in step.
    """
    for name, local in named_local:
        yield from to_hf(shape, name, gather(name, local.detach(), group, tp))
