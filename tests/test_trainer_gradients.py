"""What never gets a gradient: tool output, void (fully masked) trajectories, prompts, padding.

The ``hf`` backend and the loop's loss function on tiny-qwen2 with hand-made trajectories of real
token ids. Masked positions must reach the parameters with *exactly* zero gradient: whatever
they hold (token ids that are targets only, advantages, old/engine log-probs, even NaN), every
parameter gradient stays bit-identical; changing one loss-bearing value changes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from simpletir.core.algo import group_scores, grpo_advantages, token_advantages
from simpletir.core.backend.hf import HFBackend
from simpletir.core.config import ExperimentConfig
from simpletir.core.config_load import load_config
from simpletir.core.rollout.models import resolve_model
from simpletir.core.trainer.loop import loss_function, tis_weights
from simpletir.core.trainer.tensors import TrainBatch, build_train_batch
from simpletir.core.types import FinishReason, RewardResult, Trajectory, TrajectoryGroup
from simpletir.testing import make_problem

# Row layout of the batch built below (group, response mask):
#   0: g0, gen 4 | obs 3 (mask 0) | gen 3 | trailing obs 2 (mask 0, targets only), score 1
#   1: g0, gen 6, score 0
#   2: g0, void turn: fully masked by the filter, score 0 (still in g0's baseline)
#   3: g1, gen 4, score 1
#   4: g1, gen 2, score 0
VOID_ROW = 2
TOOL_ROW = 0
TOOL_MID = (4, 7)  # the observation between two generated spans: context for later tokens
TOOL_TAIL = (10, 12)  # the trailing observation: no loss token after it
KL_AND_ENTROPY = {"algorithm.entropy_coeff": 0.01, "algorithm.use_kl_loss": True, "algorithm.kl_coef": 0.1}


def config_for(**overrides: Any) -> ExperimentConfig:
    base = {
        "model_name": "tiny-qwen2",
        "trainer.device": "cpu",
        "trainer.micro_batch_size": 2,  # rows of one group land in different micro-batches
        "grad_clip": 1e9,  # clipping off: the raw gradients are compared
        "algorithm.lr": 1e-3,
    }
    base.update(overrides)
    return load_config(None, [f"{k}={v}" for k, v in base.items()])


@pytest.fixture(scope="module")
def model_dir() -> Any:
    return resolve_model("tiny-qwen2")


@pytest.fixture(scope="module")
def backend(model_dir: Any) -> Iterator[HFBackend]:
    config = config_for(**KL_AND_ENTROPY)
    b = HFBackend(model_dir, config)
    b.optimizer.step = lambda *a, **k: None  # type: ignore[method-assign]  # gradients only
    yield b
    b.close()


def trajectory(
    prompt: list[int], response: list[int], mask: list[int], score: float, index: int
) -> Trajectory:
    gen = torch.Generator().manual_seed(100 + index)
    logprobs = [-float(torch.rand(1, generator=gen)) - 0.5 if m else 0.0 for m in mask]
    return Trajectory(
        problem_id="p",
        sample_index=index,
        prompt_ids=tuple(prompt),
        response_ids=tuple(response),
        loss_mask=tuple(mask),
        logprobs=tuple(logprobs),
        turns=(),
        finish_reason=FinishReason.ANSWER,
        reward=RewardResult(score=score, reason="correct" if score else "wrong"),
    )


def ids(start: int, n: int) -> list[int]:
    return [(start * 7919 + 131 * k) % 150_000 + 10 for k in range(n)]


def make_groups(
    *,
    void_ids: list[int] | None = None,
    tool_tail: list[int] | None = None,
    tool_mid: list[int] | None = None,
) -> list[TrajectoryGroup]:
    p0, p1 = ids(1, 5), ids(2, 3)
    mid = tool_mid if tool_mid is not None else ids(3, 3)
    tail = tool_tail if tool_tail is not None else ids(4, 2)
    row0 = ids(5, 4) + mid + ids(6, 3) + tail
    mask0 = [1] * 4 + [0] * 3 + [1] * 3 + [0] * 2
    void_prompt, void_response = (void_ids[:5], void_ids[5:]) if void_ids else (p0, ids(7, 5))
    void = trajectory(void_prompt, void_response, [1] * len(void_response), 0.0, 2).masked("void_turn")
    g0 = (
        trajectory(p0, row0, mask0, 1.0, 0),
        trajectory(p0, ids(8, 6), [1] * 6, 0.0, 1),
        void,
    )
    g1 = (trajectory(p1, ids(9, 4), [1] * 4, 1.0, 3), trajectory(p1, ids(10, 2), [1] * 2, 0.0, 4))
    return [TrajectoryGroup(make_problem("g0"), g0), TrajectoryGroup(make_problem("g1"), g1)]


def prepared(backend: HFBackend, groups: list[TrajectoryGroup]) -> TrainBatch:
    """What the loop hands the update: advantages, old (perturbed off 1.0 ratios), ref, TIS.

    The void row stays in: the loop drops rows without loss tokens before the update, but the
    loss itself must not rely on that.
    """
    batch = build_train_batch(groups, backend.pad_token_id)
    scores, group_ids = group_scores(groups)
    batch = batch.replace(advantages=token_advantages(grpo_advantages(scores, group_ids), batch.loss_mask))
    old, _ = backend.logprobs(batch)
    shift = torch.linspace(-0.3, 0.3, old.numel()).reshape(old.shape)  # some tokens clip, some not
    batch = batch.replace(old_logprobs=old + shift, ref_logprobs=old - shift / 2)
    return batch.replace(tis_weights=tis_weights(batch, 2.0))


def gradients(backend: HFBackend, batch: TrainBatch, config: ExperimentConfig) -> dict[str, torch.Tensor]:
    """One backend.train_step (its micro-batching, the loop's loss); the optimiser step is a no-op."""
    parts: list[dict[str, float]] = []
    backend.train_step(batch, loss_function(batch, config, parts), with_entropy=True)
    assert parts and all(torch.isfinite(torch.tensor(p["loss"])) for p in parts)
    grads = {n: p.grad.detach().clone() for n, p in backend.model.named_parameters() if p.grad is not None}
    assert grads and any(bool(g.abs().sum() > 0) for g in grads.values())
    return grads


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def junk_at_masked_positions(batch: TrainBatch, other: TrainBatch) -> TrainBatch:
    """``other``'s token ids (they differ only where nothing is trained) and garbage in every
    per-token tensor at masked positions: huge advantages, NaN log-probs, huge TIS weights."""
    mask = batch.loss_mask.bool()
    nan = torch.full_like(batch.loss_mask, float("nan"))

    def masked_to(value: torch.Tensor | None, filler: torch.Tensor) -> torch.Tensor:
        assert value is not None
        return torch.where(mask, value, filler)

    return other.replace(
        advantages=masked_to(batch.advantages, torch.full_like(nan, 1e6)),
        old_logprobs=masked_to(batch.old_logprobs, nan),
        ref_logprobs=masked_to(batch.ref_logprobs, torch.full_like(nan, -1e4)),
        engine_logprobs=masked_to(batch.engine_logprobs, nan),
        tis_weights=masked_to(batch.tis_weights, torch.full_like(nan, 50.0)),
    )


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_masked_positions_never_change_the_gradient(backend: HFBackend, mode: str) -> None:
    config = config_for(**{"algorithm.loss_agg_mode": mode, **KL_AND_ENTROPY})
    backend.config = config
    batch = prepared(backend, make_groups())
    assert batch.loss_mask[VOID_ROW].sum() == 0
    assert batch.loss_mask[TOOL_ROW, TOOL_MID[0] : TOOL_MID[1]].sum() == 0
    reference = gradients(backend, batch, config)

    # token ids that are only targets (the trailing tool output; every id, prompt and response,
    # of the fully masked trajectory) and anything held at masked positions
    other = build_train_batch(make_groups(void_ids=ids(40, 10), tool_tail=ids(41, 2)), backend.pad_token_id)
    changed_ids = ~torch.eq(other.input_ids, batch.input_ids)
    assert changed_ids[VOID_ROW, :10].all() and changed_ids.sum() == 10 + 2
    assert same(reference, gradients(backend, junk_at_masked_positions(batch, other), config))

    # and the comparison can fail: one loss-bearing advantage changes the gradient
    adv = batch.advantages.clone()  # type: ignore[union-attr]
    adv[3, 1] += 0.5
    assert not same(reference, gradients(backend, batch.replace(advantages=adv), config))


def test_gradients_are_bit_reproducible_and_sensitive(backend: HFBackend) -> None:
    """The checks above rest on this: the same batch gives the same bits; a loss-bearing old
    log-prob changes them; a tool observation in the middle (no target, but context for the
    tokens after it) changes them too."""
    config = config_for(**KL_AND_ENTROPY)
    backend.config = config
    batch = prepared(backend, make_groups())
    reference = gradients(backend, batch, config)
    assert same(reference, gradients(backend, batch, config))
    old = batch.old_logprobs.clone()  # type: ignore[union-attr]
    old[1, 2] -= 0.05
    assert not same(reference, gradients(backend, batch.replace(old_logprobs=old), config))
    mid = build_train_batch(make_groups(tool_mid=ids(42, 3)), backend.pad_token_id)
    assert not same(reference, gradients(backend, batch.replace(input_ids=mid.input_ids), config))


def test_masked_positions_get_exactly_zero_gradient(backend: HFBackend) -> None:
    """Per position: d loss / d log-prob is 0 on tool output, the void row and padding, nonzero on
    every loss token; d loss / d logits of a plain full-length forward is 0 on every prompt
    position but the last (which predicts the first response token) and on padding."""
    config = config_for(**KL_AND_ENTROPY)
    backend.config = config
    batch = prepared(backend, make_groups())
    model = backend.model
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logits.retain_grad()
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    width = batch.responses.shape[1]
    rows = []
    ent_rows = []
    for i in range(batch.size):  # the alignment written out, independently of response_positions
        p, r = int(batch.prompt_lens[i]), int(batch.response_lens[i])
        lp = torch.stack([log_probs[i, p - 1 + j, batch.responses[i, j]] for j in range(r)])
        ent = torch.stack(
            [-(log_probs[i, p - 1 + j].exp() * log_probs[i, p - 1 + j]).sum() for j in range(r)]
        )
        rows.append(torch.nn.functional.pad(lp, (0, width - r)))
        ent_rows.append(torch.nn.functional.pad(ent, (0, width - r)))
    token_lp = torch.stack(rows)
    token_lp.retain_grad()
    # the backend computes the same log-probs (on its gathered positions; past a row's end it
    # holds whatever the clamped position gives, masked everywhere)
    valid = torch.arange(width).unsqueeze(0) < batch.response_lens.unsqueeze(1)
    assert torch.allclose(backend.logprobs(batch)[0][valid], token_lp.detach()[valid], atol=1e-5)
    # ratio 1 everywhere (nothing clipped), so every loss token has a policy gradient
    batch = batch.replace(old_logprobs=token_lp.detach().clone())
    parts: list[dict[str, float]] = []
    loss = loss_function(batch, config, parts)(batch, token_lp, torch.stack(ent_rows))
    loss.backward()

    mask = batch.loss_mask.bool()
    grad_lp = token_lp.grad
    assert grad_lp is not None
    assert torch.equal(grad_lp[~mask], torch.zeros_like(grad_lp[~mask]))
    assert bool((grad_lp[mask] != 0).all())  # every loss token is trained on
    assert torch.equal(grad_lp[VOID_ROW], torch.zeros(width))
    assert torch.equal(grad_lp[TOOL_ROW, TOOL_MID[0] : TOOL_MID[1]], torch.zeros(3))
    assert torch.equal(grad_lp[TOOL_ROW, TOOL_TAIL[0] : TOOL_TAIL[1]], torch.zeros(2))

    grad_logits = logits.grad
    assert grad_logits is not None
    per_position = grad_logits.abs().sum(-1)  # [B, L]
    for i in range(batch.size):
        p, r = int(batch.prompt_lens[i]), int(batch.response_lens[i])
        predicts = {p - 1 + j for j in range(r) if mask[i, j]}
        for pos in range(batch.input_ids.shape[1]):
            if pos in predicts:
                assert per_position[i, pos] > 0, (i, pos)
            else:  # prompt, masked targets, padding, the whole void row
                assert per_position[i, pos] == 0, (i, pos)


def test_backend_logprobs_match_an_unpadded_forward_of_each_row(backend: HFBackend) -> None:
    """Right padding, micro-batching and the gathered LM head change nothing."""
    backend.config = config_for()
    batch = build_train_batch(make_groups(), backend.pad_token_id)
    got, entropy = backend.logprobs(batch, with_entropy=True)
    assert entropy is not None and got.shape == batch.responses.shape
    with torch.no_grad():
        for i in range(batch.size):
            p, r = int(batch.prompt_lens[i]), int(batch.response_lens[i])
            sequence = batch.input_ids[i, : p + r].unsqueeze(0)
            logits = backend.model(input_ids=sequence).logits[0].float()
            log_probs = torch.log_softmax(logits[p - 1 : p - 1 + r], dim=-1)
            expected = log_probs.gather(-1, batch.responses[i, :r].unsqueeze(-1)).squeeze(-1)
            assert torch.allclose(got[i, :r], expected, atol=1e-5), i
            assert bool(torch.isfinite(got[i]).all())  # past the end: masked, but never nan
            expected_entropy = -(log_probs.exp() * log_probs).sum(-1)
            assert torch.allclose(entropy[i, :r], expected_entropy, atol=1e-4)
