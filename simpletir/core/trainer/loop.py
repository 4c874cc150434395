"""The RL training loop: one screen per stage, top to bottom.

One step::

    draw prompts -> multi-turn rollout (rollout.n each) -> reward -> filters (config order),
    refilled up to max_draws                                   core/batching.py, core/filtering.py
    -> advantages (algorithm.adv_estimator: grpo, rloo...)     plugins/algorithms, core/algo.py
    -> old log-probs (trainer), engine/trainer mismatch, TIS weights
    -> ppo_epochs x mini-batches (ppo_mini_batch_size prompts) -> backend.train_step
       (micro-batches, grad clip, AdamW)                       core/backend/
    -> weights pushed into the rollout engine                  trainer/weight_sync.py
    -> checkpoint every save_freq, validation every test_freq  trainer/checkpoint.py, core/evaluate.py

Where it departs from textbook GRPO (and from SimpleTIR's trainer), on purpose:

* a batch short of ``train_batch_size`` after filters is refilled with fresh prompts (never
  by duplicating survivors, as SimpleTIR did), and trains on fewer groups if the budget runs out;
* masked trajectories (void turns, clipped) keep their reward in the group baseline but carry
  no loss (``loss_mask`` 0), exactly like tool-output and prompt tokens;
* old log-probs are recomputed by the trainer (``algorithm.recompute_old_logprobs``) and the
  engine/trainer mismatch is measured every step and corrected by truncated importance
  sampling (``algorithm.tis_cap``); with ``rollout.temperature`` != 1 the engines' raw
  log-probs are not the sampled distribution's, so the mismatch is not measured and TIS is off;
* every random choice (prompt order, each request's sampling seed) is a function of the seed and
  the step, so a resumed run repeats exactly what the uninterrupted run did.

Everything runs on one event loop: the engine, the sandbox pool and the reward workers start
once per run and stay warm across steps and validations.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from simpletir.core.algo import actor_loss, group_scores, masked_mean, token_advantages
from simpletir.core.batching import BatchCollector, PromptSampler
from simpletir.core.errors import PluginError
from simpletir.core.evaluate import score_groups
from simpletir.core.filtering import filter_context
from simpletir.core.run import report_step
from simpletir.core.trainer import checkpoint as ckpt
from simpletir.core.trainer.tensors import TrainBatch, build_train_batch, mini_batches
from simpletir.core.trainer.validation import validate
from simpletir.core.trainer.weight_sync import sync_weights
from simpletir.core.types import Problem, StepReport, TrajectoryGroup

if TYPE_CHECKING:
    from pathlib import Path

    from simpletir.core.backend import TrainerBackend
    from simpletir.core.config import ExperimentConfig
    from simpletir.core.plugins import SimpletirPluginManager
    from simpletir.core.rollout import PolicyEngine, RolloutRunner
    from simpletir.core.specs import AdvantageEstimator, PolicyLossFunction, Reward, TrajectoryFilter
    from simpletir.core.trainer.record import RolloutRecorder

log = logging.getLogger("simpletir.trainer")


@dataclass
class Trainer:
    """What the loop works with; built (and closed) by :func:`simpletir.core.trainer.run_training`."""

    config: ExperimentConfig
    pm: SimpletirPluginManager
    engine: PolicyEngine
    runner: RolloutRunner
    reward: Reward
    filters: list[TrajectoryFilter]
    backend: TrainerBackend
    estimator: AdvantageEstimator
    policy_loss: PolicyLossFunction
    sampler: PromptSampler
    valid: dict[str, list[Problem]]
    checkpoints: Path
    total_steps: int  # total_training_steps, or (total_epochs) an estimate for the progress bar
    steps_per_epoch: int
    epoch_limit: int | None = None  # total_epochs when total_training_steps is not set
    step: int = 0  # the last finished step
    history: list[dict[str, float]] = field(default_factory=list)
    recorder: RolloutRecorder | None = None  # trainer.record_rollouts: each step's rollouts, on disk

    @property
    def finished(self) -> bool:
        """``total_training_steps`` steps done, or (without it) ``total_epochs`` passes over the data."""
        if self.epoch_limit is not None:
            return self.sampler.passes >= self.epoch_limit
        return self.step >= self.total_steps


class Timer:
    """``with timer("rollout"): ...`` adds the seconds to ``timing/rollout_s``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Any:
        start = time.monotonic()
        try:
            yield
        finally:
            self.seconds[f"timing/{name}_s"] = (
                self.seconds.get(f"timing/{name}_s", 0.0) + time.monotonic() - start
            )


