"""megatron-core's ``GPTModel`` for a Hugging Face Qwen2 / Llama config, on CPU (gloo) or CUDA (NCCL).

One layer spec serves both paths: megatron's local spec (its own column/row-parallel linears,
RMSNorm, SwiGLU MLP) with the core attention replaced through the spec's own extension point by
:class:`SDPACoreAttention` (``torch.nn.functional.scaled_dot_product_attention``). Megatron's stock
``DotProductAttention`` allocates its score buffer and causal mask on CUDA and forks the CUDA RNG
tracker for attention dropout; SDPA needs none of that, is what transformers itself runs, and is
fused on GPUs (flash / memory-efficient kernels). Transformer Engine's spec (fused norm+linear,
sequence parallelism, packed sequences) is not used: it renames the norms into the linears and
could not be tested here (no GPU); the converter would need those names first.

What differs on CPU, and why (everything is per instance, nothing of torch or megatron is patched):

* ``use_cpu_initialization=True``: megatron otherwise allocates the weights on the current CUDA
  device. Weights are loaded from the HF checkpoint right after, so initialisation is only a
  placeholder (``perform_initialization=False``);
* RoPE: ``RotaryEmbedding.get_emb`` moves ``inv_freq`` to ``torch.cuda.current_device()`` on
  its first call; on CPU that one method is overridden on the instance (:func:`_keep_rope_on_cpu`);
* no CUDA RNG tracker: dropout is off in RL training (log-probs must be a function of the weights),
  and nothing else forks it on this spec.
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from simpletir.core.errors import ConfigError

SUPPORTED_ARCHITECTURES = ("Qwen2ForCausalLM", "LlamaForCausalLM")


@dataclass(frozen=True)
class ModelShape:
    """The parts of a HF config the Megatron model and the converter need."""

    architecture: str
    vocab_size: int
    hidden_size: int
    ffn_hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    qkv_bias: bool
    tied_embeddings: bool
    rms_eps: float
    rope_theta: float
    max_positions: int

    @property
    def heads_per_group(self) -> int:
        return self.num_heads // self.num_kv_heads


def _rope_theta(hf: Any) -> float:
    # transformers 5 keeps it in rope_parameters; 4.x as rope_theta
    params = getattr(hf, "rope_parameters", None) or {}
    scaling = getattr(hf, "rope_scaling", None) or {}
    kind = params.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if kind not in (None, "default"):
        raise ConfigError(
            f"trainer.backend=megatron: RoPE scaling {kind!r} of this model is not supported "
            "(plain RoPE only); use trainer.backend=hf"
        )
    return float(params.get("rope_theta", getattr(hf, "rope_theta", 10000.0)))


def model_shape(hf: Any, source: str) -> ModelShape:
    """Read a transformers config; refuse what the converter does not map, naming it."""
    archs = list(getattr(hf, "architectures", None) or [])
    if not archs or archs[0] not in SUPPORTED_ARCHITECTURES:
        raise ConfigError(
            f"trainer.backend=megatron: {source} is {archs or 'an unknown architecture'}; "
            f"the Megatron backend converts {', '.join(SUPPORTED_ARCHITECTURES)} (use trainer.backend=hf)"
        )
    arch = archs[0]
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    if getattr(hf, "sliding_window", None) and getattr(hf, "use_sliding_window", False):
        raise ConfigError(f"trainer.backend=megatron: {source} uses sliding-window attention (unsupported)")
    if arch != "Qwen2ForCausalLM" and getattr(hf, "mlp_bias", False):
        raise ConfigError(f"trainer.backend=megatron: {source} has MLP biases (unsupported)")
    return ModelShape(
        architecture=arch,
        vocab_size=int(hf.vocab_size),
        hidden_size=int(hf.hidden_size),
        ffn_hidden_size=int(hf.intermediate_size),
        num_layers=int(hf.num_hidden_layers),
        num_heads=int(hf.num_attention_heads),
        num_kv_heads=int(getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads),
        head_dim=int(head_dim),
        qkv_bias=arch == "Qwen2ForCausalLM" or bool(getattr(hf, "attention_bias", False)),
        tied_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
        rms_eps=float(hf.rms_norm_eps),
        rope_theta=_rope_theta(hf),
        max_positions=int(getattr(hf, "max_position_embeddings", 4096)),
    )


def check_divisible(shape: ModelShape, tp: int) -> None:
    for what, value in (
        ("num_attention_heads", shape.num_heads),
        ("num_key_value_heads", shape.num_kv_heads),
        ("intermediate_size", shape.ffn_hidden_size),
    ):
        if value % tp:
            raise ConfigError(
                f"trainer.tensor_parallel_size={tp} does not divide the model's {what} ({value}); "
                "pick a TP size that divides the head counts and the MLP width"
            )


def padded_vocab(shape: ModelShape, tp: int) -> int:
    """Megatron splits the vocabulary evenly over TP ranks: pad it to a multiple of ``tp``.

    The padded rows' logits are masked out (:func:`mask_padded_vocab`), so padding changes no
    probability.
    """
    return math.ceil(shape.vocab_size / tp) * tp


class SDPACoreAttention(torch.nn.Module):
    """Megatron's ``CoreAttention`` protocol on ``scaled_dot_product_attention``: causal, no dropout.

    Takes query ``[sq, b, np, hn]`` and key/value ``[sk, b, ng, hn]`` (``ng`` query groups of
    GQA); returns ``[sq, b, np * hn]``, like megatron's ``DotProductAttention``. Rows are
    right-padded, so the causal mask alone keeps every valid position from seeing padding.
    """

    def __init__(self, config: Any, layer_number: int, attn_mask_type: Any, attention_type: str, **_: Any):
        super().__init__()
        self.config = config
        self.softmax_scale = getattr(config, "softmax_scale", None)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Tensor | None,
        attn_mask_type: Any = None,
        attention_bias: Tensor | None = None,
        packed_seq_params: Any = None,
    ) -> Tensor:
        if packed_seq_params is not None or attention_bias is not None:
            raise NotImplementedError("SDPACoreAttention: packed sequences and attention bias are not used")
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, hn]
        groups = q.shape[1] // k.shape[1]
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=self.softmax_scale
        )
        sq, b = query.shape[0], query.shape[1]
        return out.permute(2, 0, 1, 3).reshape(sq, b, -1)


def _keep_rope_on_cpu(model: Any) -> None:
    """Replace ``get_emb`` on this model's rotary embedding by a copy without the move to CUDA."""
    rope = model.rotary_pos_emb
    original = type(rope).get_emb

    def get_emb(self: Any, max_seq_len: int, offset: int = 0) -> Tensor:
        freqs = self.get_freqs_non_repeated(max_seq_len, offset)
        if not self.rotary_interleaved:
            emb = torch.cat((freqs, freqs), dim=-1)
        else:
            emb = torch.stack((freqs.view(-1, 1), freqs.view(-1, 1)), dim=-1).view(freqs.shape[0], -1)
        return emb[:, None, None, :]

    get_emb.__doc__ = original.__doc__
    rope.get_emb = types.MethodType(get_emb, rope)


