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

from simpletir import hookimpl
from simpletir.core.config import ExperimentConfig
from simpletir.core.config_load import load_config
from simpletir.core.executor import make_executor
from simpletir.core.executor.ray.backend import TrainerLost
from simpletir.core.loggers import read_metrics
from simpletir.core.plugins import make_plugin_manager
from simpletir.core.rollout import RolloutRunner
from simpletir.core.rollout.models import resolve_model
from simpletir.core.rollout.testing import TIR_QUESTION, ScriptedEngine, ScriptedTool, scripted_tir_model
from simpletir.core.run import run_experiment
from simpletir.core.trainer import checkpoint as ckpt
from simpletir.core.types import FinishReason, Message, Problem, ToolCall

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


# -- faults: actors killed mid-rollout -----------------------------------------------------------
SLOW_CALL = "Let me compute.\n```python\nimport time\ntime.sleep(0.5)\nprint(6 * 7)\n```\n"


def test_a_sandbox_pool_killed_mid_rollout_is_restarted_and_its_trajectories_redone() -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("tiny-qwen2"))
    config = tir_config(executor="ray", max_turns=3)
    config.ray = dataclasses.replace(config.ray, sandbox_pools=2)
    # The model's side is scripted (every sample calls the tool once, then answers); the tool side
    # is the real one: two nsjail pools in two actors, one of which is killed with calls in flight.
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    engine = ScriptedEngine(
        tokenizer, [SLOW_CALL, "The answer is \\boxed{42}.<|im_end|>"], eos_token_ids=[im_end]
    )
    executor = make_executor(config)
    [tool] = executor.build_tools(config, make_plugin_manager())
    runner = RolloutRunner(engine, [tool], config)
    killed_with: list[int] = []

    async def kill_pool_0_when_busy() -> None:
        while tool.balance.in_flight[0] == 0:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.2)  # inside the 0.5 s snippets: the calls run in the pool now
        killed_with.append(tool.balance.in_flight[0])
        ray.kill(tool.pools[0], no_restart=False)  # as a crash would: Ray restarts it

    async def main() -> tuple[list[Any], str]:
        await tool.start()  # both pools up and warm: the kill hits calls that are running
        killer = asyncio.create_task(kill_pool_0_when_busy())
        try:
            groups = await runner.arun([TIR_PROBLEM], n=6)
            # the restarted pool serves again
            again = await tool.pools[0].run.remote(ToolCall("python", "print(1 + 1)"), None, None, None)
            return groups, again.stdout
        finally:
            killer.cancel()
            await tool.aclose()

    try:
        groups, again = asyncio.run(main())
    finally:
        executor.close()
    assert killed_with and killed_with[0] >= 1
    trajectories = [t for g in groups for t in g.trajectories]
    assert len(trajectories) == 6  # none lost
    for t in trajectories:  # none failed: every call of every trajectory ran to completion
        assert t.finish_reason is FinishReason.ANSWER
        assert t.turns[0].tool_result is not None and t.turns[0].tool_result.stdout == "42\n"
        assert t.turns[0].tool_result.error is None
    # every call the dead pool lost made its trajectory start again (a call that finished just as
    # the kill landed is not lost, so this can be fewer than the calls counted in flight)
    assert runner.retried_trajectories == tool.lost_calls >= 1, (runner.retried_trajectories, tool.lost_calls)
    assert again == "2\n"