async def train(t: Trainer) -> dict[str, Any]:
    """Run steps from ``t.step + 1`` until :meth:`Trainer.finished`; returns the last step's metrics."""
    config = t.config
    if t.step == 0 and config.val_before_train and config.test_freq != -1:
        await validate(t, step=0)
    bar = tqdm(
        total=t.total_steps, initial=t.step, desc="training", unit="step", disable=not config.rollout.progress
    )
    try:
        while not t.finished:
            step = t.step + 1
            timer = Timer()
            with timer("step"):
                metrics = await training_step(t, step, timer)
                t.step = step
                if t.recorder is not None:
                    with timer("record"):
                        t.recorder.finish(step, metrics, t.backend, epoch=t.sampler.epoch)
                if config.save_freq != -1 and (step % config.save_freq == 0 or t.finished):
                    with timer("save"):
                        save(t, {**metrics, **timer.seconds})
            metrics.update(timer.seconds)
            report_step(t.pm, StepReport(step=step, epoch=t.sampler.epoch, metrics=metrics))
            t.history.append(metrics)
            bar.update(1)
            if config.test_freq != -1 and (step % config.test_freq == 0 or t.finished):
                await validate(t, step=step)
    finally:
        bar.close()
    return dict(t.history[-1]) if t.history else {}


async def training_step(t: Trainer, step: int, timer: Timer) -> dict[str, float]:
    config, a = t.config, t.config.algorithm

    # 1. draw, roll out, score, filter; refill until train_batch_size groups survive
    with timer("rollout"):
        groups, metrics = await collect(t, step, timer)
    if not groups:  # every group was filtered out: nothing to learn from this step
        log.warning("step %d: no group survived the filters; skipping the update", step)
        return {**metrics, "actor/skipped_step": 1.0}
    batch = build_train_batch(groups, t.backend.pad_token_id)
    metrics.update(tool_metrics(groups))

    # 2. advantages: one per trajectory, from the group's rewards (masked ones count in the baseline);
    #    then rows without a single loss token leave the batch: their gradient is exactly 0 anyway
    scores, group_ids = group_scores(groups)
    advantages = t.estimator.compute(scores, group_ids)
    if advantages.shape != scores.shape or not bool(torch.isfinite(advantages).all()):
        raise PluginError(
            f"advantage estimator {a.adv_estimator!r} returned {tuple(advantages.shape)} "
            f"(finite: {bool(torch.isfinite(advantages).all())}) for {tuple(scores.shape)} rewards"
        )
    batch = batch.replace(advantages=token_advantages(advantages, batch.loss_mask))
    if a.loss_agg_mode != "seq-mean-token-sum-norm":  # Dr.GRPO divides by every row, masked ones too
        batch = batch.rows(torch.nonzero(batch.loss_mask.sum(-1) > 0).flatten())
    if batch.size == 0:
        log.warning("step %d: every trajectory of the kept groups is masked; skipping the update", step)
        return {**metrics, "actor/skipped_step": 1.0}

    # 3. old policy: recomputed by the trainer; mismatch against the engine; TIS weights
    with timer("old_logprob"):
        if a.recompute_old_logprobs:
            old, entropy = t.backend.logprobs(batch, with_entropy=True)
            metrics["actor/entropy"] = (
                float(masked_mean(entropy, batch.loss_mask)) if entropy is not None else 0.0
            )
        else:
            old = batch.engine_logprobs
        batch = batch.replace(old_logprobs=old)
        if a.use_kl_loss:
            batch = batch.replace(ref_logprobs=t.backend.reference_logprobs(batch))
    measurable = config.rollout.temperature == 1.0 and a.recompute_old_logprobs
    if measurable:
        metrics.update(mismatch_metrics(batch, a.tis_cap))
        if a.tis_cap > 0:
            batch = batch.replace(tis_weights=tis_weights(batch, a.tis_cap))

    # 4. the update: ppo_epochs passes, one optimiser step per mini-batch of whole groups
    with timer("update"):
        updates: list[dict[str, float]] = []
        for _ in range(a.ppo_epochs):
            for mini in mini_batches(batch, min(a.ppo_mini_batch_size, len(groups))):
                parts: list[dict[str, float]] = []
                result = t.backend.train_step(
                    mini, loss_function(mini, config, parts, t.policy_loss), with_entropy=a.entropy_coeff > 0
                )
                updates.append({**merge_micro(parts), **result})
    metrics.update(mean_of(updates))

    # 5. the engine serves the new weights
    with timer("sync"):
        synced = sync_weights(t.backend, t.engine, bucket_mb=config.trainer.weight_sync_bucket_mb)
    metrics["perf/sync_bytes"] = float(synced.bytes)
    metrics["batch/trained_trajectories"] = float(batch.size)
    metrics["batch/loss_tokens"] = float(batch.num_loss_tokens)
    tokens = int((batch.prompt_lens + batch.response_lens).sum())
    metrics["perf/train_tokens_per_s"] = tokens / max(timer.seconds.get("timing/update_s", 0.0), 1e-9)
    metrics["perf/rollout_tokens_per_s"] = metrics["perf/generated_tokens"] / max(
        timer.seconds.get("timing/rollout_s", 0.0), 1e-9
    )
    return metrics


