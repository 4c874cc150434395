"""Component specs that plugins yield, and the Protocols the run calls directly.

A plugin's ``register_*`` hook yields small frozen records (as conda's plugin hooks do). The
plugin manager collects them by name; the experiment config *chooses* components by name; the
run then builds each chosen one with ``spec.factory(plugin_config, experiment_config)`` and
calls it through the Protocol below. The hot path never goes through ``pm.hook``.

``config_cls`` is a dataclass whose fields are the plugin's options, read from
``plugin_config.<name>`` in the experiment YAML and validated by OmegaConf (unknown keys and
wrong types are errors that name the key).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

from simpletir.core.types import Problem, RewardResult, ToolCall, ToolResult, TrajectoryGroup

if TYPE_CHECKING:
    from torch import Tensor

    from simpletir.core.algo import PolicyLoss
    from simpletir.core.config import ExperimentConfig


def option(default: Any, help: str) -> Any:
    """A config dataclass field with a help string (``simpletir config show --help-fields``).

    Mutable defaults (lists, dicts) are wrapped in a factory, so instances never share them.
    Plugins use it for their ``config_cls`` fields as the core schema does.
    """
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class NoOptions:
    """Config class for a component that takes no options."""


# --------------------------------------------------------------------------------------------
# Protocols: what a built component must offer
# --------------------------------------------------------------------------------------------


@runtime_checkable
class Tool(Protocol):
    """Finds a call in a finished model turn, runs it, and formats what the model sees next."""

    name: str

    @property
    def stop_strings(self) -> Sequence[str]:
        """Strings after which generation must stop so the tool can run (e.g. a closing fence)."""
        ...

    def parse_call(self, turn_text: str) -> ToolCall | None:
        """The call a turn makes, or None. Only *complete* calls count (a void turn has none)."""
        ...

    async def run(self, call: ToolCall, *, timeout_s: float | None = None) -> ToolResult:
        """Execute the call. Never raises for a failure of the code itself: that is a result."""
        ...

    def run_many(self, calls: Sequence[ToolCall]) -> AsyncIterator[tuple[int, ToolResult]]:
        """Execute many calls concurrently; yield ``(index, result)`` as each finishes."""
        ...

    def format_observation(self, result: ToolResult) -> str:
        """The text appended to the trajectory after the turn (its ids never carry loss)."""
        ...

    async def aclose(self) -> None:
        """Release workers and processes. Idempotent."""
        ...


@runtime_checkable
class Reward(Protocol):
    """Scores a response against a ground truth, with a reason."""

    name: str

    def score(self, response: str, ground_truth: str) -> RewardResult: ...

    def score_many(self, items: Sequence[tuple[str, str]]) -> list[RewardResult]:
        """Score ``(response, ground_truth)`` pairs; same order as given. Bounded time per item."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class FilterContext:
    """What a filter may know besides the batch: where the run is and its caps."""

    step: int
    training: bool
    max_response_length: int
    train_batch_size: int
    n_samples: int


@dataclass(frozen=True)
class FilterResult:
    """What a filter returns: the groups it keeps (trajectories possibly re-masked) and metrics.

    Metrics are plain names (``masked``, ``dropped_groups``); the run prefixes them with
    ``filter/<name>/``. Nothing is dropped silently: every drop or mask is counted.
    """

    groups: tuple[TrajectoryGroup, ...]
    metrics: Mapping[str, float] = field(default_factory=dict)


@runtime_checkable
class TrajectoryFilter(Protocol):
    """Edits loss masks and/or drops groups of a batch. Filters compose in config order."""

    name: str

    def apply(self, groups: Sequence[TrajectoryGroup], ctx: FilterContext) -> FilterResult: ...


@runtime_checkable
class Benchmark(Protocol):
    """A named set of problems, loaded from parquet (or the hub when a user has network)."""

    name: str

    def load(self, data_dir: Path | None, *, limit: int | None = None, seed: int = 0) -> list[Problem]:
        """The problems, in a stable order; ``limit`` takes a seeded sample of that many."""
        ...


@runtime_checkable
class AdvantageEstimator(Protocol):
    """Turns the rewards of a batch into one advantage per trajectory (outcome supervision).

    ``scores`` and ``group_ids`` are ``[B]`` (group-then-sample order; a group is the ``n``
    samples of one prompt, masked samples included); returns ``[B]`` float advantages, which
    the trainer broadcasts to every loss token of the trajectory.
    """

    name: str

    def compute(self, scores: Tensor, group_ids: Tensor) -> Tensor: ...


@runtime_checkable
class PolicyLossFunction(Protocol):
    """The per-token policy-gradient objective of one (micro-)batch, all tensors ``[B, T]``.

    Returns a :class:`~simpletir.core.algo.PolicyLoss` whose ``loss`` keeps its graph.
    ``denominator`` (token-mean over a whole mini-batch under gradient accumulation),
    ``loss_agg_mode`` and ``max_response_length`` go to :func:`simpletir.core.algo.aggregate_loss`;
    ``token_weights`` (truncated importance weights, no gradient) multiply each token's loss.
    """

    name: str

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
    ) -> PolicyLoss: ...


# --------------------------------------------------------------------------------------------
# Spec records: what a plugin's register_* hook yields
# --------------------------------------------------------------------------------------------

ComponentKind = Literal["tool", "reward", "filter", "benchmark", "advantage_estimator", "policy_loss"]


@dataclass(frozen=True)
class ComponentSpec:
    """Base record. ``factory(options, experiment)`` builds the component.

    ``options`` is an instance of ``config_cls`` filled from ``plugin_config.<name>``;
    ``experiment`` is the whole resolved :class:`~simpletir.core.config.ExperimentConfig`, so a
    component may honour the seed's top-level flags (``mask_void_turns``, ``remove_clip``...).
    """

    kind: ClassVar[ComponentKind]

    name: str
    factory: Callable[[Any, ExperimentConfig], Any]
    config_cls: type = NoOptions
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"{self.kind} spec name {self.name!r} must be a non-empty identifier")


@dataclass(frozen=True)
class ToolSpec(ComponentSpec):
    kind: ClassVar[ComponentKind] = "tool"


@dataclass(frozen=True)
class RewardSpec(ComponentSpec):
    kind: ClassVar[ComponentKind] = "reward"


@dataclass(frozen=True)
class FilterSpec(ComponentSpec):
    kind: ClassVar[ComponentKind] = "filter"


@dataclass(frozen=True)
class BenchmarkSpec(ComponentSpec):
    """A benchmark also answers to ``aliases`` (SimpleTIR's dataset names like ``deepscaler/aime``)."""

    kind: ClassVar[ComponentKind] = "benchmark"
    aliases: tuple[str, ...] = ()
    split: Literal["train", "test"] = "test"
    # Dataset names (``deepscaler/aime``) this benchmark reads from the data directory; the
    # config check verifies each file exists before any heavy work. Empty for benchmarks that
    # generate their problems in code.
    data_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class AdvantageEstimatorSpec(ComponentSpec):
    """An advantage estimator, chosen by ``algorithm.adv_estimator``."""

    kind: ClassVar[ComponentKind] = "advantage_estimator"


@dataclass(frozen=True)
class PolicyLossSpec(ComponentSpec):
    """A policy loss, chosen by ``algorithm.policy_loss``."""

    kind: ClassVar[ComponentKind] = "policy_loss"
