"""Reward workers as Ray actors, behind one :class:`~simpletir.core.specs.Reward`.

Each actor builds the reward from its plugin spec (math_verify: its own pool of verification
processes). A batch of verdicts is cut into one contiguous slice per actor and the slices are
scored at once; results come back in the order given. Scoring is a pure function of its input,
so a slice whose actor died is simply sent again once Ray has restarted it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from simpletir.core.executor.ray.balance import actor_errors, stop_actors
from simpletir.core.types import RewardInput, RewardResult

if TYPE_CHECKING:
    from simpletir.core.config import ExperimentConfig
    from simpletir.core.specs import RewardSpec


class RewardWorker:
    """The actor: one reward built from its spec."""

    def __init__(self, spec: RewardSpec, config: ExperimentConfig) -> None:
        from simpletir.core.components import build_spec

        self.reward = build_spec(spec, config)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.reward.name,
            "score_inputs": callable(getattr(self.reward, "score_inputs", None)),
        }

    def warm_up(self) -> None:
        warm_up = getattr(self.reward, "warm_up", None)
        if callable(warm_up):
            warm_up()

    def score_many(self, items: Sequence[tuple[str, str]]) -> list[RewardResult]:
        return list(self.reward.score_many(items))

    def score_inputs(self, inputs: Sequence[RewardInput]) -> list[RewardResult]:
        return list(self.reward.score_inputs(inputs))

    def close(self) -> None:
        self.reward.close()


def slices(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ``(start, stop)`` ranges covering ``range(n)``, sizes differing by at most 1."""
    parts = max(1, min(parts, n))
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + base + (i < extra)
        out.append((start, stop))
        start = stop
    return out


class RayReward:
    """Reward actors seen as one reward."""

    def __init__(self, workers: Sequence[Any], *, retries: int) -> None:
        import ray

        self.workers = list(workers)
        self.retries = retries
        described = ray.get(self.workers[0].describe.remote())
        self.name = str(described["name"])
        self.lost_calls = 0
        if described["score_inputs"]:
            # Only a reward with Reward v1's score_inputs gets one here too (the core checks for it).
            self.score_inputs: Callable[[Sequence[RewardInput]], list[RewardResult]] = self._score_inputs

    def warm_up(self) -> None:
        import ray

        ray.get([w.warm_up.remote() for w in self.workers])

    def score(self, response: str, ground_truth: str) -> RewardResult:
        return self.score_many([(response, ground_truth)])[0]

    def score_many(self, items: Sequence[tuple[str, str]]) -> list[RewardResult]:
        return self._scatter("score_many", list(items))

    def _score_inputs(self, inputs: Sequence[RewardInput]) -> list[RewardResult]:
        return self._scatter("score_inputs", list(inputs))

    def _scatter(self, method: str, items: list[Any]) -> list[RewardResult]:
        import ray

        if not items:
            return []
        ranges = slices(len(items), len(self.workers))
        results: list[list[RewardResult] | None] = [None] * len(ranges)
        for attempt in range(self.retries + 1):
            pending = {
                i: getattr(self.workers[i], method).remote(items[a:b])
                for i, (a, b) in enumerate(ranges)
                if results[i] is None
            }
            for i, ref in pending.items():
                try:
                    results[i] = ray.get(ref)
                except actor_errors():
                    self.lost_calls += 1
                    if attempt == self.retries:
                        raise
        return [r for part in results for r in (part or [])]

    def close(self) -> None:
        stop_actors(self.workers, timeout_s=30)
        self.workers = []
