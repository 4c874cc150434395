"""The objective's pure functions against values computed by hand (comments show the arithmetic)."""

from __future__ import annotations

import math

import pytest
import torch

from simpletir.core import algo
from simpletir.testing import make_group, make_trajectory

SQRT_THIRD = math.sqrt(1.0 / 3.0)  # unbiased std of three 0/1 rewards with one odd one out


def close(actual: torch.Tensor | float, expected: float | list, atol: float = 1e-5) -> None:
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float64),
        torch.as_tensor(expected, dtype=torch.float64),
        atol=atol,
        rtol=0,
    )


# -- advantages ----------------------------------------------------------------------------


def test_grpo_advantages_per_group_with_interleaved_ids():
    # group 7: [1, 1, 0] mean 2/3, std sqrt(((1/3)^2*2 + (2/3)^2)/2) = sqrt(1/3)
    # group 3: [0, 0, 1] mean 1/3, same std; group 9: a single sample -> 0
    scores = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 5.0])
    ids = torch.tensor([7, 3, 7, 3, 7, 3, 9])
    adv = algo.grpo_advantages(scores, ids)
    up, down = (1 / 3) / SQRT_THIRD, (2 / 3) / SQRT_THIRD  # 0.57735, 1.1547
    close(adv, [up, -up, up, -up, -down, down, 0.0])


def test_grpo_advantages_without_std_scaling_is_centred_reward():
    scores = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 5.0])
    ids = torch.tensor([7, 3, 7, 3, 7, 3, 9])
    adv = algo.grpo_advantages(scores, ids, norm_by_std=False)
    close(adv, [1 / 3, -1 / 3, 1 / 3, -1 / 3, -2 / 3, 2 / 3, 0.0])


def test_grpo_advantages_uniform_group_and_group_of_one_are_zero():
    adv = algo.grpo_advantages(torch.tensor([1.0, 1.0, 1.0, 0.3]), torch.tensor([0, 0, 0, 1]))
    close(adv, [0.0, 0.0, 0.0, 0.0])


def test_grpo_advantages_refuse_non_finite_rewards():
    with pytest.raises(ValueError, match=r"non-finite rewards at positions \[1\]"):
        algo.grpo_advantages(torch.tensor([1.0, float("nan"), 0.0]), torch.tensor([0, 0, 0]))
    with pytest.raises(ValueError, match="must both be"):
        algo.grpo_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0]))


def test_group_scores_keep_masked_trajectories_in_the_statistics():
    void = make_trajectory(score=1.0, void=True).masked("void_turn")
    groups = [
        make_group([void, make_trajectory(score=0.0)], "a"),
        make_group([make_trajectory(score=1.0)], "b"),
    ]
    scores, ids = algo.group_scores(groups)
    assert scores.tolist() == [1.0, 0.0, 1.0]
    assert ids.tolist() == [0, 0, 1]
    # the masked sample still sets its group's baseline: [1, 0] -> +-0.5 / std(0.7071)
    close(algo.grpo_advantages(scores, ids), [0.5 / math.sqrt(0.5), -0.5 / math.sqrt(0.5), 0.0])


def test_token_advantages_follow_the_mask():
    out = algo.token_advantages(torch.tensor([2.0, -1.0]), torch.tensor([[1, 1, 0], [0, 1, 1]]))
    close(out, [[2.0, 2.0, 0.0], [0.0, -1.0, -1.0]])


# -- aggregation -----------------------------------------------------------------------------

LOSSES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
MASK = torch.tensor([[1, 1, 0], [0, 0, 1], [0, 0, 0]])  # last row: fully masked


def test_token_mean_counts_only_unmasked_tokens():
    close(algo.aggregate_loss(LOSSES, MASK, "token-mean"), (1 + 2 + 6) / 3)
    close(algo.aggregate_loss(LOSSES, MASK, "token-mean", denominator=9.0), 9 / 9)


def test_seq_mean_token_mean_skips_fully_masked_rows():
    # row means 1.5 and 6; the empty row is absent (not a 0): (1.5 + 6) / 2
    close(algo.aggregate_loss(LOSSES, MASK, "seq-mean-token-mean"), 3.75)


def test_dr_grpo_constant_normaliser_uses_configured_length():
    # row sums 3, 6, 0 over max_response_length 4 (not the padded width 3), mean over 3 rows
    close(
        algo.aggregate_loss(LOSSES, MASK, "seq-mean-token-sum-norm", max_response_length=4), (0.75 + 1.5) / 3
    )
    with pytest.raises(ValueError, match="max_response_length"):
        algo.aggregate_loss(LOSSES, MASK, "seq-mean-token-sum-norm")


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_all_masked_batch_gives_zero_not_nan(mode):
    losses = torch.tensor([[float("nan"), float("inf")]])
    out = algo.aggregate_loss(losses, torch.zeros(1, 2), mode, max_response_length=8)
    assert out.item() == 0.0


