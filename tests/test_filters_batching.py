"""Oversampling and refill: drawing prompts until enough groups survive the filters."""

from __future__ import annotations

import asyncio

import pytest

from simpletir.core.batching import (
    BatchCollector,
    PromptSampler,
    acollect_batch,
    collect_batch,
    rollout_metrics,
    select_groups,
)
from simpletir.core.specs import FilterContext, TrajectoryFilter
from simpletir.core.types import Problem, StepReport, TrajectoryGroup
from simpletir.plugins.filters.group import GroupFilter
from simpletir.plugins.filters.void_turn import VoidTurnFilter
from simpletir.testing import make_group, make_problem, make_scored_group, make_trajectory


def ctx(batch: int) -> FilterContext:
    return FilterContext(step=1, training=True, max_response_length=20, train_batch_size=batch, n_samples=2)


def problems(k: int) -> list[Problem]:
    return [make_problem(f"q{i}") for i in range(k)]


def fake_rollout(useful: set[str]):
    """Groups with reward spread for problems in ``useful``, uniform rewards otherwise."""
    calls: list[int] = []

    def rollout(batch):
        calls.append(len(batch))
        return [make_scored_group([1.0, 0.0] if p.id in useful else [1.0, 1.0], p.id) for p in batch]

    return rollout, calls


def test_prompt_sampler_covers_each_epoch_once_and_resumes_exactly():
    sampler = PromptSampler(problems(5), seed=3)
    first = [p.id for p in sampler.take(5)]
    assert sorted(first) == [f"q{i}" for i in range(5)] and sampler.epoch == 0
    crossing = [p.id for p in sampler.take(7)]  # all of epoch 1, then 2 of epoch 2
    assert sorted(crossing[:5]) == sorted(first) and sampler.epoch == 2
    state = sampler.state_dict()
    expected = [p.id for p in sampler.take(4)]
    resumed = PromptSampler(problems(5), seed=0)
    resumed.load_state_dict(state)
    assert [p.id for p in resumed.take(4)] == expected
    with pytest.raises(ValueError, match="at least one"):
        PromptSampler([])


def test_select_groups_never_pads():
    groups = [make_scored_group([1.0, 0.0], f"g{i}") for i in range(3)]
    kept, m = select_groups(groups, 2)
    assert [g.problem.id for g in kept] == ["g0", "g1"] and m["batch/surplus_groups"] == 1.0
    kept, m = select_groups(groups, 5)
    assert len(kept) == 3 and m["batch/effective_batch_size"] == 3.0 and m["batch/shortfall"] == 2.0


def test_one_draw_enough_takes_batch_times_oversample_prompts():
    sampler = PromptSampler(problems(40), shuffle=False)
    rollout, calls = fake_rollout({f"q{i}" for i in range(0, 40, 2)})  # half survive
    batch = collect_batch(sampler.take, rollout, [GroupFilter()], ctx(4), oversample=3, max_draws=3)
    assert calls == [12]  # 4 x 3, and 6 survivors are enough
    assert batch.effective_batch_size == 4
    assert [g.problem.id for g in batch.groups] == ["q0", "q2", "q4", "q6"]
    m = batch.metrics
    assert m["batch/draws"] == 1.0 and m["batch/prompts_drawn"] == 12.0
    assert m["batch/filter_all"] == 6.0 and m["filter/group/low_std"] == 6.0
    assert m["batch/surplus_groups"] == 2.0 and m["batch/shortfall"] == 0.0
    assert m["batch/solve_all"] == 6.0 and m["batch/solve_none"] == 0.0


def test_refill_draws_fresh_prompts_for_the_missing_groups():
    sampler = PromptSampler(problems(40), shuffle=False)
    rollout, calls = fake_rollout({"q0", "q5", "q9", "q12", "q13"})
    batch = collect_batch(sampler.take, rollout, [GroupFilter()], ctx(4), oversample=2, max_draws=3)
    # draw 1: q0..q7 -> q0, q5 survive; 2 missing -> draw 2: q8..q11 -> q9; draw 3: q12, q13
    assert calls == [8, 4, 2]
    assert [g.problem.id for g in batch.groups] == ["q0", "q5", "q9", "q12"]
    assert len({g.problem.id for g in batch.groups}) == 4  # fresh prompts, no duplicates
    m = batch.metrics
    assert m["batch/draws"] == 3.0 and m["batch/prompts_drawn"] == 14.0
    assert m["filter/group/low_std"] == 9.0  # summed over the draws
    assert m["batch/effective_batch_size"] == 4.0 and m["batch/surplus_groups"] == 1.0
    # the metrics go into the step report as they are: flat, slash-namespaced floats
    report = StepReport(step=1, epoch=0, metrics=dict(batch.metrics))
    assert all(isinstance(v, float) and "/" in k for k, v in report.metrics.items())
    assert {"env/void_turn_ratio", "env/code_use_ratio", "batch/solve_none", "batch/solve_all"} <= set(m)


