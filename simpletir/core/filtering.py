"""Running the chosen trajectory filters, in config order, and the facts they share.

The run builds the filters once (:func:`build_filters`, by name from ``config.filters``) and,
every step, calls :func:`apply_filters` on the scored groups. Each filter's metrics come back
prefixed ``filter/<name>/``; the composition itself adds ``filter/<name>/groups_in`` and
``groups_out`` for every filter, a third party's included, so no group disappears unreported.

Also here, because more than one filter (and the batch metrics) needs them:
  * :func:`hit_length_cap`: did a trajectory stop at the response-length cap?
  * reward shaping (:func:`shape_reward`, :func:`unshaped_score`, :func:`solved`): a filter that
    adds to a reward (DAPO's soft overlong penalty) records the delta, so accuracy-based
    decisions and solve counts still read the verifier's verdict.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from simpletir.core.errors import ConfigError, PluginError
from simpletir.core.specs import FilterContext, FilterResult, TrajectoryFilter
from simpletir.core.types import FinishReason, Trajectory, TrajectoryGroup

if TYPE_CHECKING:
    from simpletir.core.config import ExperimentConfig
    from simpletir.core.plugins import SimpletirPluginManager

LENGTH_CAP_CAUSES = ("response_length", "context_window")
SHAPING_KEY = "shaping"  # RewardResult.extra[SHAPING_KEY] = {filter name: delta added to score}


# --------------------------------------------------------------------------------------------
# facts filters share
# --------------------------------------------------------------------------------------------


def hit_length_cap(trajectory: Trajectory, max_response_length: int) -> bool:
    """True when the trajectory was cut at the response-length cap (or the context window).

    Read from the rollout's own record (finish reason, truncation flag) and the *configured*
    cap, never from the padded width of a batch tensor: SimpleTIR compared against the padded
    width, so in a batch where no response reached the cap, nothing counted as clipped.
    A prompt that was too long is not a clipped response (it has no response at all).
    """
    if (
        trajectory.finish_reason == FinishReason.PROMPT_TOO_LONG
        or trajectory.truncation_cause == "prompt_length"
    ):
        return False
    if trajectory.finish_reason == FinishReason.LENGTH:
        return True
    # "observation_length" only says one observation was shortened; the trajectory went on
    # (a cap that later ends it overrides the cause), so it does not count here.
    if trajectory.truncated and trajectory.truncation_cause in LENGTH_CAP_CAUSES:
        return True
    return len(trajectory.response_ids) >= max_response_length


def shape_reward(trajectory: Trajectory, source: str, delta: float) -> Trajectory:
    """A copy whose score has ``delta`` added, recorded under ``extra['shaping'][source]``."""
    if trajectory.reward is None:
        raise ValueError(
            f"trajectory {trajectory.problem_id}#{trajectory.sample_index} has no reward: "
            f"{source!r} shapes rewards, so it must run after the reward function"
        )
    reward = trajectory.reward
    shaping = dict(reward.extra.get(SHAPING_KEY, {}))
    shaping[source] = shaping.get(source, 0.0) + delta
    extra = {**reward.extra, SHAPING_KEY: shaping}
    return trajectory.with_reward(dataclasses.replace(reward, score=reward.score + delta, extra=extra))


def unshaped_score(trajectory: Trajectory) -> float:
    """The verifier's score, before any filter's shaping."""
    if trajectory.reward is None:
        return 0.0
    shaping = trajectory.reward.extra.get(SHAPING_KEY, {})
    return trajectory.reward.score - float(sum(shaping.values()))


def solved(trajectory: Trajectory) -> bool:
    """Whether the verifier judged the answer correct (a positive unshaped score)."""
    return unshaped_score(trajectory) > 0.0


def is_trainable(trajectory: Trajectory) -> bool:
    """Whether any token of the trajectory still carries loss."""
    return any(trajectory.loss_mask)


# --------------------------------------------------------------------------------------------
# composition
# --------------------------------------------------------------------------------------------


def filter_context(config: ExperimentConfig, *, step: int, training: bool = True) -> FilterContext:
    """The context a step's filters see, from the experiment config."""
    return FilterContext(
        step=step,
        training=training,
        max_response_length=config.max_response_length,
        train_batch_size=config.train_batch_size,
        n_samples=config.rollout.n,
    )