async def collect(
    t: Trainer, step: int, timer: Timer
) -> tuple[tuple[TrajectoryGroup, ...], dict[str, float]]:
    """Draw -> rollout -> reward -> filters, refilled up to ``max_draws`` rollouts."""
    config = t.config
    collector = BatchCollector(
        t.filters, filter_context(config, step=step), oversample=config.oversample, max_draws=config.max_draws
    )
    draw = 0
    generated = 0
    retried = t.runner.retried_trajectories  # restarted because an engine replica or tool pool was lost
    while not collector.done:
        problems = t.sampler.take(collector.next_draw_size())
        groups = await t.runner.arun(problems, training=True, seed_round=("train", step, draw))
        generated += sum(tr.num_loss_tokens for g in groups for tr in g.trajectories)  # before any filter
        with timer("reward"):
            scored = await asyncio.to_thread(
                score_groups, groups, t.reward, progress=False, answer_format=config.rollout.answer_format
            )
        collector.add(scored, prompts=len(problems))
        if t.recorder is not None:
            t.recorder.draw(step, problems, scored)
        draw += 1
    result = collector.result()
    if t.recorder is not None:
        t.recorder.kept(step, result.groups)
    return result.groups, {
        **result.metrics,
        "perf/generated_tokens": float(generated),
        "rollout/retried_trajectories": float(t.runner.retried_trajectories - retried),
    }


# -- the objective on one micro-batch -----------------------------------------------------------


def loss_function(
    mini: TrainBatch,
    config: ExperimentConfig,
    parts: list[dict[str, float]],
    policy_fn: PolicyLossFunction | None = None,
) -> MicroBatchLoss:
    """The actor loss of one micro-batch of ``mini``, scaled to its share of the mini-batch's loss.

    Gradients of the micro-batches add up to the gradient of the loss over the whole mini-batch:
    ``token-mean`` divides every micro-batch by the mini-batch's token count; the per-sequence
    modes weigh each micro-batch by its share of the mini-batch's rows. Each call appends its
    metrics to ``parts``.
    """
    return MicroBatchLoss(
        config=config,
        policy_fn=policy_fn,
        mini_tokens=float(mini.num_loss_tokens),
        mini_rows_with_tokens=float((mini.loss_mask.sum(-1) > 0).sum()),
        mini_rows=mini.size,
        parts=parts,
    )


