"""The GRPO / PPO objective as small pure tensor functions (no trainer, no backend).

Shapes: ``B`` responses, ``T`` response tokens (padded), ``V`` vocabulary. ``mask`` is the
per-token loss mask (1 = the policy generated this token and it is still trained on; tool
output, padding and filtered trajectories are 0). Every function treats masked positions as
absent: whatever they hold (padding garbage, NaN, inf) never reaches a loss or a metric.

Where this departs from textbook GRPO (Shao et al. 2024) -- all as in SimpleTIR's train.sh:
  * the ratio is clipped asymmetrically, ``[1 - 0.2, 1 + 0.28]`` (DAPO's clip-higher), and for
    negative advantages also bounded by ``clip_ratio_c = 3`` (dual-clip PPO, Ye et al. 2020);
  * the loss is a token mean over the whole (mini-)batch, not a mean of per-sequence means;
  * there is no KL term by default (``use_kl_loss=False``) and no entropy bonus.
Where it departs from SimpleTIR's code (verl 0.2 ``core_algos``):
  * a group of one sample gets advantage 0 (verl gave it ``r / (1 + eps)``: a full-size update
    from a single, unbaselined sample);
  * ``clipfrac_lower`` counts tokens where the dual clip binds (verl's compared a min with one
    of its own arguments and always reported 0);
  * rows with no loss tokens contribute 0 instead of NaN in ``seq-mean-token-mean``, and the
    log-ratio is clamped to ``[-20, 20]`` before ``exp`` so one stale token cannot give inf;
  * Dr.GRPO's constant (``seq-mean-token-sum-norm``) is the configured ``max_response_length``,
    passed in, not the padded width of the tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from simpletir.core.types import TrajectoryGroup

if TYPE_CHECKING:
    from simpletir.core.specs import PolicyLossFunction

LossAggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
KLEstimator = Literal["k1", "k3"]

GRPO_EPS = 1e-6  # as verl: keeps a zero-std group finite (it is filtered out upstream anyway)
LOG_RATIO_CLAMP = 20.0  # exp(20) ~ 5e8: far beyond any clip, still finite in fp32
K3_CLAMP = 10.0  # verl's low_var_kl clamps the per-token estimate to [-10, 10]


# --------------------------------------------------------------------------------------------
# masked reductions
# --------------------------------------------------------------------------------------------


def _bool_mask(mask: Tensor, like: Tensor) -> Tensor:
    if mask.shape != like.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} must equal values shape {tuple(like.shape)}")
    return mask.bool()


def masked_fill_zero(values: Tensor, mask: Tensor) -> Tensor:
    """``values`` with every masked-out entry set to 0, so NaN/inf there cannot propagate
    (``nan * 0`` is still nan, hence ``where`` and not a multiplication)."""
    return torch.where(_bool_mask(mask, values), values, torch.zeros_like(values))


def masked_sum(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    clean = masked_fill_zero(values, mask)
    return clean.sum() if dim is None else clean.sum(dim=dim)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean over unmasked entries; 0 (not NaN) where there are none."""
    total = masked_sum(values, mask, dim)
    count = mask.to(values.dtype).sum() if dim is None else mask.to(values.dtype).sum(dim=dim)
    return total / count.clamp(min=1.0)


# --------------------------------------------------------------------------------------------
# advantages
# --------------------------------------------------------------------------------------------


