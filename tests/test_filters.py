"""The built-in filters on hand-built batches, their composition, and their selection by config."""

from __future__ import annotations

import pytest

import simpletir.plugins.filters as builtin_filters
from simpletir.core.config import AlgorithmConfig, ExperimentConfig
from simpletir.core.errors import ConfigError, PluginError
from simpletir.core.filtering import (
    apply_filters,
    build_filters,
    filter_context,
    hit_length_cap,
    shape_reward,
    solved,
    unshaped_score,
)
from simpletir.core.specs import FilterContext, FilterResult, FilterSpec, NoOptions
from simpletir.core.types import FinishReason
from simpletir.plugins.filters.group import GroupFilter, GroupFilterOptions, parse_acc_band
from simpletir.plugins.filters.overlong import OverlongFilter, overlong_penalty
from simpletir.plugins.filters.void_turn import VoidTurnFilter
from simpletir.testing import make_group, make_scored_group, make_trajectory

CAP = 20


def ctx(step: int = 1, training: bool = True, n: int = 2) -> FilterContext:
    return FilterContext(
        step=step, training=training, max_response_length=CAP, train_batch_size=4, n_samples=n
    )


# -- void_turn -------------------------------------------------------------------------------


def test_void_turn_masks_whole_trajectory_and_keeps_its_reward():
    void = make_trajectory(score=1.0, turns=2, code_turns=1, void=True)  # 4 gen + 2 obs + 4 gen
    clean = make_trajectory(score=0.0, turns=2, code_turns=1)
    result = VoidTurnFilter().apply([make_group([void, clean])], ctx())
    (group,) = result.groups
    masked, kept = group.trajectories
    assert masked.loss_mask == (0,) * 10 and masked.mask_reasons == ("void_turn",)
    assert masked.score == 1.0 and group.scores == [1.0, 0.0]  # still in the group statistics
    assert kept.loss_mask == (1, 1, 1, 1, 0, 0, 1, 1, 1, 1)
    assert result.metrics == {"trajectories": 2.0, "void": 1.0, "masked": 1.0, "masked_tokens": 8.0}


def test_void_turn_disabled_only_counts_and_validation_is_untouched():
    group = make_group([make_trajectory(void=True), make_trajectory()])
    off = VoidTurnFilter(enabled=False).apply([group], ctx())
    assert off.groups == (group,) and off.metrics["void"] == 1.0 and off.metrics["masked"] == 0.0
    val = VoidTurnFilter().apply([group], ctx(training=False))
    assert val.groups == (group,) and val.metrics == {}


def test_void_turn_factory_honours_mask_void_turns_and_tool_use():
    build = builtin_filters.build_void_turn
    assert build(NoOptions(), ExperimentConfig(mask_void_turns=True)).enabled
    assert not build(NoOptions(), ExperimentConfig(mask_void_turns=False)).enabled
    assert not build(NoOptions(), ExperimentConfig(tool_use=False)).enabled


# -- overlong --------------------------------------------------------------------------------


def test_hit_length_cap_reads_flags_and_configured_cap_not_batch_width():
    assert hit_length_cap(make_trajectory(truncated=True, gen_tokens=3), CAP)  # flagged, short
    assert hit_length_cap(make_trajectory(response_length=CAP), CAP)  # exactly at the cap
    assert not hit_length_cap(make_trajectory(response_length=CAP - 1), CAP)
    assert not hit_length_cap(make_trajectory(finish_reason=FinishReason.PROMPT_TOO_LONG, gen_tokens=0), CAP)
    # a shortened observation does not end the trajectory: not clipped unless it then hit the cap
    cut_obs = make_trajectory(
        truncated=True, truncation_cause="observation_length", finish_reason=FinishReason.ANSWER
    )
    assert not hit_length_cap(cut_obs, CAP)
    assert hit_length_cap(make_trajectory(truncated=True, truncation_cause="context_window"), CAP)
    # the longest response of a batch is not "clipped" just for being the widest (SimpleTIR's bug)
    assert not hit_length_cap(make_trajectory(response_length=12), CAP)