def test_unknown_agg_mode_names_the_value():
    with pytest.raises(ValueError, match="'sum'"):
        algo.aggregate_loss(LOSSES, MASK, "sum")  # type: ignore[arg-type]


# -- policy loss -----------------------------------------------------------------------------
# Six tokens; the last is masked and holds garbage (nan logprob, -inf old logprob).
#   t0: A=+1 r=1.5 -> max(-1.5, -1.28) = -1.28        (clipped high)
#   t1: A=+1 r=0.5 -> max(-0.5, -0.8)  = -0.5
#   t2: A=-1 r=0.5 -> max(0.5, 0.8)    =  0.8, min(0.8, 3) = 0.8 (clipped low)
#   t3: A=-1 r=5   -> max(5, 1.28)     =  5,   min(5, 3)   = 3   (dual clip)
#   t4: A=+2 r=1.1 -> max(-2.2, -2.2)  = -2.2
# token mean: (-1.28 - 0.5 + 0.8 + 3 - 2.2) / 5 = -0.036
RATIOS = [1.5, 0.5, 0.5, 5.0, 1.1]
ADV = torch.tensor([[1.0, 1.0, -1.0, -1.0, 2.0, 0.0]])
PL_MASK = torch.tensor([[1, 1, 1, 1, 1, 0]])


def _logprobs() -> tuple[torch.Tensor, torch.Tensor]:
    old = torch.tensor([[-1.0, -1.0, -1.0, -1.0, -1.0, float("-inf")]])
    new = old.clone()
    new[0, :5] = old[0, :5] + torch.log(torch.tensor(RATIOS))
    new[0, 5] = float("nan")
    return new.requires_grad_(True), old


def test_policy_loss_clip_higher_and_dual_clip_by_hand():
    new, old = _logprobs()
    out = algo.policy_loss(new, old, ADV, PL_MASK)
    close(out.loss.detach(), -0.036)
    close(out.clipfrac, 2 / 5)  # t0, t2
    close(out.clipfrac_lower, 1 / 5)  # t3
    close(out.clipfrac_low, 1 / 5)  # t2: A < 0, ratio 0.5 < 0.8
    close(out.clipfrac_high, 1 / 5)  # t0: A > 0, ratio 1.5 > 1.28
    close(out.approx_kl, -sum(math.log(r) for r in RATIOS) / 5)  # mean log(old/new) = -0.144784


def test_policy_loss_gradient_only_through_unclipped_tokens():
    new, old = _logprobs()
    algo.policy_loss(new, old, ADV, PL_MASK).loss.backward()
    assert new.grad is not None
    # d/dlogp of -A*r/5 is -A*r/5 where unclipped (t1, t4); clipped and masked tokens get 0
    close(new.grad, [[0.0, -0.5 / 5, 0.0, 0.0, -2.2 / 5, 0.0]])


def test_policy_loss_symmetric_clip_and_seq_mean_mode():
    new, old = _logprobs()
    out = algo.policy_loss(new, old, ADV, PL_MASK, clip_ratio_high=0.2, loss_agg_mode="seq-mean-token-mean")
    # t0 is now clipped at 1.2: -1.2; one row, so seq-mean == token-mean
    close(out.loss.detach(), (-1.2 - 0.5 + 0.8 + 3 - 2.2) / 5)


def test_policy_loss_guards_huge_log_ratios():
    old = torch.tensor([[-200.0, -200.0]])
    new = torch.zeros(1, 2)
    out = algo.policy_loss(new, old, torch.tensor([[1.0, -1.0]]), torch.ones(1, 2))
    # ratio = exp(20) after the clamp: positive A clipped to -1.28, negative A dual-clipped to 3
    close(out.loss, (-1.28 + 3.0) / 2)
    assert math.isfinite(out.approx_kl.item())


def test_policy_loss_all_masked_is_zero_with_zero_gradient():
    new = torch.full((2, 3), float("nan"), requires_grad=True)
    out = algo.policy_loss(new, torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2, 3))
    out.loss.backward()
    assert out.loss.item() == 0.0 and out.clipfrac.item() == 0.0
    assert new.grad is not None and torch.equal(new.grad, torch.zeros(2, 3))