def _group_stats(scores: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(scores as float64, counts [B], means [B])``: each response's group size and group mean.

    float64 because sums of many 0/1 rewards lose precision in fp32. Checks shapes and refuses
    non-finite rewards, naming their positions.
    """
    if scores.dim() != 1 or group_ids.shape != scores.shape:
        raise ValueError(
            f"scores {tuple(scores.shape)} and group_ids {tuple(group_ids.shape)} must both be [B]"
        )
    if not torch.isfinite(scores).all():
        bad = torch.nonzero(~torch.isfinite(scores)).flatten().tolist()
        raise ValueError(f"non-finite rewards at positions {bad}: a reward function returned nan/inf")
    scores = scores.to(torch.float64)
    return scores, _per_group(torch.ones_like(scores), group_ids), _per_group(scores, group_ids, mean=True)


def _per_group(values: Tensor, group_ids: Tensor, *, mean: bool = False) -> Tensor:
    """For each response, the sum (or mean) of ``values`` over its group."""
    _, index = torch.unique(group_ids, return_inverse=True)
    num_groups = int(index.max().item()) + 1 if values.numel() else 0
    sums = torch.zeros(num_groups, dtype=values.dtype).index_add_(0, index, values)
    if mean:
        counts = torch.zeros(num_groups, dtype=values.dtype).index_add_(0, index, torch.ones_like(values))
        sums = sums / counts.clamp(min=1.0)
    return sums[index]


def grpo_advantages(
    scores: Tensor, group_ids: Tensor, *, norm_by_std: bool = True, eps: float = GRPO_EPS
) -> Tensor:
    """Outcome advantages, one per response: ``(r - mean_g) / (std_g + eps)`` within its group.

    ``scores`` is ``[B]`` (one scalar reward per response), ``group_ids`` ``[B]`` integers naming
    each response's group (the ``n`` samples of one prompt). ``std`` is the unbiased (Bessel)
    standard deviation, as ``torch.std``. ``norm_by_std=False`` gives Dr.GRPO's ``r - mean``.
    A group of one has no baseline, so its advantage is 0.
    """
    if scores.numel() == 0:
        _group_stats(scores, group_ids)  # still checks the shapes
        return scores.clone()
    scores, counts, means = _group_stats(scores, group_ids)
    centred = scores - means
    if norm_by_std:
        std = torch.sqrt(_per_group(centred**2, group_ids) / (counts - 1).clamp(min=1.0))
        centred = centred / (std + eps)
    # A group of one is its own mean, so its advantage is exactly 0 (verl's special case gave
    # it mean 0 and std 1 instead, i.e. an unbaselined ``r / (1 + eps)``).
    return centred.to(torch.float32)


def rloo_advantages(scores: Tensor, group_ids: Tensor) -> Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024): ``r_i - mean_{j != i} r_j`` within the group.

    Equal to ``n / (n - 1) * (r_i - mean_g)``; a group of one has no other sample, so 0.
    """
    if scores.numel() == 0:
        return scores.clone()
    scores, counts, means = _group_stats(scores, group_ids)
    others = (means * counts - scores) / (counts - 1).clamp(min=1.0)
    advantages = torch.where(counts > 1, scores - others, torch.zeros_like(scores))
    return advantages.to(torch.float32)


def reinforce_pp_advantages(scores: Tensor, group_ids: Tensor, *, eps: float = GRPO_EPS) -> Tensor:
    """REINFORCE++ with a group baseline (Hu 2025, verl's ``reinforce_plus_plus_baseline``):
    subtract the group mean, then whiten over the whole batch (``(x - mean_B) / (std_B + eps)``).

    Departs from verl in whitening over responses, not over tokens: a long response does not
    weigh more in the batch statistics than a short one (the outcome reward is per response).
    """
    if scores.numel() == 0:
        return scores.clone()
    scores, _, means = _group_stats(scores, group_ids)
    centred = scores - means
    if centred.numel() < 2:
        return torch.zeros_like(centred, dtype=torch.float32)
    whitened = (centred - centred.mean()) / (centred.std() + eps)
    return whitened.to(torch.float32)


def group_scores(groups: Sequence[TrajectoryGroup]) -> tuple[Tensor, Tensor]:
    """Flatten groups into ``(scores [B], group_ids [B])`` in group-then-sample order.

    Every trajectory of a group counts in its statistics, masked ones included: SimpleTIR
    masks a void-turn trajectory's loss but keeps its reward in the group baseline.
    """
    scores = [t.score for group in groups for t in group.trajectories]
    ids = [g for g, group in enumerate(groups) for _ in group.trajectories]
    return torch.tensor(scores, dtype=torch.float32), torch.tensor(ids, dtype=torch.long)


def token_advantages(advantages: Tensor, mask: Tensor) -> Tensor:
    """Broadcast ``[B]`` sequence advantages to ``[B, T]`` tokens, 0 where ``mask`` is 0."""
    if advantages.dim() != 1 or mask.dim() != 2 or mask.shape[0] != advantages.shape[0]:
        raise ValueError(
            f"advantages {tuple(advantages.shape)} must be [B] for a [B, T] mask {tuple(mask.shape)}"
        )
    expanded = advantages.unsqueeze(-1).expand(mask.shape)
    return masked_fill_zero(expanded, mask)


# --------------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------------


def aggregate_loss(
    token_losses: Tensor,
    mask: Tensor,
    mode: LossAggMode = "token-mean",
    *,
    max_response_length: int | None = None,
    denominator: float | None = None,
) -> Tensor:
    """Reduce ``[B, T]`` per-token losses to a scalar.

    * ``token-mean``: sum over unmasked tokens / their count (every token weighs the same; long
      responses weigh more). ``denominator`` overrides the count, so micro-batches of one
      mini-batch can share the mini-batch's token count under gradient accumulation.
    * ``seq-mean-token-mean``: mean over tokens within each response, then over the responses
      that have any loss token (a fully masked row is absent, not a 0 pulling the mean down).
    * ``seq-mean-token-sum-norm`` (Dr.GRPO): each response's token sum / ``max_response_length``,
      then the mean over all ``B`` rows (a constant normaliser: masked rows count as 0).
    With no loss token anywhere the result is 0, not NaN.
    """
    if token_losses.dim() != 2:
        raise ValueError(f"token_losses must be [B, T], got {tuple(token_losses.shape)}")
    if mode == "token-mean":
        count = float(mask.sum().item()) if denominator is None else denominator
        return masked_sum(token_losses, mask) / max(count, 1.0)
    row_sums = masked_sum(token_losses, mask, dim=-1)
    if mode == "seq-mean-token-mean":
        row_counts = mask.to(token_losses.dtype).sum(dim=-1)
        has_tokens = row_counts > 0
        row_means = row_sums / row_counts.clamp(min=1.0)
        return row_means.sum() / max(float(has_tokens.sum().item()), 1.0)
    if mode == "seq-mean-token-sum-norm":
        if max_response_length is None or max_response_length <= 0:
            raise ValueError(
                "loss_agg_mode 'seq-mean-token-sum-norm' needs max_response_length > 0, "
                f"got {max_response_length}"
            )
        return (row_sums / float(max_response_length)).sum() / max(token_losses.shape[0], 1)
    raise ValueError(
        f"loss_agg_mode {mode!r} is not one of 'token-mean', 'seq-mean-token-mean', 'seq-mean-token-sum-norm'"
    )


@dataclass(frozen=True)
class PolicyLoss:
    """The clipped surrogate and what it did. Scalars are 0-dim tensors (loss keeps its graph)."""

    loss: Tensor
    clipfrac: Tensor  # tokens where the [1-lo, 1+hi] clip changed the loss
    clipfrac_lower: Tensor  # tokens with A < 0 where the dual clip (ratio > c) bound
    approx_kl: Tensor  # mean of log(pi_old / pi) over loss tokens (verl's ppo_kl)
    clipfrac_low: Tensor  # the clip bound from below: A < 0 and ratio < 1 - lo
    clipfrac_high: Tensor  # the clip bound from above: A > 0 and ratio > 1 + hi (clip-higher's)


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.28,
    clip_ratio_c: float = 3.0,
    loss_agg_mode: LossAggMode = "token-mean",
    max_response_length: int | None = None,
    denominator: float | None = None,
    token_weights: Tensor | None = None,
) -> PolicyLoss:
    """PPO clipped surrogate with clip-higher and dual clip, all ``[B, T]`` per token.

    ``l = max(-A r, -A clip(r, 1 - lo, 1 + hi))``; for ``A < 0`` additionally
    ``l = min(l, -A c)`` so a token whose ratio exploded cannot push the loss without bound.
    ``token_weights`` (no gradient) multiply each token's loss before aggregation: the trainer
    passes truncated importance weights for the rollout engine / trainer mismatch there.
    """
    if clip_ratio_c <= 1.0:
        raise ValueError(f"clip_ratio_c must be > 1 (dual-clip lower bound), got {clip_ratio_c}")
    if clip_ratio_low < 0 or clip_ratio_high < 0:
        raise ValueError(f"clip ratios must be >= 0, got low={clip_ratio_low} high={clip_ratio_high}")
    _check_token_shapes(logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask)
    # Masked positions may hold anything (padding, -inf logprobs): zero them before any math.
    log_ratio = masked_fill_zero(logprobs - old_logprobs, mask).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    adv = masked_fill_zero(advantages, mask)
    ratio = torch.exp(log_ratio)

    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    ppo = torch.maximum(unclipped, clipped)
    dual_bound = -adv * clip_ratio_c
    negative = adv < 0
    token_losses = _weighted(torch.where(negative, torch.minimum(ppo, dual_bound), ppo), token_weights, mask)

    loss = aggregate_loss(
        token_losses, mask, loss_agg_mode, max_response_length=max_response_length, denominator=denominator
    )
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask)
        clipfrac_lower = masked_mean(((ppo > dual_bound) & negative).float(), mask)
        approx_kl = masked_mean(-log_ratio, mask)
        bound = clipped > unclipped
        clipfrac_low = masked_mean((bound & (ratio < 1.0)).float(), mask)
        clipfrac_high = masked_mean((bound & (ratio > 1.0)).float(), mask)
    return PolicyLoss(
        loss=loss,
        clipfrac=clipfrac,
        clipfrac_lower=clipfrac_lower,
        approx_kl=approx_kl,
        clipfrac_low=clipfrac_low,
        clipfrac_high=clipfrac_high,
    )


