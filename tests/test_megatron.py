"""The megatron backend against transformers, on CPU with gloo at TP=2 (and TP=1).

Tiny random Qwen2 (untied and tied, qkv bias) and Llama (tied, no bias) models with 4 query and
2 KV heads: parity of per-token log-probs and entropy (the whole softmax), loss and gradients in
HF layout; exact export round trips; a wrong QKV layout caught by the same parity check; TP=1 and
TP=2 taking the same 5 optimiser steps; a dead rank stopping the group with a clear error. Only
one backend lives in a process at a time (megatron's parallel state is global), so each test
builds and closes its own.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("megatron.core")

from simpletir.core.backend import build_backend  # noqa: E402
from simpletir.core.config import ExperimentConfig  # noqa: E402
from simpletir.core.config_load import load_config  # noqa: E402
from simpletir.core.errors import ConfigError  # noqa: E402
from simpletir.core.trainer.loop import loss_function  # noqa: E402
from simpletir.core.trainer.tensors import TrainBatch  # noqa: E402

pytestmark = pytest.mark.slow  # each test starts ranks and builds models: ~10-30 s

TOL = 1e-5


def build_random_model(out: Path, kind: str) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from simpletir.core.rollout.models import qwen_tokenizer_dir

    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    shape = dict(
        vocab_size=len(tokenizer),  # odd (151,665): padded to an even vocabulary at TP=2
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    torch.manual_seed(7)
    if kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**shape, tie_word_embeddings=False))
    elif kind == "qwen2-tied":
        model = Qwen2ForCausalLM(Qwen2Config(**shape, tie_word_embeddings=True))
    else:
        model = LlamaForCausalLM(LlamaConfig(**shape, tie_word_embeddings=True, attention_bias=False))
    with torch.no_grad():  # non-trivial biases and norms, so their layout is tested too
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.5)
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    model.save_pretrained(out / kind)
    tokenizer.save_pretrained(out / kind)
    return out / kind


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("megatron-models")
    return {kind: build_random_model(root, kind) for kind in ("qwen2", "qwen2-tied", "llama")}


def config_for(backend: str, tp: int = 1, **algorithm: float) -> ExperimentConfig:
    config = load_config(
        None,
        [
            f"trainer.backend={backend}",
            f"trainer.tensor_parallel_size={tp}",
            "trainer.device=cpu",
            "trainer.micro_batch_size=2",
            "rollout.temperature=1.0",
            "algorithm.entropy_coeff=0.01",
            "algorithm.weight_decay=0.01",
            "algorithm.lr=0.01",
            "grad_clip=1.0",
        ],
    )
    return dataclasses.replace(config, algorithm=dataclasses.replace(config.algorithm, **algorithm))


def random_batch(seed: int = 0, rows: int = 3, prompt: int = 6, response: int = 5) -> TrainBatch:
    """Right-padded rows of different prompt and response lengths, with advantages."""
    gen = torch.Generator().manual_seed(seed)
    prompt_lens = torch.tensor([prompt, prompt - 2, prompt - 1][:rows])
    response_lens = torch.tensor([response, response - 2, response - 1][:rows])
    width = int((prompt_lens + response_lens).max())
    ids = torch.full((rows, width), 0, dtype=torch.long)
    attention = torch.zeros_like(ids)
    responses = torch.zeros((rows, response), dtype=torch.long)
    loss_mask = torch.zeros((rows, response))
    for i in range(rows):
        n, m = int(prompt_lens[i]), int(response_lens[i])
        ids[i, : n + m] = torch.randint(0, 150_000, (n + m,), generator=gen)
        attention[i, : n + m] = 1
        responses[i, :m] = ids[i, n : n + m]
        loss_mask[i, :m] = 1
    batch = TrainBatch(
        input_ids=ids,
        attention_mask=attention,
        prompt_lens=prompt_lens,
        response_lens=response_lens,
        responses=responses,
        loss_mask=loss_mask,
        engine_logprobs=torch.zeros_like(loss_mask),
        group_index=torch.arange(rows),
    )
    return batch.replace(advantages=torch.randn(rows, response, generator=gen) * loss_mask)


def one_step(backend, batch: TrainBatch, config: ExperimentConfig):  # type: ignore[no-untyped-def]
    """Log-probs and entropy, then one optimiser step: (logprobs, entropy, metrics, loss)."""
    logprobs, entropy = backend.logprobs(batch, with_entropy=True)
    batch = batch.replace(old_logprobs=(logprobs + 0.01 * batch.loss_mask).detach())  # ratio != 1
    parts: list[dict[str, float]] = []
    metrics = backend.train_step(batch, loss_function(batch, config, parts), with_entropy=True)
    return logprobs, entropy, metrics, sum(p["loss"] for p in parts)


def hf_logits(backend, batch: TrainBatch) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """transformers' logits at the positions that predict the response tokens."""
    from simpletir.core.trainer.tensors import response_positions

    with torch.no_grad():
        out = backend.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    index = response_positions(batch).unsqueeze(-1).expand(-1, -1, out.shape[-1])
    return out.gather(1, index)


