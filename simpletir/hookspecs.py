"""Every hook a simpletir plugin can implement.

A plugin is a module (or object) with functions decorated by ``simpletir.hookimpl`` whose names
match the specs below, advertised under the entry-point group ``simpletir`` of its package::

    [project.entry-points.simpletir]
    my_plugin = "my_package.plugin"

The built-in plugins register through this very same group. Discovery hooks (``register_*``)
are called once when the plugin manager is built; each returns an iterable of spec records
(see :mod:`simpletir.core.specs`). Lifecycle hooks are called by the run; all their results are
collected unless a spec says ``firstresult``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from simpletir.core.config import ExperimentConfig
    from simpletir.core.specs import (
        AdvantageEstimatorSpec,
        BenchmarkSpec,
        FilterSpec,
        PolicyLossSpec,
        RewardSpec,
        ToolSpec,
    )
    from simpletir.core.types import StepReport

PROJECT_NAME = "simpletir"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# -- discovery --------------------------------------------------------------------------------


@hookspec
def register_tools() -> Iterable[ToolSpec]:
    """Return the tools this plugin provides, as :class:`~simpletir.core.specs.ToolSpec` records.

    A tool finds a call in a finished model turn (e.g. a fenced Python block), runs it and
    formats the observation appended to the trajectory (:class:`~simpletir.core.specs.Tool`:
    per-trajectory :class:`~simpletir.core.types.ToolContext` and sessions, prompt
    ``instructions``, guarded calls). Experiments choose tools by name (``tools: [python]``).
    Two plugins yielding the same name stop the run with an error that names both distributions.
    """


@hookspec
def register_rewards() -> Iterable[RewardSpec]:
    """Return the reward functions this plugin provides (:class:`~simpletir.core.specs.RewardSpec`).

    A reward scores a response against the problem's ground truth and says why
    (``reward: math_verify``); with ``score_inputs`` it sees the whole picture, one
    :class:`~simpletir.core.types.RewardInput` (problem, trajectory, text, final answer) each.
    """


@hookspec
def register_filters() -> Iterable[FilterSpec]:
    """Return the trajectory filters this plugin provides (:class:`~simpletir.core.specs.FilterSpec`).

    Filters edit loss masks or drop groups of a training batch and report counts; they run in
    the order the config lists them (``filters: [void_turn, overlong, group]``).
    """


@hookspec
def register_benchmarks() -> Iterable[BenchmarkSpec]:
    """Return the benchmarks and training sets this plugin provides.

    Each :class:`~simpletir.core.specs.BenchmarkSpec` has a name and optional aliases, both
    usable in ``valid_dataset`` / ``train_dataset`` (``"aime24 deepscaler/aime25"``).
    """


@hookspec
def register_advantage_estimators() -> Iterable[AdvantageEstimatorSpec]:
    """Return the advantage estimators this plugin provides (``AdvantageEstimatorSpec`` records).

    An estimator's built object has ``compute(scores [B], group_ids [B]) -> advantages [B]``
    (:class:`~simpletir.core.specs.AdvantageEstimator`); the trainer calls it once per step on
    the kept groups. Chosen by ``algorithm.adv_estimator`` (built-ins: ``grpo``, ``dr_grpo``,
    ``rloo``, ``reinforce_pp``).
    """


@hookspec
def register_policy_losses() -> Iterable[PolicyLossSpec]:
    """Return the policy losses this plugin provides (``PolicyLossSpec`` records).

    A loss's built object has ``compute(logprobs, old_logprobs, advantages, mask, *,
    loss_agg_mode, max_response_length, denominator, token_weights) -> PolicyLoss``
    (:class:`~simpletir.core.specs.PolicyLossFunction`), all ``[B, T]``; the trainer calls it on
    every micro-batch. Chosen by ``algorithm.policy_loss`` (built-ins: ``ppo_clip``, ``reinforce``).
    """


# -- lifecycle --------------------------------------------------------------------------------


@hookspec(historic=True)
def configure(config: ExperimentConfig) -> None:
    """Called once with the resolved, validated experiment config before any heavy work.

    Historic: a plugin registered later still receives the call. Raise
    :class:`~simpletir.core.errors.ConfigError` to reject a config this plugin cannot serve.
    """


@hookspec
def on_step_end(report: StepReport) -> None:
    """Called after every training step with its metrics (reward, filters, loss, timings).

    Implementations must not mutate ``report``. Custom dashboards live here; the built-in
    loggers of ``trainer.loggers`` (console, jsonl, wandb) are called before any plugin.
    """


@hookspec
def on_validation_end(report: StepReport) -> None:
    """Called after every validation pass (and at the end of a ``val_only`` run) with its metrics."""


@hookspec
def on_run_end(run_dir: str, metrics: Mapping[str, float]) -> None:
    """Called once when a run finishes (not when it crashes), with its final metrics."""