@dataclass
class MicroBatchLoss:
    """A picklable loss function (a :data:`~simpletir.core.backend.LossFn`): a backend whose
    ranks live in other processes sends it there and hands their ``parts`` back."""

    config: ExperimentConfig
    policy_fn: PolicyLossFunction | None
    mini_tokens: float
    mini_rows_with_tokens: float
    mini_rows: int
    parts: list[dict[str, float]]

    def __call__(
        self, micro: TrainBatch, logprobs: torch.Tensor, entropy: torch.Tensor | None
    ) -> torch.Tensor:
        a = self.config.algorithm
        device = logprobs.device

        def on(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x.to(device)

        mask = micro.loss_mask.to(device)
        if a.loss_agg_mode == "token-mean":
            scale = 1.0
        elif a.loss_agg_mode == "seq-mean-token-mean":
            scale = float((micro.loss_mask.sum(-1) > 0).sum()) / max(self.mini_rows_with_tokens, 1.0)
        else:
            scale = micro.size / self.mini_rows
        out = actor_loss(
            logprobs,
            on(micro.old_logprobs),  # type: ignore[arg-type]
            on(micro.advantages),  # type: ignore[arg-type]
            mask,
            clip_ratio_low=a.clip_ratio_low,
            clip_ratio_high=a.clip_ratio_high,
            clip_ratio_c=a.clip_ratio_c,
            loss_agg_mode=a.loss_agg_mode,
            max_response_length=self.config.max_response_length,
            denominator=max(self.mini_tokens, 1.0) if a.loss_agg_mode == "token-mean" else None,
            ref_logprobs=on(micro.ref_logprobs) if a.use_kl_loss else None,
            kl_coef=a.kl_coef,
            kl_estimator=a.kl_estimator,
            entropy=entropy,
            entropy_coeff=a.entropy_coeff,
            token_weights=on(micro.tis_weights),
            policy_fn=self.policy_fn,
        )
        weight = float(micro.loss_mask.sum()) / max(self.mini_tokens, 1.0)
        self.parts.append({"weight": weight, "loss": float(out.loss.detach()) * scale, **out.metrics()})
        return out.loss * scale


def merge_micro(parts: Sequence[dict[str, float]]) -> dict[str, float]:
    """One mini-batch's metrics: the loss adds up; rates are token-weighted means."""
    if not parts:
        return {}
    merged: dict[str, float] = {"actor/loss": sum(p["loss"] for p in parts)}
    total = sum(p["weight"] for p in parts) or 1.0
    keys = {k for p in parts for k in p} - {"weight", "loss", "actor/loss"}
    for key in sorted(keys):
        if key == "actor/entropy":
            continue  # reported once per step from the old-policy pass
        merged[key] = sum(p.get(key, 0.0) * p["weight"] for p in parts) / total
    return merged


def mean_of(updates: Sequence[dict[str, float]]) -> dict[str, float]:
    keys = {k for u in updates for k in u}
    out = {k: sum(u.get(k, 0.0) for u in updates) / len(updates) for k in sorted(keys)}
    if updates:
        out["actor/grad_norm_max"] = max(u.get("actor/grad_norm", 0.0) for u in updates)
        out["actor/optimizer_steps"] = float(len(updates))
    return out


# -- rollout/trainer mismatch --------------------------------------------------------------------


def mismatch_metrics(batch: TrainBatch, tis_cap: float) -> dict[str, float]:
    """How far the engine's log-probs are from the trainer's on the loss tokens.

    ``rollout/kl_engine_trainer`` estimates KL(engine || trainer) from the engine's own samples
    (mean of ``log p_engine - log p_trainer``).
    """
    assert batch.old_logprobs is not None
    mask = batch.loss_mask
    if not bool(mask.any()):
        return {}
    diff = batch.engine_logprobs - batch.old_logprobs
    absdiff = diff.abs()[mask.bool()]
    out = {
        "rollout/logprob_diff_mean": float(absdiff.mean()),
        "rollout/logprob_diff_max": float(absdiff.max()),
        "rollout/kl_engine_trainer": float(masked_mean(diff, mask)),
    }
    if tis_cap > 0:
        ratio = torch.exp((batch.old_logprobs - batch.engine_logprobs).clamp(-20, 20))
        out["rollout/tis_clipfrac"] = float(masked_mean((ratio > tis_cap).float(), mask))
    return out


def tis_weights(batch: TrainBatch, cap: float) -> torch.Tensor:
    """Truncated importance weights ``min(pi_trainer / pi_engine, cap)`` per token (no gradient)."""
    assert batch.old_logprobs is not None
    return torch.exp((batch.old_logprobs - batch.engine_logprobs).clamp(-20, 20)).clamp(max=cap)


def tool_metrics(groups: Sequence[TrajectoryGroup]) -> dict[str, float]:
    """Sandbox seconds (summed over calls, overlapping generation) and failed calls of the trained groups.

    ``tool/failed`` counts every call that did not succeed (the code's own errors included);
    ``tool/errors`` the calls where the *tool* failed (raised, or overran the loop's limit), and
    ``tool/timeouts`` the calls that timed out (the tool's own limit or the loop's).
    """
    results = [
        turn.tool_result for g in groups for tr in g.trajectories for turn in tr.turns if turn.tool_result
    ]
    return {
        "timing/tools_s": sum(r.duration_ms for r in results) / 1000.0,
        "tool/calls": float(len(results)),
        "tool/failed": float(sum(not r.ok for r in results)),
        "tool/errors": float(sum(r.error is not None and not r.timed_out for r in results)),
        "tool/timeouts": float(sum(r.timed_out for r in results)),
    }


# -- checkpoints ---------------------------------------------------------------------------------


def save(t: Trainer, metrics: dict[str, float]) -> None:
    from simpletir import __version__

    run_dir = t.config.run_dir
    wandb_id = None
    if run_dir:
        from pathlib import Path

        id_file = Path(run_dir) / "wandb_id"
        wandb_id = id_file.read_text(encoding="utf-8").strip() if id_file.is_file() else None
    state = {
        "step": t.step,
        "epoch": t.sampler.epoch,
        "total_steps": t.total_steps,
        "sampler": t.sampler.state_dict(),
        "config": ckpt.resume_fingerprint(t.config),
        "wandb_id": wandb_id,
        "metrics": {k: v for k, v in metrics.items() if math.isfinite(v)},
        "simpletir": __version__,
        "saved": time.time(),
    }
    folder = ckpt.save_checkpoint(
        t.checkpoints, t.step, t.backend, state, keep=t.config.trainer.keep_checkpoints
    )
    log.info("step %d: checkpoint %s", t.step, folder)
