"""A transformers policy engine: one sequence at a time, exact stop strings, raw logprobs.

Meant for tiny models in tests and for machines without vLLM. It runs its own sampling loop over
the KV cache instead of ``model.generate`` so that it can (1) seed every request with its own
``torch.Generator``, (2) report the raw log-probability of each sampled token, and (3) apply
vLLM's stop semantics exactly: stop at the first token whose decoded text completes a stop
string, keep that token.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simpletir.core.errors import ConfigError
from simpletir.core.rollout.engine import EngineFinish, Generation, PolicyEngine, SamplingParams, eos_ids_of

if TYPE_CHECKING:
    import torch

_DTYPES = {"float32", "bfloat16", "float16"}


def torch_dtype(name: str, *, cuda: bool) -> torch.dtype:
    import torch

    if name == "auto":
        # float32 on CPU: this machine kind has AVX2 only, where bf16 matmuls are slow.
        return torch.bfloat16 if cuda else torch.float32
    if name not in _DTYPES:
        raise ConfigError(f"rollout.dtype={name!r} is not one of auto, {', '.join(sorted(_DTYPES))}")
    dtype: torch.dtype = getattr(torch, name)
    return dtype


def sample_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """Sample one id from 1-D ``logits`` with temperature, top-k and top-p (greedy at T=0)."""
    import torch

    if params.temperature == 0:
        return int(torch.argmax(logits))
    scores = logits / params.temperature
    if params.top_k != -1 and params.top_k < scores.numel():
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(-1)
        # Drop a token when the mass *before* it already reaches top_p (the first always stays).
        drop = (cumulative - torch.softmax(sorted_scores, dim=-1)) >= params.top_p
        scores = scores.scatter(0, order, sorted_scores.masked_fill(drop, float("-inf")))
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


class HFEngine(PolicyEngine):
    def __init__(
        self,
        model_dir: str | Path,
        *,
        dtype: str = "auto",
        seed: int = 0,
        max_model_len: int = 4096,
        device: str = "auto",
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch_dtype(dtype, cuda=self.device.type == "cuda")
        )
        self.model: Any = model.to(self.device)  # type: ignore[arg-type]
        self.model.eval()
        self.eos_token_ids = eos_ids_of(model_dir, self.tokenizer)
        limit = getattr(self.model.config, "max_position_embeddings", None) or max_model_len
        self.max_model_len = min(max_model_len, int(limit))
        self._seed = seed
        self._unseeded = itertools.count()
        # One model and one KV cache: requests are served one at a time, off the event loop.
        self._lock = threading.Lock()
        self._closed = False

    async def generate(self, prompt_ids: Sequence[int], params: SamplingParams) -> Generation:
        if self._closed:
            raise RuntimeError("HFEngine.generate after close()")
        seed = params.seed if params.seed is not None else self._seed * 1_000_003 + next(self._unseeded)
        return await asyncio.to_thread(self._generate, list(prompt_ids), params, seed)

    def _generate(self, prompt_ids: list[int], params: SamplingParams, seed: int) -> Generation:
        import torch

        room = self.max_model_len - len(prompt_ids)
        if room < 1 or not prompt_ids:
            raise ValueError(
                f"prompt of {len(prompt_ids)} ids leaves no room in max_model_len={self.max_model_len}"
            )
        max_tokens = min(params.max_tokens, room)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        tokens: list[int] = []
        logprobs: list[float] = []
        finish: EngineFinish = "length"
        stop_string: str | None = None
        with self._lock, torch.inference_mode():
            out = self.model(input_ids=torch.tensor([prompt_ids], device=self.device), use_cache=True)
            while True:
                logits = out.logits[0, -1].float().cpu()
                token = sample_token(logits, params, generator)
                tokens.append(token)
                logprobs.append(float(torch.log_softmax(logits, dim=-1)[token]))
                if token in self.eos_token_ids and not params.ignore_eos:
                    finish = "eos"
                    break
                if params.stop:
                    # vLLM checks stop strings on the text without special tokens; so do we.
                    text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                    stop_string = next((s for s in params.stop if s in text), None)
                    if stop_string is not None:
                        finish = "stop"
                        break
                if len(tokens) >= max_tokens:
                    break
                step = torch.tensor([[token]], device=self.device)
                out = self.model(input_ids=step, past_key_values=out.past_key_values, use_cache=True)
        return Generation(tuple(tokens), tuple(logprobs), finish, stop_string)

    def update_weights(
        self, named_tensors: Iterable[tuple[str, torch.Tensor]], *, bucket_bytes: int | None = None
    ) -> None:
        import torch

        # state_dict (not named_parameters) so tied names such as lm_head.weight are accepted.
        params = self.model.state_dict(keep_vars=True)
        with self._lock, torch.no_grad():
            for name, tensor in named_tensors:
                if name not in params:
                    raise KeyError(f"update_weights: the policy has no parameter {name!r}")
                params[name].copy_(tensor.to(params[name].dtype))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            del self.model