def test_remove_clip_masks_capped_trajectories_from_start_clip_step():
    capped = make_trajectory(score=1.0, truncated=True, response_length=CAP)
    fine = make_trajectory(score=0.0, response_length=8)
    flt = OverlongFilter(remove_clip=True, start_clip_step=20)
    before = flt.apply([make_group([capped, fine])], ctx(step=19))
    assert before.metrics["active"] == 0.0 and before.metrics["clipped"] == 1.0
    assert before.metrics["masked"] == 0.0 and before.groups[0].trajectories[0].num_loss_tokens == CAP
    after = flt.apply([make_group([capped, fine])], ctx(step=20))
    masked, kept = after.groups[0].trajectories
    assert after.metrics["active"] == 1.0 and after.metrics["masked"] == 1.0
    assert after.metrics["masked_tokens"] == float(CAP)
    assert masked.num_loss_tokens == 0 and masked.mask_reasons == ("overlong",) and masked.score == 1.0
    assert kept.num_loss_tokens == 8


def test_remove_clip_off_never_masks():
    result = OverlongFilter(remove_clip=False).apply(
        [make_group([make_trajectory(truncated=True)])], ctx(step=99)
    )
    assert result.metrics["clipped"] == 1.0 and result.metrics["masked"] == 0.0


def test_overlong_penalty_formula_by_hand():
    # cap 20, buffer 8: no penalty up to 12 tokens, then linear to -factor at 20
    assert overlong_penalty(12, 20, 8, 1.0) == 0.0
    assert overlong_penalty(14, 20, 8, 1.0) == pytest.approx(-0.25)
    assert overlong_penalty(20, 20, 8, 0.5) == pytest.approx(-0.5)
    assert overlong_penalty(25, 20, 8, 1.0) == pytest.approx(-1.0)  # bounded at -factor
    assert overlong_penalty(20, 20, 0, 1.0) == 0.0  # buffer 0: off


def test_soft_penalty_shapes_reward_but_not_the_verdict():
    long_right = make_trajectory(score=1.0, response_length=16)  # exceed 4 of 8 -> -0.5
    short_wrong = make_trajectory(score=0.0, response_length=10)
    result = OverlongFilter(buffer_len=8, penalty_factor=1.0).apply(
        [make_group([long_right, short_wrong])], ctx()
    )
    shaped, untouched = result.groups[0].trajectories
    assert shaped.score == pytest.approx(0.5) and shaped.reward is not None
    assert shaped.reward.extra["shaping"] == {"overlong": pytest.approx(-0.5)}
    assert unshaped_score(shaped) == pytest.approx(1.0) and solved(shaped)
    assert untouched.score == 0.0 and untouched.num_loss_tokens == 10  # shaping never masks
    assert result.metrics["penalized"] == 1.0 and result.metrics["penalty_sum"] == pytest.approx(-0.5)


def test_soft_penalty_needs_scored_trajectories_and_a_sane_buffer():
    with pytest.raises(ValueError, match="no reward"):
        OverlongFilter(buffer_len=8).apply(
            [make_group([make_trajectory(score=None, response_length=18)])], ctx()
        )
    with pytest.raises(ConfigError, match="overlong_buffer_len=20"):
        OverlongFilter(buffer_len=CAP).apply([], ctx())
    with pytest.raises(ConfigError, match="overlong_buffer_len=-1"):
        builtin_filters.build_overlong(
            NoOptions(), ExperimentConfig(algorithm=AlgorithmConfig(overlong_buffer_len=-1))
        )


def test_shape_reward_accumulates_per_source():
    t = shape_reward(shape_reward(make_trajectory(score=1.0), "a", -0.25), "a", -0.25)
    assert t.score == pytest.approx(0.5) and unshaped_score(t) == pytest.approx(1.0)


# -- group -----------------------------------------------------------------------------------


