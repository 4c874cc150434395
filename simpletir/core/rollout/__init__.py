"""Multi-turn tool-integrated rollouts: policy engines (vLLM, transformers) and the agent loop.

from simpletir.core.rollout import build_engine, RolloutRunner
engine = build_engine(config)
runner = RolloutRunner(engine, tools, config)
groups = runner.run(problems, n=4, training=False)   # list[TrajectoryGroup]
engine.close()
"""

from simpletir.core.rollout.engine import Generation, PolicyEngine, SamplingParams
from simpletir.core.rollout.factory import build_engine
from simpletir.core.rollout.loop import RolloutRunner
from simpletir.core.rollout.models import PACKAGED, resolve_model

__all__ = [
    "PACKAGED",
    "Generation",
    "PolicyEngine",
    "RolloutRunner",
    "SamplingParams",
    "build_engine",
    "resolve_model",
]
