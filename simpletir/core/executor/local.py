"""``executor: local``: every component in this process (and the children it starts itself).

This is what a run did before the executor seam existed, call for call: the tools and the reward
from their plugin specs, the engine from :func:`~simpletir.core.rollout.build_engine`, the
backend from :func:`~simpletir.core.backend.build_backend`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from simpletir.core.executor import Executor

if TYPE_CHECKING:
    from simpletir.core.backend import TrainerBackend
    from simpletir.core.config import ExperimentConfig
    from simpletir.core.plugins import SimpletirPluginManager
    from simpletir.core.rollout import PolicyEngine
    from simpletir.core.specs import Reward, Tool


class LocalExecutor(Executor):
    name = "local"

    def build_reward(self, config: ExperimentConfig, pm: SimpletirPluginManager) -> Reward:
        reward: Reward = pm.build("reward", config.reward, config)
        return reward

    def build_tools(self, config: ExperimentConfig, pm: SimpletirPluginManager) -> list[Tool]:
        return [pm.build("tool", name, config) for name in config.tools] if config.tool_use else []

    def build_engine(self, config: ExperimentConfig) -> PolicyEngine:
        from simpletir.core.rollout import build_engine

        return build_engine(config)

    def build_backend(self, config: ExperimentConfig, model_dir: Path) -> TrainerBackend:
        from simpletir.core.backend import build_backend

        return build_backend(config, model_dir)