def test_acc_band_parsing_and_errors_name_key_and_value():
    assert parse_acc_band("0.1_0.9") == (0.1, 0.9)
    assert parse_acc_band(None) is None and parse_acc_band("off") is None
    for bad in ("0.9_0.1", "0.1-0.9", "x_0.9", "0.1_1.5", "0.1_0.5_0.9"):
        with pytest.raises(ConfigError, match=rf"plugin_config\.group\.acc_filter='{bad}'"):
            GroupFilterOptions(acc_filter=bad)
    with pytest.raises(ConfigError, match="min_n=0"):
        GroupFilterOptions(min_n=0)


def test_group_filter_drops_each_reason_and_counts_it():
    n = 2
    groups = [
        make_scored_group([1.0, 0.0], "mixed"),  # kept
        make_scored_group([1.0, 1.0], "all_right"),  # low_std, solve_all
        make_scored_group([0.0, 0.0], "all_wrong"),  # low_std, solve_none
        make_group([make_trajectory(score=s, truncated=True) for s in (1.0, 0.0)], "capped"),  # all_clipped
        make_group([make_trajectory(score=s).masked("void_turn") for s in (1.0, 0.0)], "void"),  # all_masked
        make_scored_group([0.5], "single"),  # short, and a group of one has std 0 -> low_std
    ]
    result = GroupFilter().apply(groups, ctx(n=n))
    assert [g.problem.id for g in result.groups] == ["mixed"]
    m = result.metrics
    assert (m["kept"], m["dropped"]) == (1.0, 5.0)
    assert (m["low_std"], m["all_clipped"], m["all_masked"], m["below_min_n"]) == (3.0, 1.0, 1.0, 0.0)
    # solved: mixed 1/2, all_right 2/2, all_wrong 0/2, capped 1/2, void 1/2, single 1/1
    assert (m["solve_all"], m["solve_none"], m["short"]) == (2.0, 1.0, 1.0)


def test_group_filter_min_n_counts_samples_that_still_carry_loss():
    trajs = [
        make_trajectory(score=1.0).masked("void_turn"),
        make_trajectory(score=1.0),
        make_trajectory(score=0.0),
    ]
    group = make_group(trajs, "g")
    assert GroupFilter(GroupFilterOptions(min_n=2)).apply([group], ctx(n=3)).groups == (group,)
    dropped = GroupFilter(GroupFilterOptions(min_n=3)).apply([group], ctx(n=3))
    assert dropped.groups == () and dropped.metrics["below_min_n"] == 1.0


def test_group_filter_accuracy_band_uses_verdict_before_shaping():
    quarter = make_scored_group([1.0, 0.0, 0.0, 0.0], "quarter")
    most = make_scored_group([1.0, 1.0, 1.0, 0.0], "most")
    half = make_scored_group([1.0, 1.0, 0.0, 0.0], "half")
    # a shaped-down correct answer still counts as solved: 2/4 stays 0.5
    shaped = make_group([shape_reward(t, "overlong", -0.9) for t in half.trajectories], "half")
    result = GroupFilter(GroupFilterOptions(acc_filter="0.3_0.7")).apply([quarter, most, shaped], ctx(n=4))
    assert [g.problem.id for g in result.groups] == ["half"]
    assert (result.metrics["acc_low"], result.metrics["acc_high"]) == (1.0, 1.0)


def test_group_filter_options_switch_reasons_off():
    opts = GroupFilterOptions(rejection_sample=False, drop_all_clipped=False)
    uniform = make_scored_group([1.0, 1.0], "uniform")
    capped = make_group([make_trajectory(score=s, truncated=True) for s in (1.0, 0.0)], "capped")
    assert len(GroupFilter(opts).apply([uniform, capped], ctx()).groups) == 2


def test_group_filter_drops_empty_groups_and_skips_validation():
    empty = make_group([], "empty")
    assert GroupFilter().apply([empty], ctx()).metrics["empty"] == 1.0
    uniform = make_scored_group([1.0, 1.0])
    assert GroupFilter().apply([uniform], ctx(training=False)).groups == (uniform,)


