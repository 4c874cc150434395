"""Test doubles for the rollout: an engine that replays fixed token ids, and a scripted tool.

They make the agent loop's exactness testable without a model: ``ScriptedEngine`` behaves like
a real engine would if the model had decided to emit exactly these ids (it honours stop strings
at token level with vLLM's semantics, EOS, and ``max_tokens``), and records every request so a
test can check what the loop sent. ``ScriptedTool`` finds complete fenced Python blocks like the
sandbox tool does but never executes anything: a test supplies the results.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simpletir.core.prompts import PYTHON_TOOL_INSTRUCTIONS
from simpletir.core.rollout.engine import EngineFinish, Generation, PolicyEngine, SamplingParams
from simpletir.core.types import ToolCall, ToolResult

_BLOCK = re.compile(r"```python\n(.*?)\n```", re.DOTALL)


@dataclass(frozen=True)
class Request:
    prompt_ids: tuple[int, ...]
    params: SamplingParams


class ScriptedEngine(PolicyEngine):
    """Replays one token stream per turn, like a model that always says the same thing.

    ``streams[i]`` is what "the model" emits in turn ``i`` (ids, or text tokenized once). State is
    keyed by context, so many trajectories can share one engine: a request whose context is
    exactly one this engine's earlier output ended at continues that stream (the loop continuing
    a turn after a stop string); a context that *extends* such an end (an observation was
    appended) starts the next stream; any other context starts stream 0.
    """

    def __init__(
        self,
        tokenizer: Any,
        streams: Sequence[Sequence[int] | str],
        *,
        eos_token_ids: Sequence[int] = (),
        max_model_len: int = 100_000,
        delay_s: float = 0.0,
    ) -> None:
        self.tokenizer = tokenizer
        self.eos_token_ids = frozenset(eos_token_ids)
        self.max_model_len = max_model_len
        self.streams = [
            list(tokenizer.encode(s, add_special_tokens=False)) if isinstance(s, str) else list(s)
            for s in streams
        ]
        self.delay_s = delay_s
        self.requests: list[Request] = []
        self._ends: dict[tuple[int, ...], tuple[int, int]] = {}

    def _locate(self, context: tuple[int, ...]) -> tuple[int, int]:
        if context in self._ends:
            return self._ends[context]
        extended = [key for key in self._ends if context[: len(key)] == key]
        if extended:
            stream, _ = self._ends[max(extended, key=len)]
            return stream + 1, 0
        return 0, 0

    async def generate(self, prompt_ids: Sequence[int], params: SamplingParams) -> Generation:
        self.requests.append(Request(tuple(prompt_ids), params))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        stream_index, pos = self._locate(tuple(prompt_ids))
        if stream_index >= len(self.streams):
            raise AssertionError(f"ScriptedEngine: request {len(self.requests)} has no stream left")
        stream = self.streams[stream_index]
        out: list[int] = []
        finish: EngineFinish = "length"
        stop_string = None
        max_tokens = min(params.max_tokens, self.max_model_len - len(prompt_ids))
        while len(out) < max_tokens:
            if pos >= len(stream):
                raise AssertionError(f"ScriptedEngine: stream {stream_index} ran out without EOS or stop")
            token = stream[pos]
            pos += 1
            out.append(token)
            if token in self.eos_token_ids and not params.ignore_eos:
                finish = "eos"
                break
            text = self.tokenizer.decode(out, skip_special_tokens=True)
            stop_string = next((s for s in params.stop if s in text), None)
            if stop_string is not None:
                finish = "stop"
                break
        self._ends[(*prompt_ids, *out)] = (stream_index, pos)
        # Distinct, recognisable logprobs: -(position in the stream, from 1) / 100.
        logprobs = tuple(-(pos - len(out) + i + 1) / 100 for i in range(len(out)))
        return Generation(tuple(out), logprobs, finish, stop_string)

    def update_weights(self, named_tensors: Any, *, bucket_bytes: int | None = None) -> None:
        raise NotImplementedError("ScriptedEngine has no weights")

    def close(self) -> None:
        pass


class ScriptedTool:
    """A ``python``-like tool that answers from ``respond(code)`` instead of executing code.

    ``stop_strings`` and ``parse_call`` follow the sandbox tool's contract: the stop is a closing
    fence followed by a newline, and only a complete block is a call (the last one in the turn).
    """

    name = "python"
    instructions = PYTHON_TOOL_INSTRUCTIONS  # the python tool's, so prompts match the real tool's

    def __init__(
        self,
        respond: Callable[[str], ToolResult] | None = None,
        *,
        delay_s: float | Callable[[int], float] = 0.0,
        stop_strings: Sequence[str] = ("```\n",),
    ) -> None:
        self.respond = respond or (lambda code: ToolResult(stdout=f"ran {len(code)} chars\n"))
        self.delay_s = delay_s  # seconds, or a function of the call's index
        self._stop = tuple(stop_strings)
        self.calls: list[ToolCall] = []

    @property
    def stop_strings(self) -> Sequence[str]:
        return self._stop

    def parse_call(self, turn_text: str) -> ToolCall | None:
        blocks = _BLOCK.findall(turn_text)
        return ToolCall(self.name, blocks[-1]) if blocks else None

    async def run(self, call: ToolCall, *, timeout_s: float | None = None) -> ToolResult:
        index = len(self.calls)
        self.calls.append(call)
        delay = self.delay_s(index) if callable(self.delay_s) else self.delay_s
        if delay:
            await asyncio.sleep(delay)
        return self.respond(call.code)

    async def run_many(self, calls: Sequence[ToolCall]) -> AsyncIterator[tuple[int, ToolResult]]:
        for i, call in enumerate(calls):
            yield i, await self.run(call)

    def format_observation(self, result: ToolResult) -> str:
        return f"\nCode execution result: {result.stdout if result.ok else result.stderr}\n"

    async def aclose(self) -> None:
        pass


def train_scripted_model(
    base_dir: str | Path,
    out_dir: str | Path,
    sequences: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]],
    *,
    max_steps: int = 500,
    lr: float = 1e-2,
    target_loss: float = 0.05,
    seed: int = 0,
) -> float:
    """Overfit a (tiny) model so that greedy decoding replays scripted multi-turn responses.

    Each sequence is ``(prompt_ids, pieces)``: pieces alternate model turn, observation, model
    turn...; loss is taken on the model turns only, exactly as the rollout assembles them. The
    result is a real model for real engines (vLLM, hf) that writes code blocks on cue, so a
    multi-turn rollout through a real tool can be tested on CPU. Returns the final loss.

    Speed (seconds, not minutes, on 2 cores): the 151k-row vocabulary embedding is re-drawn with
    unit scale (large logit margins) and frozen, and logits are computed only where there is a
    label; only the small transformer body trains. Stops once every label is the argmax and
    the loss is below ``target_loss``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model: Any = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    embeddings = {
        id(m.weight): m.weight for m in (model.get_input_embeddings(), model.get_output_embeddings())
    }
    with torch.no_grad():
        for weight in embeddings.values():
            weight.normal_(0.0, 1.0)
            weight.requires_grad_(False)
    out_weight = model.get_output_embeddings().weight
    rows = []
    for prompt_ids, pieces in sequences:
        ids, labels = list(prompt_ids), [-100] * len(prompt_ids)
        for i, piece in enumerate(pieces):
            ids += list(piece)
            labels += list(piece) if i % 2 == 0 else [-100] * len(piece)
        # hidden state at position j predicts the id at j + 1
        positions = [j - 1 for j, label in enumerate(labels) if label != -100 and j > 0]
        rows.append(
            (torch.tensor([ids]), torch.tensor(positions), torch.tensor([ids[j + 1] for j in positions]))
        )
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=lr)
    model.train()
    loss = torch.tensor(float("inf"))
    for _ in range(max_steps):
        total, correct, count = torch.zeros(()), 0, 0
        for input_ids, where, targets in rows:
            hidden = model.model(input_ids=input_ids).last_hidden_state[0, where]
            logits = hidden @ out_weight.T
            total = total + torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
            correct += int((logits.argmax(-1) == targets).sum())
            count += len(targets)
        loss = total / count
        if correct == count and loss.item() < target_loss:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out_dir)
    model.generation_config.save_pretrained(out_dir)
    return float(loss.item())


