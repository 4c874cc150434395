"""The executor seam without Ray: the local executor is what a run always did, the default never
imports Ray, and a component lost mid-trajectory makes the rollout redo that trajectory exactly."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys

import pytest
import torch
from transformers import AutoTokenizer

from simpletir.core.config import ExperimentConfig
from simpletir.core.errors import ComponentLost
from simpletir.core.executor import make_executor
from simpletir.core.executor.local import LocalExecutor
from simpletir.core.executor.ray.balance import LeastLoaded
from simpletir.core.executor.ray.engine import buckets_of
from simpletir.core.executor.ray.reward import slices
from simpletir.core.rollout import RolloutRunner
from simpletir.core.rollout.models import resolve_model
from simpletir.core.rollout.testing import ScriptedEngine, ScriptedTool
from simpletir.core.types import Message, Problem, ToolResult


def test_the_default_executor_is_local_and_never_imports_ray() -> None:
    code = (
        "import sys\n"
        "from simpletir.core.config_load import load_config\n"
        "from simpletir.core.executor import make_executor\n"
        "from simpletir.core.plugins import make_plugin_manager\n"
        "config = load_config(None, ['tool_use=false', 'reward=math_verify'])\n"
        "executor = make_executor(config)\n"
        "reward = executor.build_reward(config, make_plugin_manager())\n"
        "print(type(executor).__name__, reward.score('\\\\boxed{2}', '2').score)\n"
        "reward.close(); executor.close()\n"
        "assert 'ray' not in sys.modules, 'executor=local imported ray'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["LocalExecutor", "1.0"]


def test_make_executor_follows_the_config() -> None:
    assert isinstance(make_executor(ExperimentConfig()), LocalExecutor)
    assert type(make_executor(ExperimentConfig(executor="ray"))).__name__ == "RayExecutor"  # no Ray started


def test_least_loaded_counts_calls_in_flight_and_breaks_ties_in_turn() -> None:
    balance = LeastLoaded(3)
    assert [balance.pick() for _ in range(4)] == [0, 1, 2, 0]  # all idle: round-robin
    with balance.use(0), balance.use(0), balance.use(2):
        assert balance.pick() == 1
        with balance.use(1), balance.use(1), balance.use(1):
            assert balance.pick() == 2  # 2 has one call in flight, 0 has two, 1 has three
    assert balance.in_flight == [0, 0, 0] and balance.calls == [2, 3, 1]


def test_reward_slices_cover_every_item_once_in_order() -> None:
    assert slices(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert slices(2, 4) == [(0, 1), (1, 2)]  # never an empty slice
    assert slices(5, 1) == [(0, 5)]


def test_weight_buckets_stay_under_the_bound_except_for_one_large_tensor() -> None:
    tensors = [
        ("a", torch.zeros(10)),
        ("b", torch.zeros(10)),
        ("big", torch.zeros(100)),
        ("c", torch.zeros(5)),
    ]
    buckets = list(buckets_of(tensors, bucket_bytes=80))  # float32: 40, 40, 400, 20 bytes
    assert [[name for name, _ in b] for b in buckets] == [["a", "b"], ["big"], ["c"]]
    assert [[name for name, _ in b] for b in buckets_of(tensors, None)] == [["a", "b", "big", "c"]]


# -- ComponentLost: the trajectory is redone from its first turn ----------------------------------
PROBLEM = Problem("p", "unit", (Message("user", "What is 6 times 7?"),), "42")
SCRIPT = ["Let me compute.\n```python\nprint(6 * 7)\n```\n", "The answer is \\boxed{42}.<|im_end|>"]


class LosesCalls:
    """Wraps a tool: the calls numbered in ``lost`` raise ComponentLost (a pool that died)."""

    def __init__(self, tool: ScriptedTool, lost: set[int]) -> None:
        self.tool, self.lost, self.seen = tool, lost, 0
        self.name, self.stop_strings = tool.name, tool.stop_strings
        self.parse_call, self.format_observation = tool.parse_call, tool.format_observation

    async def run(self, call, *, timeout_s=None):  # type: ignore[no-untyped-def]
        index, self.seen = self.seen, self.seen + 1
        if index in self.lost:
            raise ComponentLost("tool 'python' pool 0 was lost (ActorDiedError)")
        return await self.tool.run(call)

    async def aclose(self) -> None:
        pass


def essentials(groups: list) -> list:
    """What a trajectory is, without the tool's timings."""
    return [
        (
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


def rollout(tool: object, retries: int = 2) -> tuple[list, RolloutRunner]:
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("tiny-qwen2"))
    config = ExperimentConfig(max_turns=3, max_prompt_length=512, max_response_length=256)
    config.rollout = dataclasses.replace(config.rollout, progress=False, max_trajectory_retries=retries)
    engine = ScriptedEngine(tokenizer, SCRIPT, eos_token_ids=[tokenizer.convert_tokens_to_ids("<|im_end|>")])
    runner = RolloutRunner(engine, [tool], config)  # type: ignore[list-item]
    return asyncio.run(runner.arun([PROBLEM], n=3)), runner


def test_a_lost_tool_call_redoes_its_trajectory_and_counts_it() -> None:
    respond = lambda code: ToolResult(stdout="42\n", exit_code=0)  # noqa: E731
    want, clean = rollout(ScriptedTool(respond))
    got, runner = rollout(LosesCalls(ScriptedTool(respond), lost={1}))
    assert clean.retried_trajectories == 0 and runner.retried_trajectories == 1
    assert essentials(got) == essentials(want)  # the same trajectories: nothing lost, nothing failed
    assert all(t.turns[0].tool_result.ok for g in got for t in g.trajectories)


def test_a_component_lost_more_often_than_allowed_fails_the_rollout() -> None:
    respond = lambda code: ToolResult(stdout="42\n", exit_code=0)  # noqa: E731
    with pytest.raises(ComponentLost):
        rollout(LosesCalls(ScriptedTool(respond), lost=set(range(100))), retries=2)


def test_weights_cross_the_object_store_as_bytes_and_come_back_exactly() -> None:
    from simpletir.core.executor.ray.engine import pack, unpack

    bucket = [
        ("w", torch.randn(3, 4)),
        ("b16", torch.randn(5).to(torch.bfloat16)),
        ("scalar", torch.tensor(2.5)),
        ("t", torch.randn(4, 6).T),  # not contiguous
    ]
    packed = pack(bucket)
    assert all(raw.dtype.name == "uint8" for _, raw, _, _ in packed)
    back = unpack(packed)
    assert [n for n, _ in back] == [n for n, _ in bucket]
    for (_, want), (_, got) in zip(bucket, back, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want)