def _layer_spec() -> Any:
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    spec.submodules.self_attention.submodules.core_attention = SDPACoreAttention
    return spec


def build_gpt_model(shape: ModelShape, *, tp: int, on_cuda: bool, bf16: bool = False) -> Any:
    """The GPTModel for ``shape`` on this rank (parallel_state must be initialised)."""
    import torch.nn.functional as F
    from megatron.core.models.gpt import GPTModel
    from megatron.core.transformer import TransformerConfig

    dtype = torch.bfloat16 if bf16 else torch.float32
    config = TransformerConfig(
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        ffn_hidden_size=shape.ffn_hidden_size,
        num_attention_heads=shape.num_heads,
        num_query_groups=shape.num_kv_heads,
        kv_channels=shape.head_dim,
        tensor_model_parallel_size=tp,
        normalization="RMSNorm",
        layernorm_epsilon=shape.rms_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=shape.qkv_bias,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        use_cpu_initialization=not on_cuda,
        perform_initialization=False,  # the HF weights are loaded right after
        params_dtype=dtype,
        bf16=bf16,
        pipeline_dtype=dtype,
    )
    model = GPTModel(
        config=config,
        transformer_layer_spec=_layer_spec(),
        vocab_size=padded_vocab(shape, tp),
        max_sequence_length=shape.max_positions,
        parallel_output=True,  # logits stay vocab-sharded: log-probs never gather them
        share_embeddings_and_output_weights=shape.tied_embeddings,
        position_embedding_type="rope",
        rotary_base=shape.rope_theta,  # a float theta works (a power)
    )
    if bf16:  # megatron's torch norms ignore params_dtype: without this they stay float32
        model = model.to(dtype=torch.bfloat16)
    if not on_cuda:
        _keep_rope_on_cpu(model)
    else:
        model = model.cuda()
    return model