@pytest.fixture
def closing() -> Iterator[list]:  # type: ignore[type-arg]
    backends: list = []  # type: ignore[type-arg]
    yield backends
    for backend in backends:
        backend.close()


@pytest.mark.parametrize(("kind", "tp"), [("qwen2", 2), ("qwen2-tied", 2), ("llama", 2), ("qwen2", 1)])
def test_megatron_matches_transformers(models, kind, tp, tmp_path, closing) -> None:  # type: ignore[no-untyped-def]
    """Logits, log-probs, entropy, loss, grad norm and gradients (HF layout) equal transformers' to 1e-5;
    the weights after the step export to a folder transformers loads, equal to the trainer's."""
    batch = random_batch()
    hf = build_backend(config_for("hf"), models[kind])
    closing.append(hf)
    want_logits = hf_logits(hf, batch)
    initial = {n: p.detach().clone() for n, p in hf.model.named_parameters()}
    want_lp, want_ent, want_metrics, want_loss = one_step(hf, batch, config_for("hf"))
    want_grads = {n: p.grad.clone() for n, p in hf.model.named_parameters()}
    want_weights = {n: p.detach() for n, p in hf.model.named_parameters()}
    hf.close()

    mg = build_backend(config_for("megatron", tp), models[kind])
    closing.append(mg)
    logits = mg.full_logits(batch)
    valid = batch.loss_mask.bool()
    assert logits.shape == want_logits.shape
    assert (logits - want_logits)[valid].abs().max() <= TOL
    lp, ent, metrics, loss = one_step(mg, batch, config_for("megatron", tp))
    assert (lp - want_lp)[valid].abs().max() <= TOL
    assert (ent - want_ent)[valid].abs().max() <= 20 * TOL  # entropy ~12 nats: 2e-4 is ~1e-5 relative
    assert loss == pytest.approx(want_loss, abs=TOL)
    assert metrics["actor/grad_norm"] == pytest.approx(want_metrics["actor/grad_norm"], rel=TOL)
    grads = dict(mg.hf_gradients())
    assert set(grads) == set(want_grads)
    for name, grad in grads.items():
        assert (grad - want_grads[name]).abs().max() <= TOL, name
    # (the weights after the step are not compared element by element: Adam's first step is
    # lr * sign(g), so an element whose gradient is ~1e-10 on both sides may flip by 2 lr)
    weights = dict(mg.named_hf_tensors())
    assert set(weights) == set(want_weights)
    moved = [not torch.equal(weights[n], original) for n, original in initial.items()]
    assert all(moved)

    mg.export(tmp_path / "exported")
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "exported")
    for name, param in reloaded.named_parameters():
        assert torch.equal(param.detach(), weights[name]), name


