"""``executor: ray``: engine replicas, sandbox pools, reward workers and the trainer as Ray actors.

Ray is imported here and below only. The executor connects lazily (the first component it builds
starts or attaches to Ray), checks that the cluster can hold every actor the config asks for,
and creates:

==========================  ===========================================  ==========================
actor                       how many, what it reserves                    when it dies
==========================  ===========================================  ==========================
rollout engine replica      ``ray.engine_replicas`` x (``engine_cpus``,  restarted (``actor_restarts``),
                            ``engine_gpus``: TP size on GPUs)             given the current weights;
                                                                          its trajectories redone
sandbox pool (per tool)     ``ray.sandbox_pools`` x ``sandbox_cpus``,     restarted; its trajectories
                            spread over nodes                             redone
reward worker               ``ray.reward_workers`` x ``reward_cpus``      restarted; the slice re-sent
trainer backend             1 x (``trainer_cpus``, ``trainer_gpus``)      the run stops (TrainerLost)
==========================  ===========================================  ==========================

Where the run's files go: actors on other nodes write checkpoints and exports to the same paths,
so a multi-node run needs ``checkpoints_dir`` on a file system every node sees (docs/distributed.md).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simpletir.core.executor import Executor
from simpletir.core.executor.ray import cluster

if TYPE_CHECKING:
    from simpletir.core.backend import TrainerBackend
    from simpletir.core.config import ExperimentConfig
    from simpletir.core.plugins import SimpletirPluginManager
    from simpletir.core.rollout import PolicyEngine
    from simpletir.core.specs import Reward, Tool


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config
        self._connected = False
        self._started_ray = False
        self._gpus = False
        self._tag = uuid.uuid4().hex[:6]  # two runs of one name on a cluster do not collide

    def _connect(self) -> None:
        if self._connected:
            return
        self._started_ray = cluster.connect(self.config)
        self._connected = True
        cluster.check_resources(self.config)
        self._gpus = cluster.gpus_present()

    def _start(
        self,
        cls: type,
        kind: str,
        count: int,
        args: tuple[Any, ...],
        *,
        cpus: float,
        gpus: float = 0.0,
        restarts: int,
        **options: Any,
    ) -> list[Any]:
        """``count`` actors of ``cls``, named ``<run>/<kind>-<i>-<tag>`` (``ray list actors`` shows them)."""
        import ray

        remote_cls: Any = ray.remote(cls)
        return [
            remote_cls.options(
                name=f"{self.config.run_name}/{kind}-{i}-{self._tag}",
                num_cpus=cpus,
                num_gpus=gpus,
                max_restarts=restarts,
                max_task_retries=0,  # a lost call is redone by its owner (trajectory, slice), not blindly
                **options,
            ).remote(*args)
            for i in range(count)
        ]

    def build_reward(self, config: ExperimentConfig, pm: SimpletirPluginManager) -> Reward:
        from simpletir.core.components import lookup
        from simpletir.core.executor.ray.reward import RayReward, RewardWorker

        self._connect()
        spec = lookup(pm, "reward", config.reward, config).spec
        r = config.ray
        workers = self._start(
            RewardWorker,
            "reward",
            r.reward_workers,
            (spec, config),
            cpus=r.reward_cpus,
            restarts=r.actor_restarts,
        )
        return RayReward(workers, retries=r.actor_restarts)

    def build_tools(self, config: ExperimentConfig, pm: SimpletirPluginManager) -> list[Tool]:
        if not config.tool_use:
            return []
        from simpletir.core.components import build_spec, lookup
        from simpletir.core.executor.ray.tools import RayTool, ToolPoolWorker

        self._connect()
        r = config.ray
        tools: list[Tool] = []
        for name in config.tools:
            spec = lookup(pm, "tool", name, config).spec
            local = build_spec(spec, config)  # never started: parsing and formatting stay here
            pools = self._start(
                ToolPoolWorker,
                f"tool-{name}",
                r.sandbox_pools,
                (spec, config),
                cpus=r.sandbox_cpus,
                restarts=r.actor_restarts,
                scheduling_strategy="SPREAD",  # one machine's cores do not run every snippet
            )
            tools.append(RayTool(local, pools))
        return tools

    def build_engine(self, config: ExperimentConfig) -> PolicyEngine:
        from transformers import AutoTokenizer

        from simpletir.core.executor.ray.engine import EngineWorker, RayEngine
        from simpletir.core.rollout.models import resolve_model

        self._connect()
        r = config.ray
        replicas = self._start(
            EngineWorker,
            "engine",
            r.engine_replicas,
            (config,),
            cpus=r.engine_cpus,
            gpus=cluster.engine_gpus(config, self._gpus),
            restarts=r.actor_restarts,
        )
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.model_name))
        return RayEngine(replicas, tokenizer)

    def build_backend(self, config: ExperimentConfig, model_dir: Path) -> TrainerBackend:
        from transformers import AutoTokenizer

        from simpletir.core.backend import check_backend_available
        from simpletir.core.executor.ray.backend import BackendWorker, RayBackend

        check_backend_available(config)
        self._connect()
        r = config.ray
        [actor] = self._start(
            BackendWorker,
            "trainer",
            1,
            (config, model_dir),
            cpus=r.trainer_cpus,
            gpus=cluster.trainer_gpus(config, self._gpus),
            restarts=0,  # its optimiser state would be gone: a dead trainer stops the run
        )
        return RayBackend(
            actor,
            AutoTokenizer.from_pretrained(model_dir),
            checkpoints=Path(config.checkpoints_dir) / config.run_name,
            bucket_bytes=config.trainer.weight_sync_bucket_mb * 2**20,
        )

    def close(self) -> None:
        if self._started_ray:
            cluster.shutdown()
            self._started_ray = False
        self._connected = False
