"""Where components run (``executor: local | ray``): chosen once, at the start of a run.

An :class:`Executor` builds the four things that do heavy work: the rollout engine, the tools,
the reward and the trainer backend. What it hands back satisfies the same interfaces
(:class:`~simpletir.core.rollout.PolicyEngine`, :class:`~simpletir.core.specs.Tool`,
:class:`~simpletir.core.specs.Reward`, :class:`~simpletir.core.backend.TrainerBackend`) whichever
executor built it, so the agent loop, the trainer loop, the algorithms and the filters are one
code path: nothing below this seam asks where it runs.

* ``local`` (:mod:`.local`, the default): in this process and its children, exactly as before
  the seam existed; Ray is never imported.
* ``ray`` (:mod:`.ray`): engine replicas, sandbox pools, reward workers and the trainer backend
  as Ray actors, on a private Ray started for the run or on a cluster (``ray.address``).

The one thing a distributed component adds to the contract is that its worker can die and come
back: it then raises :class:`~simpletir.core.errors.ComponentLost`, and the rollout loop redoes
the trajectory (``rollout/retried_trajectories``).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from simpletir.core.errors import ConfigError

if TYPE_CHECKING:
    from simpletir.core.backend import TrainerBackend
    from simpletir.core.config import ExperimentConfig
    from simpletir.core.plugins import SimpletirPluginManager
    from simpletir.core.rollout import PolicyEngine
    from simpletir.core.specs import Reward, Tool


class Executor(abc.ABC):
    """Builds the heavy components of a run; each built one is closed by whoever asked for it."""

    name: str

    @abc.abstractmethod
    def build_reward(self, config: ExperimentConfig, pm: SimpletirPluginManager) -> Reward:
        """The reward ``config.reward`` names."""

    @abc.abstractmethod
    def build_tools(self, config: ExperimentConfig, pm: SimpletirPluginManager) -> list[Tool]:
        """The tools of ``config.tools`` (none when ``tool_use`` is off)."""

    @abc.abstractmethod
    def build_engine(self, config: ExperimentConfig) -> PolicyEngine:
        """The rollout engine ``config.rollout`` describes, serving ``config.model_name``."""

    @abc.abstractmethod
    def build_backend(self, config: ExperimentConfig, model_dir: Path) -> TrainerBackend:
        """The trainer backend ``config.trainer.backend`` names, holding the weights of ``model_dir``."""

    def close(self) -> None:  # noqa: B027 - the local executor holds nothing
        """Release what the executor itself holds (a private Ray). Idempotent."""


def make_executor(config: ExperimentConfig) -> Executor:
    """The executor ``config.executor`` names (Ray is imported only when it is chosen)."""
    if config.executor == "local":
        from simpletir.core.executor.local import LocalExecutor

        return LocalExecutor()
    if config.executor == "ray":
        from simpletir.core.executor.ray import RayExecutor

        return RayExecutor(config)
    raise ConfigError(f"executor={config.executor!r} is not one of 'local', 'ray'")


@contextlib.contextmanager
def open_executor(config: ExperimentConfig) -> Iterator[Executor]:
    """``with open_executor(config) as executor:``; closed on the way out, error or not.

    Close the components it built before leaving the block (an ``ExitStack`` entered after this
    one does): a Ray executor shuts its private Ray down on close.
    """
    executor = make_executor(config)
    try:
        yield executor
    finally:
        executor.close()


__all__ = ["Executor", "make_executor", "open_executor"]
