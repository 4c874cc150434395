"""A third-party simpletir plugin with one component of each kind.

| kind | name | chosen by |
|---|---|---|
| benchmark | ``arith_easy`` (alias ``arith/easy``) | ``valid_dataset`` / ``train_dataset`` |
| tool | ``calc`` (``<calc>…</calc>``) | ``tools: [calc]`` |
| reward | ``numeric_match`` | ``reward: numeric_match`` |
| filter | ``tool_errors`` | ``filters: [..., tool_errors]`` |
| advantage estimator | ``fixed_baseline`` | ``algorithm.adv_estimator: fixed_baseline`` |

Installed (``pip install``), the package's one entry point (``pyproject.toml``) makes
simpletir import this module and call its ``@hookimpl`` functions below; nothing in simpletir
changes. Each component's options live in a dataclass whose fields carry help strings
(``option(default, help)``) and whose ``__post_init__`` raises ``ConfigError`` naming the key;
each factory is cheap (simpletir calls it while checking a config, before a run starts).
"""

from __future__ import annotations

from simpletir import hookimpl
from simpletir.core.specs import AdvantageEstimatorSpec, BenchmarkSpec, FilterSpec, RewardSpec, ToolSpec

from . import arith_easy, calc, fixed_baseline, numeric_match, tool_errors


@hookimpl
def register_benchmarks() -> list[BenchmarkSpec]:
    return [
        BenchmarkSpec(
            name=arith_easy.NAME,
            factory=arith_easy.build,
            config_cls=arith_easy.ArithEasyOptions,
            description="easy arithmetic generated in code (example third-party plugin)",
            aliases=("arith/easy",),
        )
    ]


@hookimpl
def register_tools() -> list[ToolSpec]:
    return [ToolSpec(calc.NAME, calc.build, calc.CalcOptions, "a calculator: <calc>expression</calc>")]


@hookimpl
def register_rewards() -> list[RewardSpec]:
    return [
        RewardSpec(
            numeric_match.NAME,
            numeric_match.build,
            numeric_match.NumericMatchOptions,
            "1.0 when the final answer equals the ground truth as a number (metadata-aware)",
        )
    ]


@hookimpl
def register_filters() -> list[FilterSpec]:
    return [
        FilterSpec(
            tool_errors.NAME,
            tool_errors.build,
            tool_errors.ToolErrorsOptions,
            "mask trajectories with too many failed tool calls",
        )
    ]


@hookimpl
def register_advantage_estimators() -> list[AdvantageEstimatorSpec]:
    return [
        AdvantageEstimatorSpec(
            fixed_baseline.NAME,
            fixed_baseline.build,
            fixed_baseline.FixedBaselineOptions,
            "REINFORCE with a constant baseline: scale * (reward - baseline)",
        )
    ]
