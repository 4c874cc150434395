"""Tests of the example plugin's components, as an outside package would write them.

Each test builds a plugin manager with only this plugin registered in-process (no entry
points), so it runs without installing the package and without simpletir's built-ins.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
import simpletir_example_plugin
import torch
from simpletir_example_plugin.calc import CalcTool

from simpletir.core.config import ExperimentConfig
from simpletir.core.config_load import load_config, validate_config
from simpletir.core.errors import ConfigError
from simpletir.core.plugins import SimpletirPluginManager, make_plugin_manager
from simpletir.core.specs import (
    AdvantageEstimator,
    Benchmark,
    ComponentKind,
    FilterContext,
    Reward,
    Tool,
    TrajectoryFilter,
)
from simpletir.core.types import ToolCall, ToolContext, ToolResult, Trajectory
from simpletir.testing import make_group, make_problem, make_trajectory

# Choose every example component; the rest of a training config needs a policy loss, which
# this plugin does not provide, so tests that validate a training config add simpletir's.
CHOOSE_ALL = [
    "valid_dataset=arith_easy",
    "train_dataset=arith/easy",
    "tools=[calc]",
    "reward=numeric_match",
    "filters=[tool_errors]",
    "algorithm.adv_estimator=fixed_baseline",
]


def pm(*, with_policy_losses: bool = False) -> SimpletirPluginManager:
    plugins = [("example", simpletir_example_plugin)]
    if with_policy_losses:  # a training config also needs a policy loss: simpletir's built-ins
        import simpletir.plugins.algorithms

        plugins.append(("algorithms", simpletir.plugins.algorithms))
    return make_plugin_manager(load_entry_points=False, plugins=plugins)


def config(*overrides: str) -> ExperimentConfig:
    return load_config(None, [*CHOOSE_ALL, "val_only=True", *overrides], environ={})


def build(kind: ComponentKind, name: str, *overrides: str) -> Any:
    return pm().build(kind, name, config(*overrides))


def test_every_kind_is_registered() -> None:
    registry = pm().registry()
    assert registry.names("benchmark") == ["arith_easy"]
    assert registry.names("tool") == ["calc"]
    assert registry.names("reward") == ["numeric_match"]
    assert registry.names("filter") == ["tool_errors"]
    assert registry.names("advantage_estimator") == ["fixed_baseline"]
    for entry in registry.all():  # every option has a help string
        assert all(f.metadata.get("help") for f in dataclasses.fields(entry.spec.config_cls)), entry.spec.name


def test_a_config_choosing_them_validates() -> None:
    resolved = validate_config(config(), pm(), check_data=False)
    assert resolved.plugin_config["calc"]["decimals"] == 6  # options come back with defaults
    assert resolved.plugin_config["arith_easy"]["size"] == 50
    training = validate_config(config("val_only=False"), pm(with_policy_losses=True), check_data=False)
    assert training.plugin_config["fixed_baseline"] == {"baseline": 0.5, "scale": 1.0}


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("plugin_config.arith_easy.size=0", "plugin_config.arith_easy.size"),
        ("plugin_config.arith_easy.operators=/", "plugin_config.arith_easy.operators"),
        ("plugin_config.calc.decimals=99", "plugin_config.calc.decimals"),
        ("plugin_config.numeric_match.tolerance=-1", "plugin_config.numeric_match.tolerance"),
        ("plugin_config.tool_errors.max_errors=-1", "plugin_config.tool_errors.max_errors"),
        ("plugin_config.fixed_baseline.scale=0", "plugin_config.fixed_baseline.scale"),
    ],
)
def test_bad_options_are_one_line_naming_the_key(override: str, key: str) -> None:
    training = "fixed_baseline" in override  # the estimator is used by training runs only
    with pytest.raises(ConfigError) as info:
        validate_config(
            config(override, f"val_only={not training}"), pm(with_policy_losses=training), check_data=False
        )
    assert str(info.value).startswith(key) and "\n" not in str(info.value)


# -- benchmark -----------------------------------------------------------------------------------


def test_benchmark_is_deterministic_and_samples_with_the_seed() -> None:
    bench = build("benchmark", "arith_easy", "plugin_config.arith_easy.size=10")
    assert isinstance(bench, Benchmark)
    problems = bench.load(None)
    assert len(problems) == 10 and problems == bench.load(None)
    assert problems[0].question.startswith("What is ") and problems[0].meta["operator"] in "+-*"
    assert bench.load(None, limit=3, seed=1) == bench.load(None, limit=3, seed=1)
    assert len(bench.load(None, limit=3, seed=1)) == 3


# -- tool ----------------------------------------------------------------------------------------


def test_calc_parses_runs_and_formats() -> None:
    tool: CalcTool = build("tool", "calc")
    assert isinstance(tool, Tool)
    assert tool.stop_strings == ("</calc>",) and "<calc>" in tool.instructions
    assert tool.parse_call("no call") is None
    assert tool.parse_call("<calc>1+1</calc> then <calc>2 * (3 + 4)</calc>") == ToolCall(
        "calc", "2 * (3 + 4)"
    )
    result = asyncio.run(tool.run(ToolCall("calc", "2 * (3 + 4)")))
    assert result.ok and result.stdout == "14"
    assert tool.format_observation(result) == "\n<result>14</result>\n"
    assert asyncio.run(tool.run(ToolCall("calc", "1/3"))).stdout == "0.333333"


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("1/0", "ZeroDivisionError"),
        ("__import__('os')", "Call is not arithmetic"),
        ("2 ** 1000", "above max_exponent"),
        ("x + 1", "unknown name 'x'"),
        ("1 +", "not an arithmetic expression"),
    ],
)
def test_calc_failures_are_results_not_exceptions(code: str, error: str) -> None:
    result = asyncio.run(build("tool", "calc").run(ToolCall("calc", code)))
    assert not result.ok and error in result.stderr


def test_calc_sessions_keep_variables_per_trajectory() -> None:
    tool = build("tool", "calc")
    problem = make_problem()
    first = ToolContext(problem, sample_index=0, turn_index=0, session=tool.open_session(None))
    second = ToolContext(problem, sample_index=1, turn_index=0, session=tool.open_session(None))
    assert asyncio.run(tool.run(ToolCall("calc", "x = 6 * 7"), first)).stdout == "42"
    assert asyncio.run(tool.run(ToolCall("calc", "x + 1"), first)).stdout == "43"
    assert "unknown name 'x'" in asyncio.run(tool.run(ToolCall("calc", "x + 1"), second)).stderr
    tool.close_session(first.session)
    assert first.session == {}


def test_calc_run_many() -> None:
    async def collect() -> list[tuple[int, ToolResult]]:
        return [
            item
            async for item in build("tool", "calc").run_many([ToolCall("calc", "1+1"), ToolCall("calc", "3")])
        ]

    assert [(i, r.stdout) for i, r in asyncio.run(collect())] == [(0, "2"), (1, "3")]


# -- reward --------------------------------------------------------------------------------------


def test_numeric_match_scores_pairs() -> None:
    reward = build("reward", "numeric_match")
    assert isinstance(reward, Reward)
    results = reward.score_many(
        [("so \\boxed{42}", "42"), ("it is 41", "42"), ("no idea", "42"), ("42.0", "42")]
    )
    assert [(r.score, r.reason) for r in results] == [
        (1.0, "correct"),
        (0.0, "wrong"),
        (0.0, "no_answer"),
        (1.0, "correct"),
    ]


def test_numeric_match_reads_metadata_and_tool_errors() -> None:
    from simpletir.core.types import RewardInput

    reward = build("reward", "numeric_match", "plugin_config.numeric_match.tool_error_penalty=0.25")
    loose = dataclasses.replace(make_problem(ground_truth="3.14"), meta={"tolerance": 0.01})
    clean = make_trajectory(code_turns=1)
    failed = _with_failed_call(clean)
    results = reward.score_inputs(
        [
            RewardInput(
                loose, clean, "pi is about \\boxed{3.141}", "3.141"
            ),  # within the problem's tolerance
            RewardInput(make_problem(ground_truth="3.14"), clean, "", "3.141"),  # the default is strict
            RewardInput(loose, failed, "", "3.141"),  # a failed tool call costs 0.25
        ]
    )
    assert [r.score for r in results] == [1.0, 0.0, 0.75]


def _with_failed_call(trajectory: Trajectory) -> Trajectory:
    turns = list(trajectory.turns)
    turns[0] = dataclasses.replace(turns[0], tool_result=ToolResult(stderr="boom", exit_code=1))
    return dataclasses.replace(trajectory, turns=tuple(turns))


# -- filter --------------------------------------------------------------------------------------


def test_tool_errors_masks_only_trajectories_over_the_limit() -> None:
    flt = build("filter", "tool_errors", "plugin_config.tool_errors.max_errors=0")
    assert isinstance(flt, TrajectoryFilter)
    ok = make_trajectory(code_turns=1)
    bad = _with_failed_call(ok)
    ctx = FilterContext(step=1, training=True, max_response_length=100, train_batch_size=1, n_samples=2)
    result = flt.apply([make_group([ok, bad])], ctx)
    (group,) = result.groups
    assert [t.is_masked for t in group.trajectories] == [False, True]
    assert group.trajectories[1].mask_reasons == ("tool_errors",)
    assert result.metrics["masked"] == 1.0
    validation = dataclasses.replace(ctx, training=False)
    assert flt.apply([make_group([ok, bad])], validation).groups[0].trajectories[1].is_masked is False


# -- advantage estimator -------------------------------------------------------------------------


def test_fixed_baseline_by_hand() -> None:
    estimator = build("advantage_estimator", "fixed_baseline", "plugin_config.fixed_baseline.scale=2")
    assert isinstance(estimator, AdvantageEstimator)
    advantages = estimator.compute(torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([0, 0, 1, 1]))
    assert advantages.tolist() == [1.0, -1.0, 1.0, 1.0]