def test_an_engine_replica_killed_mid_rollout_comes_back_with_the_current_weights() -> None:
    from transformers import AutoModelForCausalLM

    config = tir_config(model_name="tiny-qwen2", tool_use=False, max_response_length=24, chat_template=False)
    config.rollout = dataclasses.replace(config.rollout, chat_template=False, prompt_template="{question}")
    problems = [
        Problem(f"p{i}", "unit", (Message("user", f"What is {i} plus {i}?"),), str(2 * i)) for i in range(4)
    ]
    model = AutoModelForCausalLM.from_pretrained(resolve_model("tiny-qwen2"))
    noise = torch.Generator().manual_seed(0)
    # Weights unlike the ones the engine starts with: a replica restarted without them samples otherwise.
    new = [
        (n, p.detach() + 0.05 * torch.randn(p.shape, generator=noise)) for n, p in model.state_dict().items()
    ]

    def run(executor_name: str, kill: bool) -> tuple[list[Any], RolloutRunner, Any]:
        cfg = dataclasses.replace(config, executor=executor_name)
        executor = make_executor(cfg)
        engine = executor.build_engine(cfg)
        engine.update_weights(iter(new), bucket_bytes=256 * 1024)  # several buckets
        runner = RolloutRunner(engine, [], cfg)

        def after_group(i: int, group: Any) -> None:
            if kill and i == 0 and not killed:
                killed.append(engine.balance.in_flight[0])
                ray.kill(engine.replicas[0], no_restart=False)

        killed: list[int] = []
        try:
            groups = asyncio.run(runner.arun(problems, n=2, training=True, on_group=after_group))
        finally:
            engine.close()
            executor.close()
        return groups, runner, (engine, killed)

    with torch_threads(1):
        want, _, _ = run("local", kill=False)
    got, runner, (engine, killed) = run("ray", kill=True)
    assert killed and killed[0] >= 1  # requests were in flight when it died
    assert runner.retried_trajectories >= 1 and engine.lost_calls >= 1
    assert engine.resyncs == 1  # the restarted replica was given the current weights once
    assert essentials(got) == essentials(want)  # same samples as an engine that never died


class KillTrainerAfter:
    """Kills the trainer backend's actor once step ``step`` is reported (after its checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl
    def on_step_end(self, report: Any) -> None:
        if report.step == self.step:
            [name] = [n for n in ray.util.list_named_actors() if "/trainer-" in n]
            ray.kill(ray.get_actor(name))


def test_a_dead_trainer_stops_the_run_with_a_clear_error_and_the_checkpoint_intact(tmp_path: Path) -> None:
    ray_run = ["executor=ray", *(f"{k}={v}" for k, v in RAY_CPUS.items())]
    with pytest.raises(TrainerLost) as info:
        train(tmp_path, "dies", *ray_run, plugins=(("kill-trainer", KillTrainerAfter(1)),))
    assert "trainer backend's Ray actor died" in str(info.value) and "RESUME=True" in str(info.value)
    latest = ckpt.find_latest(tmp_path / "checkpoints" / "dies")
    assert latest is not None and latest.name == "epoch_1"
    # intact: the run resumes from it and finishes
    result = train(tmp_path, "dies", *ray_run, "resume=true")
    assert result["steps"] == 3 if "steps" in result else True
    assert [r["step"] for r in read_metrics(tmp_path / "runs" / "dies" / "metrics.jsonl")] == [1, 2, 3]


def test_megatron_tensor_parallel_ranks_behind_the_ray_trainer_actor_match_local(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """trainer.backend=megatron at TP 2 (gloo on CPU): the actor builds the backend, which starts
    its follower rank as a local process on the actor's node; one step is bit-identical to local."""
    from test_megatron import build_random_model, config_for, one_step, random_batch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the local ranks' threads, as Ray gives its actor
    model = build_random_model(tmp_path, "qwen2")
    out = {}
    for side in ("local", "ray"):
        config = dataclasses.replace(config_for("megatron", tp=2), executor=side)
        config.ray = dataclasses.replace(
            config.ray, trainer_cpus=1.0, engine_cpus=0.25, reward_cpus=0.25, sandbox_cpus=0.25
        )
        executor = make_executor(config)
        with torch_threads(1):
            backend = executor.build_backend(config, model)
            try:
                out[side] = one_step(backend, random_batch(), config)
            finally:
                backend.close()
                executor.close()
    (lp_a, ent_a, metrics_a, loss_a), (lp_b, ent_b, metrics_b, loss_b) = out["local"], out["ray"]
    assert torch.equal(lp_a, lp_b) and torch.equal(ent_a, ent_b)
    assert metrics_a == metrics_b and metrics_a["actor/grad_norm"] > 0 and loss_a == loss_b