def test_export_round_trip_is_exact(models, tmp_path, closing) -> None:  # type: ignore[no-untyped-def]
    """HF -> Megatron shards (TP=2) -> HF gives back every tensor bit for bit (vocab padding,
    QKV interleave, gate/up fusion undone)."""
    from safetensors.torch import load_file

    original = load_file(str(models["qwen2"] / "model.safetensors"))
    mg = build_backend(config_for("megatron", 2), models["qwen2"])
    closing.append(mg)
    mg.export(tmp_path / "out")
    exported: dict[str, torch.Tensor] = {}
    for file in (tmp_path / "out").glob("*.safetensors"):
        exported.update(load_file(str(file)))
    assert set(exported) == set(original)
    for name, tensor in original.items():
        assert torch.equal(exported[name], tensor), name


def test_a_wrong_qkv_layout_fails_the_parity_check(models, monkeypatch, closing) -> None:  # type: ignore[no-untyped-def]
    """Negative control: a naive cat(q, k, v) in place of megatron's per-group interleave."""
    from simpletir.core.backend.megatron import convert

    batch = random_batch()
    hf = build_backend(config_for("hf"), models["qwen2"])
    want, _ = hf.logprobs(batch)
    hf.close()

    right = convert.to_megatron

    def naive(shape, name, hf_tensors, tp):  # type: ignore[no-untyped-def]
        return torch.cat(hf_tensors) if "linear_qkv" in name else right(shape, name, hf_tensors, tp)

    monkeypatch.setattr(convert, "to_megatron", naive)
    mg = build_backend(config_for("megatron", 1), models["qwen2"])  # TP=1: in this process only
    closing.append(mg)
    got, _ = mg.logprobs(batch)
    assert (got - want)[batch.loss_mask.bool()].abs().max() > 1e-2


def test_tp1_and_tp2_take_the_same_five_steps(models, closing) -> None:  # type: ignore[no-untyped-def]
    """Same losses and grad norms to 1e-5 over 5 AdamW steps (clipped: the norms are > 1).

    Without the entropy bonus: its gradient, sum_v p_v (s_v - E[s]) W_v over 150k vocabulary rows
    that nearly cancel, carries the float32 rounding of the vocabulary GEMM (split in two at TP=2)
    at ~1e-5 of the grad norm, for transformers as much as for megatron (measured: hf 6.791183,
    TP=1 6.791199, TP=2 6.791148); Adam then amplifies it step by step.
    """
    runs = {}
    for tp in (1, 2):
        config = config_for("megatron", tp, entropy_coeff=0.0)
        mg = build_backend(config, models["qwen2-tied"])
        closing.append(mg)
        history = []
        for step in range(5):
            _, _, metrics, loss = one_step(mg, random_batch(seed=step), config)
            history.append((loss, metrics["actor/grad_norm"]))
        mg.close()
        runs[tp] = history
    for (loss1, norm1), (loss2, norm2) in zip(runs[1], runs[2], strict=True):
        assert loss2 == pytest.approx(loss1, abs=TOL)
        assert norm2 == pytest.approx(norm1, rel=TOL)
    assert runs[1][0] != runs[1][-1]  # the steps did change the model


def test_checkpoint_resumes_at_another_tp_size(models, tmp_path, closing) -> None:  # type: ignore[no-untyped-def]
    """Saved at TP=2 after two steps, loaded at TP=1: the third step is the same as TP=2's
    (no entropy bonus: see the five-step test)."""
    config2 = config_for("megatron", 2, entropy_coeff=0.0)
    mg = build_backend(config2, models["qwen2"])
    closing.append(mg)
    for step in range(2):
        one_step(mg, random_batch(seed=step), config2)
    mg.save(tmp_path / "ckpt")
    _, _, want_metrics, want_loss = one_step(mg, random_batch(seed=2), config2)
    mg.close()

    config1 = config_for("megatron", 1, entropy_coeff=0.0)
    again = build_backend(config1, models["qwen2"])
    closing.append(again)
    again.load(tmp_path / "ckpt")
    assert again.steps_taken == 2
    _, _, metrics, loss = one_step(again, random_batch(seed=2), config1)
    assert loss == pytest.approx(want_loss, abs=TOL)
    assert metrics["actor/grad_norm"] == pytest.approx(want_metrics["actor/grad_norm"], rel=TOL)