def _check_token_shapes(logprobs: Tensor, **others: Tensor) -> None:
    for name, tensor in others.items():
        if tensor.shape != logprobs.shape:
            raise ValueError(
                f"{name} shape {tuple(tensor.shape)} must equal logprobs shape {tuple(logprobs.shape)}"
            )


def _weighted(token_losses: Tensor, token_weights: Tensor | None, mask: Tensor) -> Tensor:
    if token_weights is None:
        return token_losses
    if token_weights.shape != token_losses.shape:
        raise ValueError(
            f"token_weights shape {tuple(token_weights.shape)} must equal "
            f"logprobs shape {tuple(token_losses.shape)}"
        )
    return token_losses * masked_fill_zero(token_weights.detach(), mask)


def reinforce_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    loss_agg_mode: LossAggMode = "token-mean",
    max_response_length: int | None = None,
    denominator: float | None = None,
    token_weights: Tensor | None = None,
) -> PolicyLoss:
    """The importance-weighted policy gradient without clipping: ``l = -A r`` per token.

    Its gradient is ``-A r grad log pi``, REINFORCE's on-policy (``r = 1``) and unbounded off it:
    the clip fractions it reports are always 0.
    """
    _check_token_shapes(logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask)
    log_ratio = masked_fill_zero(logprobs - old_logprobs, mask).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    token_losses = _weighted(-masked_fill_zero(advantages, mask) * torch.exp(log_ratio), token_weights, mask)
    loss = aggregate_loss(
        token_losses, mask, loss_agg_mode, max_response_length=max_response_length, denominator=denominator
    )
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    with torch.no_grad():
        approx_kl = masked_mean(-log_ratio, mask)
    return PolicyLoss(
        loss=loss,
        clipfrac=zero,
        clipfrac_lower=zero,
        approx_kl=approx_kl,
        clipfrac_low=zero,
        clipfrac_high=zero,
    )


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: KLEstimator = "k3") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from sampled tokens (Schulman 2020).

    ``k1 = log pi - log pi_ref`` (unbiased, high variance, can be negative);
    ``k3 = exp(log pi_ref - log pi) - (log pi_ref - log pi) - 1`` (unbiased, >= 0, low variance;
    verl's ``low_var_kl``), clamped to ``[-10, 10]`` as verl does.
    """
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"ref_logprobs {tuple(ref_logprobs.shape)} must match logprobs {tuple(logprobs.shape)}"
        )
    if estimator == "k1":
        return logprobs - ref_logprobs
    if estimator == "k3":
        log_ratio = (ref_logprobs - logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        return (torch.exp(log_ratio) - log_ratio - 1.0).clamp(-K3_CLAMP, K3_CLAMP)
    raise ValueError(f"kl_estimator {estimator!r} is not one of 'k1', 'k3'")


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the categorical at each position: ``[B, T, V] -> [B, T]`` (in nats)."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return -(log_probs.exp() * log_probs).sum(dim=-1)


# --------------------------------------------------------------------------------------------
# the whole actor objective
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActorLoss:
    """``loss = pg_loss + kl_coef * kl_loss - entropy_coeff * entropy``, and its parts."""

    loss: Tensor
    policy: PolicyLoss
    kl_loss: Tensor | None
    entropy: Tensor | None

    def metrics(self) -> dict[str, float]:
        """Flat step metrics, named as verl / SimpleTIR log them."""
        out = {
            "actor/loss": float(self.loss.detach()),
            "actor/pg_loss": float(self.policy.loss.detach()),
            "actor/pg_clipfrac": float(self.policy.clipfrac),
            "actor/pg_clipfrac_lower": float(self.policy.clipfrac_lower),
            "actor/pg_clipfrac_low": float(self.policy.clipfrac_low),
            "actor/pg_clipfrac_high": float(self.policy.clipfrac_high),
            "actor/ppo_kl": float(self.policy.approx_kl),
        }
        if self.kl_loss is not None:
            out["actor/kl_loss"] = float(self.kl_loss.detach())
        if self.entropy is not None:
            out["actor/entropy"] = float(self.entropy.detach())
        return out


def actor_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.28,
    clip_ratio_c: float = 3.0,
    loss_agg_mode: LossAggMode = "token-mean",
    max_response_length: int | None = None,
    denominator: float | None = None,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: KLEstimator = "k3",
    logits: Tensor | None = None,
    entropy: Tensor | None = None,
    entropy_coeff: float = 0.0,
    token_weights: Tensor | None = None,
    policy_fn: PolicyLossFunction | None = None,
) -> ActorLoss:
    """The full per-(micro)batch objective. Defaults are SimpleTIR's train.sh values.

    The KL term is added when ``ref_logprobs`` is given (the trainer passes it only with
    ``use_kl_loss``); the entropy is computed when ``logits`` are given and subtracted with
    weight ``entropy_coeff`` (or given directly as per-token ``entropy`` ``[B, T]``, as a backend
    that never materialises full logits does). Both aggregate with the same ``loss_agg_mode`` as
    the policy loss. ``token_weights`` reach the policy loss only. ``policy_fn`` (a built
    ``algorithm.policy_loss`` plugin) replaces :func:`policy_loss` and its clip arguments.
    """
    if policy_fn is not None:
        pg = policy_fn.compute(
            logprobs,
            old_logprobs,
            advantages,
            mask,
            loss_agg_mode=loss_agg_mode,
            max_response_length=max_response_length,
            denominator=denominator,
            token_weights=token_weights,
        )
    else:
        pg = policy_loss(
            logprobs,
            old_logprobs,
            advantages,
            mask,
            clip_ratio_low=clip_ratio_low,
            clip_ratio_high=clip_ratio_high,
            clip_ratio_c=clip_ratio_c,
            loss_agg_mode=loss_agg_mode,
            max_response_length=max_response_length,
            denominator=denominator,
            token_weights=token_weights,
        )

    def aggregate(per_token: Tensor) -> Tensor:
        return aggregate_loss(
            per_token, mask, loss_agg_mode, max_response_length=max_response_length, denominator=denominator
        )

    total = pg.loss
    kl_loss = None
    if ref_logprobs is not None:
        per_token = kl_penalty(
            masked_fill_zero(logprobs, mask), masked_fill_zero(ref_logprobs, mask), kl_estimator
        )
        kl_loss = aggregate(per_token)
        total = total + kl_coef * kl_loss
    if logits is not None:
        if logits.shape[:2] != mask.shape:
            raise ValueError(f"logits {tuple(logits.shape)} must be [B, T, V] for a mask {tuple(mask.shape)}")
        entropy = entropy_from_logits(logits)
    mean_entropy = None
    if entropy is not None:
        if entropy.shape != mask.shape:
            raise ValueError(
                f"entropy {tuple(entropy.shape)} must equal the mask's shape {tuple(mask.shape)}"
            )
        mean_entropy = aggregate(entropy)
        total = total - entropy_coeff * mean_entropy
    return ActorLoss(loss=total, policy=pg, kl_loss=kl_loss, entropy=mean_entropy)