# A scripted tool-integrated conversation: two code turns, then an answer. ``train_scripted_model``
# teaches it to tiny-qwen2 so real engines can run real multi-turn rollouts on CPU. The
# observations are exactly what the python sandbox tool (and ScriptedTool) append for the
# printed "42\n" and "True\n".
TIR_SCRIPT: tuple[str, ...] = (
    "Let me compute this with Python.\n```python\nprint(6 * 7)\n```\n",
    "\nCode execution result: 42\n\n",
    "Now check it.\n```python\nprint(42 == 6 * 7)\n```\n",
    "\nCode execution result: True\n\n",
    "The answer is \\boxed{42}.<|im_end|>",
)
TIR_QUESTION = "What is 6 times 7?"


def tir_respond(code: str) -> ToolResult:
    """What Python prints for the two snippets of :data:`TIR_SCRIPT` (no code is executed)."""
    answers = {"print(6 * 7)": "42\n", "print(42 == 6 * 7)": "True\n"}
    return ToolResult(stdout=answers.get(code.strip(), ""), exit_code=0 if code.strip() in answers else 1)


def scripted_tir_model(prompts: Sequence[Sequence[int]], *, base: str = "tiny-qwen2") -> Path:
    """tiny-qwen2 overfit on :data:`TIR_SCRIPT` after each prompt; built once, cached by content."""
    import hashlib
    import os
    import shutil
    import tempfile

    from transformers import AutoTokenizer

    from simpletir.core.rollout.models import cache_dir, resolve_model

    base_dir = resolve_model(base)
    key = hashlib.sha256(repr((str(base_dir.name), [list(p) for p in prompts], TIR_SCRIPT)).encode())
    target = cache_dir() / f"scripted-tir-{key.hexdigest()[:16]}"
    if (target / "config.json").exists():
        return target
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    pieces = [tokenizer.encode(piece, add_special_tokens=False) for piece in TIR_SCRIPT]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".scripted-tir-", dir=target.parent))
    try:
        train_scripted_model(base_dir, tmp, [(p, pieces) for p in prompts])
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