def apply_filters(
    filters: Sequence[TrajectoryFilter], groups: Sequence[TrajectoryGroup], ctx: FilterContext
) -> FilterResult:
    """Run ``filters`` in order; each sees what the previous one kept.

    Metrics are ``filter/<name>/<metric>``. A filter that invents groups, returns a group with
    no trajectories, or changes a trajectory's length is a plugin bug and stops the step
    with a :class:`PluginError` naming it.
    """
    current = tuple(groups)
    metrics: dict[str, float] = {}
    for flt in filters:
        result = flt.apply(current, ctx)
        _check_result(flt.name, current, result)
        prefix = f"filter/{flt.name}/"
        metrics[prefix + "groups_in"] = float(len(current))
        metrics[prefix + "groups_out"] = float(len(result.groups))
        for key, value in result.metrics.items():
            metrics[prefix + key] = float(value)
        current = tuple(result.groups)
    return FilterResult(groups=current, metrics=metrics)


def _check_result(name: str, before: Sequence[TrajectoryGroup], result: FilterResult) -> None:
    if not isinstance(result, FilterResult):
        raise PluginError(f"filter {name!r} returned {type(result).__name__}, not a FilterResult")
    if len(result.groups) > len(before):
        raise PluginError(
            f"filter {name!r} returned {len(result.groups)} groups from {len(before)}: filters only drop"
        )
    lengths = {
        (t.problem_id, t.sample_index): len(t.response_ids) for group in before for t in group.trajectories
    }
    for group in result.groups:
        if not group.trajectories:
            raise PluginError(
                f"filter {name!r} returned an empty group for problem {group.problem.id!r}: "
                "drop the group instead"
            )
        for t in group.trajectories:
            if lengths.get((t.problem_id, t.sample_index), len(t.response_ids)) != len(t.response_ids):
                raise PluginError(
                    f"filter {name!r} changed the response length of {t.problem_id}#{t.sample_index}: "
                    "filters edit loss masks, never tokens"
                )


def check_filter_names(names: Iterable[str]) -> list[str]:
    """The configured filter names, refusing duplicates (a filter twice is a config mistake)."""
    names = list(names)
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"filters lists {name!r} twice: {names}")
        seen.add(name)
    return names


def build_filters(pm: SimpletirPluginManager, config: ExperimentConfig) -> list[TrajectoryFilter]:
    """Build the filters ``config.filters`` names, in that order, each with its options."""
    built: list[TrajectoryFilter] = []
    for name in check_filter_names(config.filters):
        flt = pm.build("filter", name, config)
        if not isinstance(flt, TrajectoryFilter):
            raise PluginError(
                f"filter {name!r}: its factory built {type(flt).__name__}, which has no apply()"
            )
        built.append(flt)
    return built


def merge_draw_metrics(draws: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Combine per-draw metrics of one step: counts add up, ratios and flags average.

    A name ending in ``_ratio``, ``_mean`` or ``_frac``, or named ``active``, is a rate and is
    averaged over the draws that report it; every other metric is a count and is summed.
    """
    totals: dict[str, float] = {}
    seen: dict[str, int] = {}
    for metrics in draws:
        for key, value in metrics.items():
            totals[key] = totals.get(key, 0.0) + float(value)
            seen[key] = seen.get(key, 0) + 1
    for key in totals:
        leaf = key.rsplit("/", 1)[-1]
        if leaf == "active" or leaf.endswith(("_ratio", "_mean", "_frac")):
            totals[key] /= seen[key]
    return totals
