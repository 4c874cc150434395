"""The training stage's set-up: checks before heavy work, stopping rules, the first weight sync."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from simpletir.core.batching import PromptSampler
from simpletir.core.config_load import load_config
from simpletir.core.errors import ConfigError
from simpletir.core.loggers import read_metrics
from simpletir.core.plugins import make_plugin_manager
from simpletir.core.run import run_experiment
from simpletir.core.trainer import plan_steps
from simpletir.core.trainer.weight_sync import check_weight_sync
from simpletir.testing import make_problem

TINY = [
    "model_name=tiny-qwen2",
    "rollout.engine=hf",
    "rollout.progress=false",
    "tool_use=false",
    "tools=[]",
    "filters=[]",
    "train_dataset=arith_train",
    "valid_dataset=arith",
    "rollout.chat_template=false",
    "max_prompt_length=512",
    "max_response_length=2",
    "rollout.n=2",
    "oversample=1",
    "test_freq=-1",
    "save_freq=-1",
    "algorithm.ppo_mini_batch_size=2",
    "plugin_config.math_verify.workers=1",
]


def tiny_config(tmp_path: Path, *overrides: str) -> Any:
    dirs = [f"runs_dir={tmp_path / 'runs'}", f"logs_dir={tmp_path / 'logs'}"]
    return load_config(None, [*TINY, *dirs, f"checkpoints_dir={tmp_path / 'ckpt'}", *overrides])


def test_total_epochs_stops_after_that_many_passes_over_the_training_set(tmp_path: Path) -> None:
    config = tiny_config(
        tmp_path,
        "plugin_config.arith_train.size=4",
        "train_batch_size=2",
        "total_epochs=2",
        "experiment_name=ep",
    )
    result = run_experiment(config, make_plugin_manager())
    steps = [
        r["step"] for r in read_metrics(tmp_path / "runs" / "ep" / "metrics.jsonl") if r["phase"] == "train"
    ]
    assert result["steps"] == 4 and steps == [1, 2, 3, 4]  # 4 problems, 2 a step, 2 passes


def test_plan_steps_counts_oversampled_draws() -> None:
    config = load_config(None, ["train_batch_size=8", "oversample=2", "total_epochs=3"])
    assert plan_steps(config, 100) == (3 * 7, 7)  # ceil(100 / 16) = 7 steps a pass
    config = load_config(None, ["train_batch_size=8", "total_training_steps=5"])
    assert plan_steps(config, 100)[0] == 5


def test_sampler_passes_reach_whole_numbers_at_epoch_ends() -> None:
    sampler = PromptSampler([make_problem(f"p{i}") for i in range(4)], seed=0)
    sampler.take(2)
    assert sampler.passes == 0.5
    sampler.take(2)
    assert sampler.passes == 1.0
    sampler.take(3)
    assert sampler.passes == 1.75


def test_tensor_parallel_size_without_megatron_is_refused(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "trainer.tensor_parallel_size=2", "train_batch_size=2")
    with pytest.raises(ConfigError, match=r"tensor_parallel_size=2 needs trainer\.backend=megatron"):
        run_experiment(config, make_plugin_manager())


def test_a_model_megatron_cannot_shard_is_refused_before_anything_starts(tmp_path: Path) -> None:
    """tiny-qwen2 has one KV head: TP=2 cannot split it; said from its config alone."""
    config = tiny_config(
        tmp_path, "trainer.backend=megatron", "trainer.tensor_parallel_size=2", "train_batch_size=2"
    )
    with pytest.raises(
        ConfigError, match=r"tensor_parallel_size=2 does not divide .*num_key_value_heads \(1\)"
    ):
        run_experiment(config, make_plugin_manager())


class _RefusingEngine:
    def update_weights(self, named_tensors: Any, *, bucket_bytes: int | None = None) -> None:
        for name, _ in named_tensors:
            raise KeyError(f"update_weights: the policy has no parameter {name!r}")


class _Backend:
    def named_hf_tensors(self) -> Any:
        import torch

        yield "transformer.h.0.attn.weight", torch.zeros(2)


def test_weights_that_do_not_fit_the_engine_are_one_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"model_name='gpt2-like'.*cannot be synced.*transformer\.h\.0"):
        check_weight_sync(_Backend(), _RefusingEngine(), bucket_mb=1, model="gpt2-like")  # type: ignore[arg-type]


def test_hf_backend_switches_dropout_off_and_trains_in_train_mode(tmp_path: Path) -> None:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from simpletir.core.backend.hf import HFBackend
    from simpletir.core.rollout.models import qwen_tokenizer_dir

    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=1, num_key_value_heads=1, attention_dropout=0.5,
    )  # fmt: skip
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    backend = HFBackend(tmp_path / "m", load_config(None, ["trainer.gradient_checkpointing=true"]))
    assert backend.model.training  # gradient checkpointing only acts in train mode
    rates = [
        v
        for m in backend.model.modules()
        for k, v in vars(m).items()
        if "dropout" in k and isinstance(v, float)
    ]
    assert rates and all(rate == 0.0 for rate in rates)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    first, second = backend.model(ids).logits, backend.model(ids).logits
    assert torch.equal(first, second)  # no dropout noise between two passes in train mode
