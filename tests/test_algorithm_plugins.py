"""Advantage estimators and policy losses are plugins: built-ins by hand-computed values, a third
party's estimator and loss chosen by name and called by the real training loop."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from simpletir import hookimpl
from simpletir.core import algo
from simpletir.core.config_load import load_config, validate_config
from simpletir.core.errors import PluginError
from simpletir.core.loggers import read_metrics
from simpletir.core.plugins import make_plugin_manager
from simpletir.core.run import run_experiment
from simpletir.core.specs import AdvantageEstimatorSpec, PolicyLossSpec

SCORES = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.5])
GROUPS = torch.tensor([0, 0, 0, 1, 1, 2])  # sizes 3, 2, 1


def close(actual: torch.Tensor, expected: list[float]) -> None:
    assert torch.allclose(actual, torch.tensor(expected), atol=1e-5), (actual.tolist(), expected)


def test_rloo_is_reward_minus_the_mean_of_the_others() -> None:
    # group 0: 1 - (0+0)/2 = 1, 0 - (1+0)/2 = -0.5 (twice); group 1: 1 - 1 = 0 (twice); group of one: 0
    close(algo.rloo_advantages(SCORES, GROUPS), [1.0, -0.5, -0.5, 0.0, 0.0, 0.0])


def test_reinforce_pp_centres_by_group_then_whitens_the_batch() -> None:
    # centred: 2/3, -1/3, -1/3, 0, 0, 0; batch mean 0; unbiased std = sqrt((4/9 + 1/9 + 1/9) / 5)
    std = math.sqrt((4 / 9 + 1 / 9 + 1 / 9) / 5)
    expected = [v / (std + 1e-6) for v in (2 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 0.0)]
    close(algo.reinforce_pp_advantages(SCORES, GROUPS), expected)


def test_estimators_refuse_non_finite_rewards() -> None:
    with pytest.raises(ValueError, match="non-finite rewards at positions"):
        algo.rloo_advantages(torch.tensor([1.0, float("nan")]), torch.tensor([0, 0]))


def test_reinforce_loss_by_hand() -> None:
    # ratios 2 and 0.5, advantages 1 and -1: losses -2 and 0.5; token mean -0.75; no clipping
    old = torch.zeros(1, 3)
    new = torch.tensor([[math.log(2.0), math.log(0.5), 0.0]], requires_grad=True)
    out = algo.reinforce_loss(new, old, torch.tensor([[1.0, -1.0, 5.0]]), torch.tensor([[1, 1, 0]]))
    assert out.loss.item() == pytest.approx(-0.75) and out.clipfrac.item() == 0.0
    out.loss.backward()
    assert new.grad is not None and new.grad[0, 2].item() == 0.0  # masked token: no gradient


def test_builtins_are_registered_through_the_entry_point_and_chosen_by_name() -> None:
    pm = make_plugin_manager()
    registry = pm.registry()
    assert {"grpo", "dr_grpo", "rloo", "reinforce_pp"} <= set(registry.names("advantage_estimator"))
    assert {"ppo_clip", "reinforce"} <= set(registry.names("policy_loss"))
    assert registry.entry("advantage_estimator", "rloo").distribution == "simpletir"
    config = load_config(None, ["algorithm.adv_estimator=rloo", "algorithm.policy_loss=reinforce"])
    estimator = pm.build("advantage_estimator", "rloo", config)
    close(estimator.compute(SCORES, GROUPS), algo.rloo_advantages(SCORES, GROUPS).tolist())
    dr = pm.build("advantage_estimator", "dr_grpo", config)
    close(dr.compute(SCORES, GROUPS), algo.grpo_advantages(SCORES, GROUPS, norm_by_std=False).tolist())


def test_an_unknown_estimator_is_a_config_error_with_a_suggestion() -> None:
    config = load_config(
        None, ["algorithm.adv_estimator=rlooo", "valid_dataset=arith", "train_dataset=arith"]
    )
    with pytest.raises(PluginError, match="unknown advantage_estimator 'rlooo' \\(did you mean 'rloo'\\?\\)"):
        validate_config(config, make_plugin_manager(), check_data=False)


class _Recorder:
    """A third party's estimator and loss: recorded calls prove the loop goes through them."""

    def __init__(self) -> None:
        self.estimates: list[int] = []
        self.losses: list[tuple[int, ...]] = []

    @hookimpl
    def register_advantage_estimators(self) -> list[AdvantageEstimatorSpec]:
        recorder = self

        class Constant:
            name = "constant"

            def compute(self, scores: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
                recorder.estimates.append(len(scores))
                return torch.ones_like(scores)  # every sample pushed up: loss must be non-zero

        return [AdvantageEstimatorSpec("constant", lambda o, e: Constant())]

    @hookimpl
    def register_policy_losses(self) -> list[PolicyLossSpec]:
        recorder = self

        class Logged:
            name = "logged"

            def compute(self, logprobs: Any, old: Any, adv: Any, mask: Any, **kw: Any) -> algo.PolicyLoss:
                recorder.losses.append(tuple(logprobs.shape))
                return algo.reinforce_loss(logprobs, old, adv, mask, **kw)

        return [PolicyLossSpec("logged", lambda o, e: Logged())]


def test_a_third_party_estimator_and_loss_drive_the_training_loop(tmp_path: Path) -> None:
    recorder = _Recorder()
    pm = make_plugin_manager(plugins=[("recorder", recorder)])
    config = load_config(
        None,
        [
            "model_name=tiny-qwen2",
            "rollout.engine=hf",
            "rollout.progress=false",
            "rollout.chat_template=false",
            "tool_use=false",
            "tools=[]",
            "filters=[]",
            "train_dataset=arith_train",
            "valid_dataset=arith",
            "max_prompt_length=512",
            "max_response_length=2",
            "rollout.n=2",
            "train_batch_size=2",
            "oversample=1",
            "total_training_steps=2",
            "test_freq=-1",
            "save_freq=-1",
            "algorithm.ppo_mini_batch_size=2",
            "algorithm.adv_estimator=constant",
            "algorithm.policy_loss=logged",
            "plugin_config.math_verify.workers=1",
            f"runs_dir={tmp_path / 'runs'}",
            f"logs_dir={tmp_path / 'logs'}",
            f"checkpoints_dir={tmp_path / 'ckpt'}",
            "experiment_name=plug",
        ],
    )
    run_experiment(config, pm)
    assert recorder.estimates == [4, 4]  # 2 prompts x 2 samples, once a step
    assert recorder.losses and all(shape[0] >= 1 for shape in recorder.losses)
    steps = [r for r in read_metrics(tmp_path / "runs" / "plug" / "metrics.jsonl") if r["phase"] == "train"]
    assert all(r["metrics"]["actor/grad_norm"] > 0 for r in steps)  # advantages of 1 moved the weights