def test_policy_loss_rejects_bad_arguments():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="clip_ratio_c"):
        algo.policy_loss(x, x, x, x, clip_ratio_c=1.0)
    with pytest.raises(ValueError, match="advantages shape"):
        algo.policy_loss(x, x, torch.zeros(2, 2), x)


# -- KL and entropy --------------------------------------------------------------------------


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
    close(algo.kl_penalty(logp, ref, "k1"), [[0.5, -1.0]])
    # k3 with x = ref - logp = [-0.5, 1]: e^x - x - 1 = [0.106531, 0.718282]
    close(algo.kl_penalty(logp, ref, "k3"), [[math.exp(-0.5) - 0.5, math.e - 2.0]])
    # far apart: clamped at 10 as verl's low_var_kl
    close(algo.kl_penalty(torch.tensor([[-30.0]]), torch.tensor([[0.0]]), "k3"), [[10.0]])
    with pytest.raises(ValueError, match="'k2'"):
        algo.kl_penalty(logp, ref, "k2")  # type: ignore[arg-type]


def test_entropy_from_logits_by_hand():
    logits = torch.tensor([[[0.0, 0.0], [0.0, math.log(3.0)]]])
    # uniform over 2: ln 2; p = (1/4, 3/4): -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.562335
    close(algo.entropy_from_logits(logits), [[math.log(2), 0.25 * math.log(4) + 0.75 * math.log(4 / 3)]])


def test_actor_loss_combines_terms_and_reports_metrics():
    new, old = _logprobs()
    ref = torch.tensor([[-1.0] * 5 + [float("nan")]])
    logits = torch.zeros(1, 6, 2)  # entropy ln 2 at every token
    logits[0, 5] = float("nan")  # garbage under the mask
    out = algo.actor_loss(
        new,
        old,
        ADV,
        PL_MASK,
        ref_logprobs=ref,
        kl_coef=0.1,
        kl_estimator="k1",
        logits=logits,
        entropy_coeff=0.01,
    )
    kl = sum(math.log(r) for r in RATIOS) / 5  # k1 = logp - ref = log r per token
    close(out.loss.detach(), -0.036 + 0.1 * kl - 0.01 * math.log(2))
    metrics = out.metrics()
    assert set(metrics) == {
        "actor/loss",
        "actor/pg_loss",
        "actor/pg_clipfrac",
        "actor/pg_clipfrac_lower",
        "actor/pg_clipfrac_low",
        "actor/pg_clipfrac_high",
        "actor/ppo_kl",
        "actor/kl_loss",
        "actor/entropy",
    }
    close(metrics["actor/kl_loss"], kl)
    close(metrics["actor/entropy"], math.log(2))
    assert all(math.isfinite(v) for v in metrics.values())


def test_actor_loss_defaults_have_no_kl_or_entropy_term():
    new, old = _logprobs()
    out = algo.actor_loss(new, old, ADV, PL_MASK)
    assert out.kl_loss is None and out.entropy is None
    close(out.loss.detach(), -0.036)
    assert "actor/kl_loss" not in out.metrics()


def test_token_weights_scale_each_token_loss_and_carry_no_gradient():
    new, old = _logprobs()
    # Per-token losses (above): -1.28, -0.5, 0.8, 3, -2.2; weights 2, 1, 0.5, 0, 1 (and nan where masked).
    weights = torch.tensor([[2.0, 1.0, 0.5, 0.0, 1.0, float("nan")]], requires_grad=True)
    out = algo.policy_loss(new, old, ADV, PL_MASK, token_weights=weights)
    close(out.loss.detach(), (2 * -1.28 - 0.5 + 0.5 * 0.8 + 0 * 3 - 2.2) / 5)  # = -0.972
    out.loss.backward()
    assert weights.grad is None  # importance weights are constants of the update
    with pytest.raises(ValueError, match="token_weights shape"):
        algo.policy_loss(new, old, ADV, PL_MASK, token_weights=torch.ones(1, 5))


def test_actor_loss_takes_per_token_entropy_as_logits_would_give_it():
    torch.manual_seed(0)
    logits = torch.randn(1, 6, 7)
    new, old = _logprobs()
    mask = PL_MASK.float()
    from_logits = algo.actor_loss(new, old, ADV, mask, logits=logits, entropy_coeff=0.1)
    given = algo.actor_loss(new, old, ADV, mask, entropy=algo.entropy_from_logits(logits), entropy_coeff=0.1)
    assert from_logits.entropy is not None and given.entropy is not None
    close(given.entropy, from_logits.entropy.item())
    close(given.loss.detach(), from_logits.loss.item())
    with pytest.raises(ValueError, match="entropy"):
        algo.actor_loss(new, old, ADV, mask, entropy=torch.zeros(1, 5))
