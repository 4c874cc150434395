"""Rollout engine replicas as Ray actors, behind one :class:`PolicyEngine`.

Each replica is an actor holding a whole engine (``rollout.engine``: vLLM, possibly tensor
parallel over the GPUs the actor reserves, or hf). :class:`RayEngine` sends each request to the
replica with the fewest requests in flight, so replicas finish a rollout together.

Weights: :meth:`RayEngine.update_weights` puts each bucket into the object store once and every
replica loads the same objects (no copy per replica through this process). The references of the
last update are kept: a replica that died and was restarted by Ray comes back with the weights
it was started with, and is given the current ones again before it serves a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from simpletir.core.errors import ComponentLost
from simpletir.core.executor.ray.balance import (
    LeastLoaded,
    actor_errors,
    remote,
    stop_actors,
    wait_until_alive,
)
from simpletir.core.rollout.engine import Generation, PolicyEngine, SamplingParams

if TYPE_CHECKING:
    import torch

    from simpletir.core.config import ExperimentConfig

log = logging.getLogger(__name__)


class EngineWorker:
    """The actor: one engine, as :func:`~simpletir.core.rollout.build_engine` builds it."""

    def __init__(self, config: ExperimentConfig) -> None:
        from simpletir.core.rollout import build_engine

        self.engine = build_engine(config)
        # A new value on every (re)start: the proxy compares it to notice a restarted replica.
        self.incarnation = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def info(self) -> dict[str, Any]:
        return {
            "incarnation": self.incarnation,
            "eos_token_ids": sorted(self.engine.eos_token_ids),
            "max_model_len": self.engine.max_model_len,
            "pid": os.getpid(),
        }

    def ping(self) -> bool:
        return True

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> Generation:
        return await self.engine.generate(prompt_ids, params)

    async def load_weights(self, buckets: list[Any], bucket_bytes: int | None) -> str:
        """Load every bucket (object refs, fetched one at a time); returns the incarnation."""
        import ray

        for ref in buckets:
            named = unpack(await ref if isinstance(ref, ray.ObjectRef) else ref)
            await asyncio.to_thread(self.engine.update_weights, named, bucket_bytes=bucket_bytes)
        return self.incarnation

    def close(self) -> None:
        self.engine.close()


def buckets_of(
    named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int | None
) -> Iterable[list[tuple[str, torch.Tensor]]]:
    """Consecutive groups of at most ``bucket_bytes`` (a larger tensor is a bucket of its own)."""
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in named_tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and bucket_bytes is not None and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor.detach().cpu()))
        size += nbytes
    if bucket:
        yield bucket


# A bucket crosses the object store as raw bytes: Ray stores numpy arrays without pickling them and
# a reader maps them without a copy, where a torch tensor would be pickled byte by byte (measured
# here: SmolLM2-135M's 621 MiB took 6.5 s as tensors). bf16 has no numpy dtype, hence bytes + dtype.
Packed = tuple[str, Any, str, tuple[int, ...]]


def pack(bucket: list[tuple[str, torch.Tensor]]) -> list[Packed]:
    import torch

    return [
        (
            name,
            t.contiguous().reshape(-1).view(torch.uint8).numpy(),
            str(t.dtype).removeprefix("torch."),
            tuple(t.shape),
        )
        for name, t in bucket
    ]


def unpack(packed: list[Packed]) -> list[tuple[str, torch.Tensor]]:
    import warnings

    import torch

    with warnings.catch_warnings():  # the store's buffers are read-only; the engine only copies from them
        warnings.simplefilter("ignore", UserWarning)
        return [
            (name, torch.from_numpy(raw).view(getattr(torch, dtype)).reshape(shape))
            for name, raw, dtype, shape in packed
        ]


class RayEngine(PolicyEngine):
    """Data-parallel engine replicas (Ray actors) seen as one engine."""

    def __init__(self, replicas: Sequence[Any], tokenizer: Any) -> None:
        import ray

        self.replicas = list(replicas)
        self.tokenizer = tokenizer
        infos = ray.get([r.info.remote() for r in self.replicas])
        self.eos_token_ids = frozenset(infos[0]["eos_token_ids"])
        self.max_model_len = int(min(i["max_model_len"] for i in infos))
        self._incarnations = [i["incarnation"] for i in infos]
        self.balance = LeastLoaded(len(self.replicas))
        self._weights: list[Any] | None = None  # object refs of the last update's buckets
        self._bucket_bytes: int | None = None
        self._resync: list[asyncio.Lock | None] = [None] * len(self.replicas)
        self._stale = [False] * len(self.replicas)
        self._recovering: set[asyncio.Task[None]] = set()
        self.lost_calls = 0
        self.resyncs = 0
        self._closed = False

    async def generate(self, prompt_ids: Sequence[int], params: SamplingParams) -> Generation:
        if self._closed:
            raise RuntimeError("RayEngine.generate after close()")
        i = self.balance.pick(avoid={j for j, stale in enumerate(self._stale) if stale})
        with self.balance.use(i):
            await self._current(i)
            try:
                return await remote(
                    f"rollout engine replica {i}", self.replicas[i].generate.remote(list(prompt_ids), params)
                )
            except ComponentLost:
                self.lost_calls += 1
                self._mark_lost(i)
                raise

    def _mark_lost(self, i: int) -> None:
        """Requests avoid replica ``i`` until it is back with the current weights (in the background)."""
        if self._stale[i]:
            return
        self._stale[i] = True  # restarted by Ray with its start-up weights

        async def recover() -> None:
            with contextlib.suppress(ComponentLost):  # dead for good: it stays avoided
                await self._current(i)

        task = asyncio.ensure_future(recover())
        self._recovering.add(task)
        task.add_done_callback(self._recovering.discard)

    async def _current(self, i: int) -> None:
        """Before serving: a replica restarted since the last update gets the current weights."""
        if not self._stale[i]:
            return
        lock = self._resync[i] = self._resync[i] or asyncio.Lock()
        async with lock:
            if not self._stale[i]:
                return
            await wait_until_alive(self.replicas[i], f"rollout engine replica {i}")
            if self._weights is None:  # never updated: its start-up weights are the current ones
                self._stale[i] = False
                return
            info = await remote(f"rollout engine replica {i}", self.replicas[i].info.remote())
            if info["incarnation"] != self._incarnations[i]:
                incarnation = await remote(
                    f"rollout engine replica {i}",
                    self.replicas[i].load_weights.remote(self._weights, self._bucket_bytes),
                )
                self._incarnations[i] = incarnation
                self.resyncs += 1
            self._stale[i] = False

    def update_weights(
        self, named_tensors: Iterable[tuple[str, torch.Tensor]], *, bucket_bytes: int | None = None
    ) -> None:
        import ray

        refs = [ray.put(pack(bucket)) for bucket in buckets_of(named_tensors, bucket_bytes)]
        calls = [r.load_weights.remote(refs, bucket_bytes) for r in self.replicas]
        try:
            self._incarnations = list(ray.get(calls))
        except actor_errors() as exc:
            # A replica died while loading: Ray restarts it; it is given these weights before
            # its next request, like any restarted replica.
            self._stale = [True] * len(self.replicas)
            self.lost_calls += 1
            log.warning("weight sync: a replica was lost (%s); it resyncs on restart", exc)
        self._weights = refs
        self._bucket_bytes = bucket_bytes

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        stop_actors(self.replicas)
        self._weights = None
