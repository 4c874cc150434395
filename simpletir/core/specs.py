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

# option() and NoOptions live in the leaf module simpletir.core.options; re-exported here so
# plugins keep writing ``from simpletir.core.specs import option``.
from simpletir.core.options import NoOptions as NoOptions
from simpletir.core.options import option as option
from simpletir.core.types import Problem, RewardResult, ToolCall, ToolContext, ToolResult, TrajectoryGroup

if TYPE_CHECKING:
    from torch import Tensor

    from simpletir.core.algo import PolicyLoss
    from simpletir.core.config import ExperimentConfig


# --------------------------------------------------------------------------------------------
# Protocols: what a built component must offer
# --------------------------------------------------------------------------------------------


@runtime_checkable
class Tool(Protocol):
    """Finds a call in a finished model turn, runs it, and formats what the model sees next.

    Tool v1. ``parse_call`` and ``run`` receive a :class:`~simpletir.core.types.ToolContext`
    (problem, sample index, turn index, this trajectory's session) as the keyword ``ctx`` when
    their signature names a ``ctx`` parameter (or takes ``**kwargs``); a tool written before v1,
    with ``run(call)`` alone, keeps working. The loop decides this once per tool, when the
    rollout is built. It bounds every call (``rollout.tools_timeout_s``, passed as
    ``timeout_s=`` when ``run`` takes it, else the tool's ``timeout_s``, else 60 s) and turns an
    exception or an overrun into a failed result with ``error`` set, for that trajectory only.

    Optional members, used when present (not required by ``isinstance(x, Tool)``):

    * ``instructions: str``: plain text (no doubled braces) the default prompt includes to
      tell the model how to call this tool (:mod:`simpletir.core.prompts`);
    * ``timeout_s: float``: the tool's own default per-call limit, which the loop enforces
      when ``rollout.tools_timeout_s`` is unset;
    * ``enforces_timeout: bool``: True when ``run`` honours ``timeout_s`` itself and must not be
      cut off by the loop (the python sandbox: a call may first wait for a free worker);
    * ``open_session(ctx) -> session`` and ``close_session(session) -> None`` (either may be
      ``async``): called once per trajectory, before its first turn and when it ends (however
      it ends); every ``ctx.session`` of that trajectory is the object ``open_session`` returned.
      An ``open_session`` that raises makes each call of the tool in that trajectory a failed
      result; a failing ``close_session`` is logged.
    """

    name: str

    @property
    def stop_strings(self) -> Sequence[str]:
        """Strings after which generation must stop so the tool can run (e.g. a closing fence)."""
        ...

    def parse_call(self, turn_text: str, ctx: ToolContext | None = None) -> ToolCall | None:
        """The call a turn makes, or None. Only *complete* calls count (a void turn has none).

        Called after every stop string too: a None there makes the turn continue generating.
        """
        ...

    async def run(
        self, call: ToolCall, ctx: ToolContext | None = None, *, timeout_s: float | None = None
    ) -> ToolResult:
        """Execute the call within ``timeout_s`` (None: the tool's default). A failure of the
        code itself is a result, not an exception; the loop still catches one the tool raises."""
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
    """Scores a response against a ground truth, with a reason.

    Reward v1: a reward that needs more than the text (the problem's ``meta`` or
    ``data_source``, the turns, tool calls and results, the finish reason) also defines the
    optional ``score_inputs(inputs: Sequence[RewardInput]) -> list[RewardResult]`` (same order,
    bounded time per item); the core then calls it instead of ``score_many``. Each
    :class:`~simpletir.core.types.RewardInput` holds the problem, the trajectory, the scored
    response text and the final answer extracted by ``rollout.answer_format``. ``score_many``
    over ``(response_text, ground_truth)`` pairs stays the simple form.
    """

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
    The factory must be cheap (no processes, models or connections: start those on first use):
    the config check calls it before every run (:mod:`simpletir.core.components`). A
    ``ConfigError`` or ``ValueError`` it (or ``config_cls.__post_init__``) raises is reported
    as one line naming ``plugin_config.<name>.<option>``.
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
