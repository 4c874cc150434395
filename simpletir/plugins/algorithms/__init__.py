"""Built-in advantage estimators and policy losses, registered like any third-party plugin's.

| ``algorithm.adv_estimator`` | advantage of response ``i`` in group ``g`` |
|---|---|
| ``grpo`` (default) | ``(r_i - mean_g) / (std_g + eps)`` (``r_i - mean_g`` with ``norm_adv_by_std=false``) |
| ``dr_grpo`` | ``r_i - mean_g`` (Dr.GRPO: no std normalisation, whatever ``norm_adv_by_std`` says) |
| ``rloo`` | ``r_i - mean_{j != i} r_j`` (leave-one-out baseline) |
| ``reinforce_pp`` | ``r_i - mean_g``, whitened over the batch (REINFORCE++ with a group baseline) |

| ``algorithm.policy_loss`` | per-token loss |
|---|---|
| ``ppo_clip`` (default) | PPO clip with clip-higher and dual clip (``algorithm.clip_ratio_low/high/c``) |
| ``reinforce`` | ``-A * ratio``: the plain (importance-weighted) policy gradient, no clipping |

The formulas are :mod:`simpletir.core.algo`'s pure functions, tested against hand-computed values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from simpletir import hookimpl
from simpletir.core import algo
from simpletir.core.specs import AdvantageEstimatorSpec, PolicyLossSpec

if TYPE_CHECKING:
    from torch import Tensor

    from simpletir.core.config import ExperimentConfig


@dataclass(frozen=True)
class Estimator:
    """An advantage estimator made of one pure function of ``(scores, group_ids)``."""

    name: str
    function: Callable[[Tensor, Tensor], Tensor]

    def compute(self, scores: Tensor, group_ids: Tensor) -> Tensor:
        return self.function(scores, group_ids)


def _grpo(options: Any, experiment: ExperimentConfig) -> Estimator:
    norm = experiment.algorithm.norm_adv_by_std  # SimpleTIR's switch for Dr.GRPO, kept
    return Estimator("grpo", lambda s, g: algo.grpo_advantages(s, g, norm_by_std=norm))


def _dr_grpo(options: Any, experiment: ExperimentConfig) -> Estimator:
    return Estimator("dr_grpo", lambda s, g: algo.grpo_advantages(s, g, norm_by_std=False))


def _rloo(options: Any, experiment: ExperimentConfig) -> Estimator:
    return Estimator("rloo", algo.rloo_advantages)


def _reinforce_pp(options: Any, experiment: ExperimentConfig) -> Estimator:
    return Estimator("reinforce_pp", algo.reinforce_pp_advantages)


@hookimpl
def register_advantage_estimators() -> Iterable[AdvantageEstimatorSpec]:
    return [
        AdvantageEstimatorSpec("grpo", _grpo, description="group-normalised outcome advantage (GRPO)"),
        AdvantageEstimatorSpec(
            "dr_grpo", _dr_grpo, description="group-centred, not std-normalised (Dr.GRPO)"
        ),
        AdvantageEstimatorSpec("rloo", _rloo, description="REINFORCE leave-one-out baseline"),
        AdvantageEstimatorSpec(
            "reinforce_pp", _reinforce_pp, description="REINFORCE++: group baseline, batch whitening"
        ),
    ]


@dataclass(frozen=True)
class Loss:
    """A policy loss made of one pure function of :mod:`simpletir.core.algo` and its fixed options."""

    name: str
    function: Callable[..., algo.PolicyLoss]
    options: dict[str, float] = field(default_factory=dict)

    def compute(
        self,
        logprobs: Tensor,
        old_logprobs: Tensor,
        advantages: Tensor,
        mask: Tensor,
        *,
        loss_agg_mode: str,
        max_response_length: int | None,
        denominator: float | None,
        token_weights: Tensor | None,
    ) -> algo.PolicyLoss:
        return self.function(
            logprobs,
            old_logprobs,
            advantages,
            mask,
            loss_agg_mode=loss_agg_mode,
            max_response_length=max_response_length,
            denominator=denominator,
            token_weights=token_weights,
            **self.options,
        )


def _ppo_clip(options: Any, experiment: ExperimentConfig) -> Loss:
    a = experiment.algorithm
    clips = {
        "clip_ratio_low": a.clip_ratio_low,
        "clip_ratio_high": a.clip_ratio_high,
        "clip_ratio_c": a.clip_ratio_c,
    }
    return Loss("ppo_clip", algo.policy_loss, clips)


def _reinforce(options: Any, experiment: ExperimentConfig) -> Loss:
    return Loss("reinforce", algo.reinforce_loss)


@hookimpl
def register_policy_losses() -> Iterable[PolicyLossSpec]:
    return [
        PolicyLossSpec("ppo_clip", _ppo_clip, description="PPO clip-higher + dual clip (SimpleTIR's)"),
        PolicyLossSpec("reinforce", _reinforce, description="importance-weighted policy gradient, no clip"),
    ]
