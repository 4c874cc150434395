"""Small in-test plugins providing one component of each kind, for core tests.

They let the plugin manager, config checks and run dispatch be tested without the built-in
plugins (and without a model, a sandbox or data).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simpletir import hookimpl
from simpletir.core.specs import (
    AdvantageEstimatorSpec,
    BenchmarkSpec,
    FilterSpec,
    PolicyLossSpec,
    RewardSpec,
    ToolSpec,
)
from simpletir.core.types import Message, Problem


@dataclass
class EchoToolOptions:
    timeout_s: float = 5.0
    workers: int = 2


@dataclass
class ExactOptions:
    strip: bool = True
    tags: list[str] = field(default_factory=list)


@dataclass
class Built:
    """What a fake factory returns: the options and experiment config it was given."""

    name: str
    options: Any
    experiment: Any


class TinyBenchmark:
    name = "tiny"

    def load(self, data_dir: Path | None, *, limit: int | None = None, seed: int = 0) -> list[Problem]:
        problems = [Problem(str(i), "tiny", (Message("user", f"{i}+1?"),), str(i + 1)) for i in range(6)]
        return problems[:limit] if limit else problems


@dataclass
class CheckedOptions:
    available: bool = True


class CheckedBenchmark(TinyBenchmark):
    """A benchmark that decides itself whether its data is there (e.g. an explicit path option)."""

    def __init__(self, options: CheckedOptions) -> None:
        self.options = options

    def check_data(self, data_dir: Path | None) -> None:
        from simpletir.core.errors import DataError

        if not self.options.available:
            raise DataError("checked: its data is not available")


class FakeAlgorithms:
    """An advantage estimator and a policy loss, so training configs validate without built-ins."""

    @hookimpl
    def register_advantage_estimators(self) -> list[AdvantageEstimatorSpec]:
        return [AdvantageEstimatorSpec("fake_adv", lambda o, e: Built("fake_adv", o, e))]

    @hookimpl
    def register_policy_losses(self) -> list[PolicyLossSpec]:
        return [PolicyLossSpec("fake_loss", lambda o, e: Built("fake_loss", o, e))]


class FakeComponents(FakeAlgorithms):
    """One tool, reward, filter and benchmark (and the algorithms); names chosen to exercise suggestions."""

    @hookimpl
    def register_tools(self) -> list[ToolSpec]:
        return [ToolSpec("echo", lambda o, e: Built("echo", o, e), EchoToolOptions, "echo the code back")]

    @hookimpl
    def register_rewards(self) -> list[RewardSpec]:
        return [RewardSpec("exact", lambda o, e: Built("exact", o, e), ExactOptions, "exact string match")]

    @hookimpl
    def register_filters(self) -> list[FilterSpec]:
        return [FilterSpec("keep_all", lambda o, e: Built("keep_all", o, e), description="keeps everything")]

    @hookimpl
    def register_benchmarks(self) -> list[BenchmarkSpec]:
        return [
            BenchmarkSpec("tiny", lambda o, e: TinyBenchmark(), aliases=("tiny/test",), description="6 sums"),
            BenchmarkSpec("tiny_file", lambda o, e: TinyBenchmark(), data_files=("deepscaler/aime",)),
            # data_files would fail, but check_data has the last word
            BenchmarkSpec(
                "checked", lambda o, e: CheckedBenchmark(o), CheckedOptions, data_files=("no/such",)
            ),
        ]


FAKE_OVERRIDES = [
    "tools=[echo]",
    "reward=exact",
    "filters=[keep_all]",
    "valid_dataset=tiny",
    "train_dataset=tiny",
    "algorithm.adv_estimator=fake_adv",
    "algorithm.policy_loss=fake_loss",
]


# -- components that refuse bad options, one of each kind --------------------------------------


@dataclass
class StrictOptions:
    """Options refused by ``__post_init__`` (level) or by the factory (mode)."""

    level: int = 1
    mode: str = "ok"

    def __post_init__(self) -> None:
        if self.level < 1:
            raise ValueError(f"level must be at least 1, got {self.level}")


def strict_factory(name: str) -> Any:
    def factory(options: StrictOptions, experiment: Any) -> Built:
        if options.mode == "explode":
            raise ValueError("mode 'explode' is not supported")
        if options.mode == "vague":
            raise ValueError("something is wrong")
        return Built(name, options, experiment)

    return factory


class StrictComponents:
    """A tool, reward, filter, benchmark, estimator and loss named strict_<kind>, all with StrictOptions."""

    @hookimpl
    def register_tools(self) -> list[ToolSpec]:
        return [ToolSpec("strict_tool", strict_factory("strict_tool"), StrictOptions)]

    @hookimpl
    def register_rewards(self) -> list[RewardSpec]:
        return [RewardSpec("strict_reward", strict_factory("strict_reward"), StrictOptions)]

    @hookimpl
    def register_filters(self) -> list[FilterSpec]:
        return [FilterSpec("strict_filter", strict_factory("strict_filter"), StrictOptions)]

    @hookimpl
    def register_benchmarks(self) -> list[BenchmarkSpec]:
        def factory(options: StrictOptions, experiment: Any) -> TinyBenchmark:
            strict_factory("strict_benchmark")(options, experiment)
            return TinyBenchmark()

        return [BenchmarkSpec("strict_benchmark", factory, StrictOptions)]

    @hookimpl
    def register_advantage_estimators(self) -> list[AdvantageEstimatorSpec]:
        return [AdvantageEstimatorSpec("strict_adv", strict_factory("strict_adv"), StrictOptions)]

    @hookimpl
    def register_policy_losses(self) -> list[PolicyLossSpec]:
        return [PolicyLossSpec("strict_loss", strict_factory("strict_loss"), StrictOptions)]


# The config key choosing each strict component, for tests over every kind.
STRICT_CHOICES = {
    "tool": ("strict_tool", "tools=[strict_tool]"),
    "reward": ("strict_reward", "reward=strict_reward"),
    "filter": ("strict_filter", "filters=[strict_filter]"),
    "benchmark": ("strict_benchmark", "valid_dataset=strict_benchmark"),
    "advantage_estimator": ("strict_adv", "algorithm.adv_estimator=strict_adv"),
    "policy_loss": ("strict_loss", "algorithm.policy_loss=strict_loss"),
}


class Rival:
    """Claims the reward name 'exact' (as FakeComponents does) and provides 'own_reward'."""

    @hookimpl
    def register_rewards(self) -> list[RewardSpec]:
        return [
            RewardSpec("exact", lambda o, e: Built("rival_exact", o, e)),
            RewardSpec("own_reward", lambda o, e: Built("own_reward", o, e)),
        ]


# Objects entry points can name ("_plugin_fakes:FAKES"), for command-line tests.
FAKES = FakeComponents()
RIVAL = Rival()
STRICT = StrictComponents()
