"""Trainer throughput: the ``megatron`` backend at TP=1 and TP=2 against ``hf``, side by side.

    .venv/bin/python bench/train.py                 # the MEGATRON_CPU model, 3 x 5 timed steps each
    .venv/bin/python bench/train.py --steps 10 --rounds 2 --layers 8
    .venv/bin/python bench/train.py --threads 1      # on a machine shared with other jobs
    .venv/bin/python bench/train.py --model smollm2-135m --tp 1 3 --seq 512   # real model, 9 heads: TP 1/3

One fixed batch (``--batch`` rows of ``--seq`` tokens, the last ``--response`` of them trained on,
random advantages), the same model folder, the same config; each variant runs the backend's real
``train_step`` (micro-batches, forward, backward, TP-aware clip, AdamW) through the training loop's
own loss (:class:`~simpletir.core.trainer.loop.MicroBatchLoss`). Variants alternate in rounds
(``hf``, megatron TP=1, TP=2, then again), so a machine that slows down mid-run slows all of them.
Tokens/s counts every token of the batch (prompt and response) per optimiser step.

The default model is the one of ``../shared/docs/MEGATRON_CPU.md`` (a random Qwen2: hidden 256,
4 layers, 8 query / 4 KV heads, MLP 1024, vocabulary 8192) with batch 4 x 256. The last lines are
the ratios against ``hf`` (the issue's target: TP=1 >= 0.95x on CPU). On a GPU machine run it with
``--device cuda --model <a real model>``; it prints MFU when ``--device cuda``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from simpletir.core.backend import build_backend
from simpletir.core.config_load import load_config
from simpletir.core.trainer.loop import loss_function
from simpletir.core.trainer.tensors import TrainBatch


def random_qwen2(
    out: Path, layers: int, hidden: int, heads: int, kv_heads: int, ffn: int, vocab: int
) -> Path:
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from simpletir.core.rollout.models import qwen_tokenizer_dir

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    Qwen2ForCausalLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(qwen_tokenizer_dir()).save_pretrained(out)  # ids stay < vocab
    return out


def fixed_batch(rows: int, seq: int, response: int, vocab: int) -> TrainBatch:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (rows, seq), generator=gen)
    mask = torch.ones(rows, response)
    batch = TrainBatch(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        prompt_lens=torch.full((rows,), seq - response),
        response_lens=torch.full((rows,), response),
        responses=ids[:, seq - response :],
        loss_mask=mask,
        engine_logprobs=torch.zeros_like(mask),
        group_index=torch.arange(rows),
    )
    return batch.replace(
        advantages=torch.randn(rows, response, generator=gen), old_logprobs=-torch.ones_like(mask) * 9
    )


def config_for(backend: str, tp: int, args: argparse.Namespace) -> Any:
    return load_config(
        None,
        [
            f"trainer.backend={backend}",
            f"trainer.tensor_parallel_size={tp}",
            f"trainer.device={args.device}",
            f"trainer.micro_batch_size={args.micro_batch}",
            "rollout.temperature=1.0",
            "algorithm.lr=1e-5",
        ],
    )


def time_variant(
    name: str, backend_name: str, tp: int, model: Path, batch: TrainBatch, args: argparse.Namespace
) -> list[float]:
    """Seconds per optimiser step over ``args.steps`` steps, after one warm-up step."""
    config = config_for(backend_name, tp, args)
    if backend_name == "hf":
        torch.set_num_threads(args.threads)  # megatron ranks split the same budget between them
    backend = build_backend(config, model)
    try:
        backend.train_step(batch, loss_function(batch, config, []), with_entropy=False)  # warm-up
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            backend.train_step(batch, loss_function(batch, config, []), with_entropy=False)
            if args.device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    finally:
        backend.close()
    print(f"  {name:14s} {statistics.median(times):7.3f} s/step (min {min(times):.3f})", flush=True)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=None, help="a model folder or packaged name (default: random MEGATRON_CPU model)"
    )
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--tp", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--response", type=int, default=192)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="CPU threads of the trainer (hf: all of them; megatron: split between the TP ranks); "
        "on a machine shared with other jobs, 1 keeps OpenMP from waiting on busy cores",
    )
    args = parser.parse_args()
    os.environ["SIMPLETIR_TRAINER_THREADS"] = str(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            from simpletir.core.rollout.models import resolve_model

            model = resolve_model(args.model)
        else:
            model = random_qwen2(Path(tmp) / "model", args.layers, 256, 8, 4, 1024, 8192)
        from transformers import AutoConfig

        hf_config = AutoConfig.from_pretrained(model)
        batch = fixed_batch(args.batch, args.seq, args.response, int(hf_config.vocab_size))
        tokens = args.batch * args.seq
        variants = [("hf", "hf", 1)] + [(f"megatron TP={tp}", "megatron", tp) for tp in args.tp]
        print(
            f"model {args.model or 'random Qwen2 (MEGATRON_CPU)'}: {hf_config.num_hidden_layers} layers, "
            f"hidden {hf_config.hidden_size}, vocab {hf_config.vocab_size}; batch {args.batch} x {args.seq} "
            f"tokens; {args.steps} timed steps x {args.rounds} rounds; {os.cpu_count()} CPU cores, "
            f"{args.threads} trainer threads; device {args.device}"
        )
        seconds: dict[str, list[float]] = {name: [] for name, _, _ in variants}
        for round_index in range(args.rounds):
            print(f"round {round_index + 1}/{args.rounds}")
            for name, backend_name, tp in variants:
                seconds[name] += time_variant(name, backend_name, tp, model, batch, args)

    # The fastest step is the least disturbed by other jobs on the machine; the median is shown too.
    print("\ntrain tokens/s (every token of the batch, one optimiser step): best step, median step")
    rates = {name: tokens / min(times) for name, times in seconds.items()}
    for name, times in seconds.items():
        print(f"  {name:14s} {rates[name]:9.0f} {tokens / statistics.median(times):9.0f} tokens/s")
    if args.device == "cuda":
        params = sum(
            p.numel()
            for p in __import__("transformers").AutoModelForCausalLM.from_config(hf_config).parameters()
        )
        peak = float(os.environ.get("PEAK_TFLOPS", "989")) * 1e12  # H100/H200 dense bf16
        for name, rate in rates.items():
            print(
                f"  {name:14s} MFU {6 * params * rate / peak:6.2%} (6 N tokens/s / {peak / 1e12:.0f} TFLOPS)"
            )
    print("\nratio vs hf, best steps (higher is faster)")
    for name, rate in rates.items():
        if name != "hf":
            print(f"  {name:14s} {rate / rates['hf']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
