"""Tensor-parallel pieces of the objective: log-probs and entropy from vocab-sharded logits, and
the global gradient norm over TP-sharded parameters. Pure functions of tensors and a process group.

Logits are never gathered: each rank holds ``[..., V/tp]`` and three all-reduces (max, sum of
exponentials, the target's logit) give every rank the exact full-softmax log-prob; a fourth gives
the entropy. The sums are all-reduced with megatron's ``reduce_from_tensor_model_parallel_region``
(forward: all-reduce; backward: identity), which is the right gradient for a sum over ranks.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

# A masked logit: exp() of it underflows to exactly 0, and 0 * it stays finite (no NaN entropy).
MASKED_LOGIT = -1e30


def mask_padded_vocab(logits: Tensor, vocab_start: int, vocab_size: int) -> Tensor:
    """Mask the logits of padding rows (ids >= ``vocab_size``) in this rank's vocabulary slice."""
    local = logits.shape[-1]
    real = vocab_size - vocab_start
    if real >= local:
        return logits
    keep = torch.arange(local, device=logits.device) < real
    return logits.masked_fill(~keep, MASKED_LOGIT)


def logprobs_and_entropy(
    logits: Tensor, targets: Tensor, vocab_start: int, group: object | None, with_entropy: bool
) -> tuple[Tensor, Tensor | None]:
    """Per-token ``log softmax(logits)[target]`` (and entropy) from this rank's vocabulary slice.

    ``logits``: ``[..., V/tp]`` float32, already divided by the temperature and padding-masked;
    ``targets``: ``[...]`` global token ids. Exact: equals a full-vocabulary log-softmax.
    Without a group (TP=1) it is torch's fused log-softmax, fewer passes over the logits.
    """
    if group is None:  # the whole vocabulary is here: torch's fused log-softmax (as the hf backend)
        log_probs = torch.log_softmax(logits, dim=-1)
        picked = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return picked, (-(log_probs.exp() * log_probs).sum(-1) if with_entropy else None)

    from megatron.core.tensor_parallel.mappings import reduce_from_tensor_model_parallel_region as reduce_sum

    with torch.no_grad():  # any shift gives the same log-softmax; the max keeps exp() in range
        shift = logits.max(dim=-1).values
        torch.distributed.all_reduce(shift, op=torch.distributed.ReduceOp.MAX, group=group)
    shifted = logits - shift.unsqueeze(-1)
    exp = shifted.exp()
    log_z = reduce_sum(exp.sum(-1), group=group).log()

    local_ids = targets - vocab_start
    here = (local_ids >= 0) & (local_ids < logits.shape[-1])
    picked = shifted.gather(-1, local_ids.clamp(0, logits.shape[-1] - 1).unsqueeze(-1)).squeeze(-1)
    target_logit = reduce_sum(torch.where(here, picked, torch.zeros_like(picked)), group=group)
    logprobs = target_logit - log_z

    entropy = None
    if with_entropy:
        probs = exp / log_z.exp().unsqueeze(-1)
        expected_logit = reduce_sum((probs * shifted).sum(-1), group=group)
        entropy = log_z - expected_logit
    return logprobs, entropy


def global_grad_norm(
    params: Iterable[torch.nn.Parameter], group: object | None, device: torch.device | None = None
) -> float:
    """The L2 norm of the gradient of the whole (unsharded) model.

    Every TP-sharded parameter's squared gradient counts once per rank (its shards add up to the
    whole); a replicated one (norms: identical on every rank with sequence parallelism off) counts
    on TP rank 0 only. Megatron's ``clip_grads`` does the same but allocates CUDA scalars.
    """
    from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate
    from megatron.core.transformer.module import param_is_not_shared

    # on the parameters' device: NCCL reduces CUDA tensors, gloo CPU ones
    total = torch.zeros((), dtype=torch.float64, device=device)
    for p in params:
        if p.grad is None or not param_is_not_shared(p) or not param_is_not_tensor_parallel_duplicate(p):
            continue
        total += p.grad.detach().double().pow(2).sum()
    if group is not None:
        torch.distributed.all_reduce(total, group=group)
    return float(total.sqrt())


def clip_gradients(params: Iterable[torch.nn.Parameter], max_norm: float, total_norm: float) -> None:
    """Scale every local gradient by ``max_norm / (total_norm + 1e-6)`` when that is below 1
    (``torch.nn.utils.clip_grad_norm_``'s rule, so TP=1 matches the ``hf`` backend)."""
    scale = max_norm / (total_norm + 1e-6)
    if max_norm <= 0 or scale >= 1.0:
        return
    for p in params:
        if p.grad is not None:
            p.grad.detach().mul_(scale)