def test_a_dead_rank_stops_the_group_with_a_clear_error(models, closing) -> None:  # type: ignore[no-untyped-def]
    from simpletir.core.backend.megatron.launch import RankFailed

    mg = build_backend(config_for("megatron", 2), models["qwen2"])
    closing.append(mg)
    process, _ = mg.ranks.followers[0]
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    with pytest.raises(RankFailed, match=r"megatron rank 1 (died|is gone)"):
        mg.logprobs(random_batch())
    with pytest.raises(RankFailed, match="stopped"):
        mg.logprobs(random_batch())


def test_a_tp_size_that_does_not_split_the_heads_is_a_config_error(tmp_path) -> None:
    from simpletir.core.rollout.models import resolve_model

    with pytest.raises(ConfigError, match=r"tensor_parallel_size=2 .*num_key_value_heads \(1\)"):
        build_backend(config_for("megatron", 2), resolve_model("tiny-qwen2"))


def test_bfloat16_parameters_train_through_float32_masters(models, closing) -> None:  # type: ignore[no-untyped-def]
    """``trainer.param_dtype=bfloat16``: bf16 weights in the forward pass, AdamW on float32 masters
    that keep the TP attributes (else the TP=2 grad norm would count shards on rank 0 only)."""
    from simpletir.core.config_load import load_config as load

    norms = {}
    for tp in (1, 2):
        config = config_for("megatron", tp, entropy_coeff=0.0)
        config = dataclasses.replace(
            config, trainer=dataclasses.replace(config.trainer, param_dtype="bfloat16")
        )
        mg = build_backend(config, models["qwen2"])
        closing.append(mg)
        local = mg.ranks.local
        assert all(p.dtype == torch.bfloat16 for p in local.model.parameters())  # norms too
        assert all(m.dtype == torch.float32 for m in local.masters)
        before = {n: t.clone() for n, t in mg.named_hf_tensors()}
        _, _, metrics, _ = one_step(mg, random_batch(), config)
        norms[tp] = metrics["actor/grad_norm"]
        after = dict(mg.named_hf_tensors())
        assert all(t.dtype == torch.float32 for t in after.values())  # sync and checkpoints: masters
        assert all(not torch.equal(after[n], before[n]) for n in before)
        mg.close()
    assert norms[2] == pytest.approx(norms[1], rel=2e-2)
    assert load(None, ["trainer.param_dtype=bfloat16"]).trainer.param_dtype == "bfloat16"


def test_the_reference_model_is_the_starting_policy_on_every_rank(models, closing) -> None:  # type: ignore[no-untyped-def]
    """``algorithm.use_kl_loss``: a frozen reference shard per rank, equal to the policy at start
    and left behind by the update."""
    config = config_for("megatron", 2, use_kl_loss=True, kl_coef=0.1)
    mg = build_backend(config, models["qwen2-tied"])
    closing.append(mg)
    batch = random_batch()
    start, _ = mg.logprobs(batch)
    reference = mg.reference_logprobs(batch)
    assert torch.allclose(reference, start, atol=1e-6)
    one_step(mg, batch.replace(ref_logprobs=reference), config)
    moved, _ = mg.logprobs(batch)
    valid = batch.loss_mask.bool()
    assert (moved - start)[valid].abs().max() > 1e-4
    assert torch.equal(mg.reference_logprobs(batch), reference)


def test_gradient_checkpointing_is_refused_with_megatron(models) -> None:  # type: ignore[no-untyped-def]
    config = load_config(None, ["trainer.backend=megatron", "trainer.gradient_checkpointing=true"])
    with pytest.raises(ConfigError, match=r"trainer\.gradient_checkpointing=true is not supported"):
        build_backend(config, models["qwen2"])