# -- composition -----------------------------------------------------------------------------


def test_filters_compose_in_config_order_with_prefixed_metrics():
    # void masking first makes the second group all-masked for the group filter
    groups = [
        make_scored_group([1.0, 0.0], "a"),
        make_group([make_trajectory(score=1.0, void=True), make_trajectory(score=0.0, void=True)], "b"),
    ]
    result = apply_filters([VoidTurnFilter(), GroupFilter()], groups, ctx())
    assert [g.problem.id for g in result.groups] == ["a"]
    m = result.metrics
    assert m["filter/void_turn/masked"] == 2.0 and m["filter/group/all_masked"] == 1.0
    assert (m["filter/void_turn/groups_in"], m["filter/void_turn/groups_out"]) == (2.0, 2.0)
    assert (m["filter/group/groups_in"], m["filter/group/groups_out"]) == (2.0, 1.0)
    # the other order: group sees no masks yet and keeps both (rewards differ in each)
    reversed_order = apply_filters([GroupFilter(), VoidTurnFilter()], groups, ctx())
    assert len(reversed_order.groups) == 2


class _BadFilter:
    name = "bad"

    def __init__(self, make):
        self.make = make

    def apply(self, groups, ctx):
        return self.make(groups)


def test_composition_refuses_filters_that_break_the_contract():
    group = make_scored_group([1.0, 0.0])
    with pytest.raises(PluginError, match="'bad' returned an empty group"):
        apply_filters([_BadFilter(lambda gs: FilterResult((gs[0].replace([]),)))], [group], ctx())
    with pytest.raises(PluginError, match="filters only drop"):
        apply_filters([_BadFilter(lambda gs: FilterResult((gs[0], gs[0])))], [group], ctx())
    with pytest.raises(PluginError, match="not a FilterResult"):
        apply_filters([_BadFilter(lambda gs: list(gs))], [group], ctx())


# -- registration and selection by config -----------------------------------------------------


def test_hookimpl_yields_the_three_specs():
    specs = list(builtin_filters.register_filters())
    assert [s.name for s in specs] == ["void_turn", "overlong", "group"]
    assert all(isinstance(s, FilterSpec) and s.description for s in specs)
    assert specs[2].config_cls is GroupFilterOptions


def test_entry_point_registers_the_filters():
    from simpletir.core.plugins import make_plugin_manager

    others = ["python_tool", "math_verify", "benchmarks"]
    pm = make_plugin_manager(block=others, environ={})
    assert set(pm.registry().names("filter")) >= {"void_turn", "overlong", "group"}


def test_config_selects_orders_and_configures_filters():
    from simpletir.core.plugins import make_plugin_manager

    pm = make_plugin_manager(load_entry_points=False, plugins=[("filters", builtin_filters)])
    config = ExperimentConfig(
        filters=["group", "overlong"],
        remove_clip=True,
        start_clip_step=3,
        plugin_config={"group": {"acc_filter": "0.1_0.9", "min_n": 2}},
    )
    group, overlong = build_filters(pm, config)
    assert (
        isinstance(group, GroupFilter) and group.options.acc_filter == "0.1_0.9" and group.options.min_n == 2
    )
    assert isinstance(overlong, OverlongFilter) and overlong.remove_clip and overlong.start_clip_step == 3
    assert filter_context(config, step=5).n_samples == config.rollout.n

    bad = ExperimentConfig(filters=["group"], plugin_config={"group": {"acc_filter": "0.9_0.1"}})
    with pytest.raises(ConfigError, match=r"plugin_config\.group\.acc_filter='0\.9_0\.1'"):
        build_filters(pm, bad)
    with pytest.raises(PluginError, match="unknown filter 'void_turns'"):
        build_filters(pm, ExperimentConfig(filters=["void_turns"]))
    with pytest.raises(ConfigError, match="twice"):
        build_filters(pm, ExperimentConfig(filters=["group", "group"]))
