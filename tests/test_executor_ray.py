"""``executor=ray`` on a real local Ray (2 CPUs, a small object store): the same results as
``executor=local``, and actors killed mid-rollout are restarted with nothing lost.

One Ray serves the module (about 6 s to start, ~1.4 GB); actors reserve fractions of its two CPUs
(``RAY_CPUS``). Float reductions on CPU depend on torch's thread count, and Ray gives each actor
one thread, so the local runs here use one thread too: then the numbers are bit-identical.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import torch
from _trainer_helpers import tiny_overrides
from safetensors.torch import load_file

from simpletir.core.config import ExperimentConfig
from simpletir.core.config_load import load_config
from simpletir.core.executor import make_executor
from simpletir.core.loggers import read_metrics
from simpletir.core.plugins import make_plugin_manager
from simpletir.core.rollout import RolloutRunner
from simpletir.core.rollout.models import resolve_model
from simpletir.core.rollout.testing import TIR_QUESTION, ScriptedEngine, ScriptedTool, scripted_tir_model
from simpletir.core.run import run_experiment
from simpletir.core.trainer import checkpoint as ckpt
from simpletir.core.types import Message, Problem

pytestmark = pytest.mark.slow

RAY_CPUS = {
    "ray.engine_cpus": 0.5,
    "ray.reward_cpus": 0.25,
    "ray.trainer_cpus": 0.5,
    "ray.sandbox_cpus": 0.25,
}
# Fast-starting sandbox workers (no numpy/sympy preload): these tests are about placement.
LIGHT_SANDBOX = {"preload": ["math"], "warmup": False, "light_workers": 0, "workers": 2}


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, object_store_memory=256 * 2**20, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def essentials(groups: list[Any]) -> list[Any]:
    """What a trajectory is, without the tool's timings."""
    return [
        (
            g.problem.id,
            t.sample_index,
            t.response_ids,
            t.loss_mask,
            t.logprobs,
            t.finish_reason,
            [(turn.code, turn.tool_result.stdout if turn.tool_result else None) for turn in t.turns],
        )
        for g in groups
        for t in g.trajectories
    ]


# -- the same results ----------------------------------------------------------------------------
def train(tmp: Path, name: str, *extra: str, plugins: tuple[Any, ...] = ()) -> dict[str, Any]:
    config = load_config(None, [*tiny_overrides(tmp, name, total_training_steps=3), *extra])
    return run_experiment(config, make_plugin_manager(plugins=plugins))


def step_metrics(tmp: Path, name: str) -> list[dict[str, float]]:
    records = read_metrics(tmp / "runs" / name / "metrics.jsonl")
    return [
        {k: v for k, v in r["metrics"].items() if not k.startswith(("timing/", "perf/"))}
        for r in records
        if r["phase"] == "train"
    ]


def final_weights(tmp: Path, name: str) -> dict[str, torch.Tensor]:
    folder = ckpt.find_latest(tmp / "checkpoints" / name)
    assert folder is not None
    return load_file(next((folder / "model").glob("*.safetensors")))


def test_one_training_run_local_and_on_ray_gives_identical_metrics_and_weights(tmp_path: Path) -> None:
    with torch_threads(1):
        train(tmp_path, "local")
        train(tmp_path, "ray", "executor=ray", *(f"{k}={v}" for k, v in RAY_CPUS.items()))
    local, on_ray = step_metrics(tmp_path, "local"), step_metrics(tmp_path, "ray")
    assert len(local) == 3 and local == on_ray
    assert local[0]["actor/grad_norm"] > 0 and local[0]["rollout/retried_trajectories"] == 0
    a, b = final_weights(tmp_path, "local"), final_weights(tmp_path, "ray")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


TIR_PROBLEM = Problem("six-seven", "unit", (Message("user", TIR_QUESTION),), "42")


def tir_config(**changes: Any) -> ExperimentConfig:
    config = ExperimentConfig(max_turns=5, max_prompt_length=512, max_response_length=256, seed=0)
    config.rollout = dataclasses.replace(config.rollout, engine="hf", progress=False, val_temperature=0.0)
    config.plugin_config = {"python": dict(LIGHT_SANDBOX)}
    config.ray = dataclasses.replace(config.ray, **{k.split(".")[1]: v for k, v in RAY_CPUS.items()})
    for key, value in changes.items():
        setattr(config, key, value)
    return config


@pytest.fixture(scope="module")
def tir_model() -> Path:
    """tiny-qwen2 taught to call the python tool twice, then answer (see rollout.testing)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("tiny-qwen2"))
    config = tir_config()
    prompt_ids, _ = RolloutRunner(ScriptedEngine(tokenizer, []), [ScriptedTool()], config).build_prompt(
        TIR_PROBLEM
    )
    return scripted_tir_model([prompt_ids])


def rollout_with(config: ExperimentConfig, n: int = 3) -> tuple[list[Any], RolloutRunner]:
    """Engine and tools built by ``config.executor``; one rollout; everything closed."""
    executor = make_executor(config)
    pm = make_plugin_manager()
    engine = executor.build_engine(config)
    tools = executor.build_tools(config, pm)
    runner = RolloutRunner(engine, tools, config)

    async def run() -> list[Any]:
        try:
            return await runner.arun([TIR_PROBLEM], n=n)
        finally:
            for tool in tools:
                await tool.aclose()

    try:
        return asyncio.run(run()), runner
    finally:
        engine.close()
        executor.close()


def test_a_multi_turn_rollout_with_the_real_sandbox_is_the_same_on_ray(tir_model: Path) -> None:
    with torch_threads(1):
        local, _ = rollout_with(tir_config(model_name=str(tir_model)))
    remote, _ = rollout_with(tir_config(model_name=str(tir_model), executor="ray"))
    assert essentials(remote) == essentials(local)
    turns = essentials(remote)[0][-1]
    assert turns == [("print(6 * 7)", "42\n"), ("print(42 == 6 * 7)", "True\n"), (None, None)]  # real Python