def test_budget_spent_reports_a_short_batch_instead_of_duplicating():
    sampler = PromptSampler(problems(40), shuffle=False)
    rollout, calls = fake_rollout({"q1"})
    batch = collect_batch(sampler.take, rollout, [GroupFilter()], ctx(4), oversample=2, max_draws=2)
    assert calls == [8, 6]
    assert [g.problem.id for g in batch.groups] == ["q1"]
    assert batch.metrics["batch/effective_batch_size"] == 1.0 and batch.metrics["batch/shortfall"] == 3.0


def test_empty_groups_never_reach_the_trainer_even_without_filters():
    def rollout(batch):
        return [make_group([], p.id) if p.id == "q1" else make_scored_group([1.0, 0.0], p.id) for p in batch]

    sampler = PromptSampler(problems(10), shuffle=False)
    batch = collect_batch(sampler.take, rollout, [], ctx(3), oversample=1, max_draws=2)
    assert all(g.trajectories for g in batch.groups)
    assert [g.problem.id for g in batch.groups] == ["q0", "q2", "q3"]
    assert batch.metrics["batch/empty_groups"] == 1.0 and batch.metrics["batch/draws"] == 2.0


def test_rollout_metrics_use_simpletir_names():
    void = make_trajectory(score=1.0, turns=2, code_turns=1, void=True)  # 1 of 2 turns ran code
    tool = make_trajectory(score=0.0, turns=1, code_turns=1)  # 1 of 1
    plain = make_trajectory(score=0.0, response_length=20)  # at the cap of 20
    m = rollout_metrics([make_group([void, tool], "a"), make_group([plain], "b")], 20)
    assert m["env/void_turn_ratio"] == pytest.approx(1 / 3)
    assert m["env/code_use_ratio"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert m["env/num_turns/mean"] == pytest.approx(4 / 3)
    assert m["batch/response_clip_number"] == 1.0
    assert (m["batch/solve_none"], m["batch/solve_all"]) == (1.0, 0.0)


def test_void_masking_is_counted_across_draws():
    def rollout(batch):
        out: list[TrajectoryGroup] = []
        for p in batch:
            trajs = [make_trajectory(score=1.0, void=True), make_trajectory(score=0.0)]
            out.append(make_group(trajs, p.id))
        return out

    sampler = PromptSampler(problems(10), shuffle=False)
    filters: list[TrajectoryFilter] = [VoidTurnFilter(), GroupFilter()]
    batch = collect_batch(sampler.take, rollout, filters, ctx(2), oversample=1, max_draws=1)
    assert batch.metrics["filter/void_turn/masked"] == 2.0 and batch.metrics["env/void_turn_ratio"] == 0.5
    for group in batch.groups:  # masked sample kept, still in the group's rewards
        assert group.scores == [1.0, 0.0] and group.trajectories[0].num_loss_tokens == 0


def test_async_collection_and_collector_guards():
    sampler = PromptSampler(problems(20), shuffle=False)
    rollout, _ = fake_rollout({f"q{i}" for i in range(20)})

    async def arollout(batch):
        return rollout(batch)

    batch = asyncio.run(acollect_batch(sampler.take, arollout, [GroupFilter()], ctx(3), oversample=2))
    assert batch.effective_batch_size == 3
    collector = BatchCollector([], ctx(1), max_draws=1)
    collector.add([make_scored_group([1.0, 0.0])])
    with pytest.raises(RuntimeError, match="already complete"):
        collector.add([])
    with pytest.raises(ValueError, match="oversample"):
        BatchCollector([], ctx(1), oversample=0.5)
