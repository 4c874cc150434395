"""The ``math_verify`` reward: the final answer vs the ground truth, through math-verify.

The final answer is found by the run's answer format (``rollout.answer_format``: the last
``\\boxed{}`` by default, or the last ``<answer>...</answer>``), the same one that ends a
trajectory in the rollout loop.

Score 1.0 when the answer is mathematically equal to the ground truth ("025" = 25,
``\\frac{1}{2}`` = 0.5, ``\\{1,2\\}`` = ``\\{2,1\\}``, intervals, tuples, matrices, percent),
else 0.0, with a reason:

- ``correct`` / ``wrong``;
- ``no_answer``: no complete answer in the answer format (and the last-number fallback is off or
  found nothing);
- ``parse_error``: the answer (or, with ``extra.gold_parse_error``, the ground truth) does not parse;
- ``timeout``: the verdict overran ``timeout_s`` and its worker was stopped;
- ``error``: the worker died on this item (memory limit, crash).

Verdicts run in a pool of worker processes with a hard per-item timeout
(:mod:`simpletir.plugins.rewards.verify_pool`), started on first use. Cheap cases never reach
it: no answer, identical strings, and two plain integers are decided in-process, and every
verdict is cached by ``(answer, ground_truth)`` (n_val samples often agree).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from simpletir import hookimpl
from simpletir.core.answers import answer_format as find_answer_format
from simpletir.core.config import ExperimentConfig
from simpletir.core.errors import ConfigError
from simpletir.core.specs import RewardSpec, option
from simpletir.core.types import RewardResult
from simpletir.plugins.rewards.extract import Extraction, extract_answer, plain_integer
from simpletir.plugins.rewards.judge import CORRECT, GOLD_PARSE_ERROR, PARSE_ERROR, JudgeOptions
from simpletir.plugins.rewards.verify_pool import VerifierPool

NAME = "math_verify"


@dataclass
class MathVerifyOptions:
    """``plugin_config.math_verify``: options of the math_verify reward."""

    timeout_s: float = option(3.0, "hard wall-clock limit per verdict; an overrunning worker is killed")
    workers: int = option(2, "verification worker processes")
    last_number_fallback: bool = option(
        False, "without a \\boxed{} answer, use the last number in the text (SimpleTIR's; false positives)"
    )
    float_rounding: int = option(6, "math-verify: decimal places floats are rounded to before comparing")
    numeric_precision: int = option(15, "math-verify: significant digits of numeric evaluation")
    strict: bool = option(True, "math-verify strict mode: variables matter, sets are not tuples")
    max_answer_chars: int = option(10000, "longer extracted answers are a parse_error without parsing")
    cache_size: int = option(100000, "verdicts kept per (answer, ground truth) pair; 0 = no cache")
    batch_size: int = option(16, "verdicts sent to a worker per message")
    max_memory_mb: int = option(4096, "address-space limit of each worker (0 = none)")

    def __post_init__(self) -> None:
        checks = {
            "timeout_s": self.timeout_s > 0 and math.isfinite(self.timeout_s),
            "workers": self.workers >= 1,
            "max_answer_chars": self.max_answer_chars >= 1,
            "cache_size": self.cache_size >= 0,
            "batch_size": self.batch_size >= 1,
            "max_memory_mb": self.max_memory_mb >= 0,
        }
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"plugin_config.{NAME}.{key} = {getattr(self, key)!r} is out of range")


class MathVerifyReward:
    """Scores responses; see the module docstring for the reasons it gives."""

    name = NAME

    def __init__(self, options: MathVerifyOptions | None = None, *, answer_format: str = "boxed") -> None:
        self.options = options or MathVerifyOptions()
        find_answer_format(answer_format)  # a ConfigError naming rollout.answer_format
        self.answer_format = answer_format
        self._cache: dict[tuple[str, str], str] = {}
        self._pool: VerifierPool | None = None

    @property
    def pool(self) -> VerifierPool:
        """The worker pool, created (not yet started) on first access."""
        if self._pool is None:
            o = self.options
            self._pool = VerifierPool(
                workers=o.workers,
                timeout_s=o.timeout_s,
                options=JudgeOptions(o.float_rounding, o.numeric_precision, o.strict),
                batch_size=o.batch_size,
                max_memory_mb=o.max_memory_mb,
            )
        return self._pool

    def warm_up(self) -> None:
        """Start the workers now (they load sympy in the background while a model loads)."""
        self.pool.start()

    def score(self, response: str, ground_truth: str) -> RewardResult:
        return self.score_many([(response, ground_truth)])[0]

    def score_many(self, items: Sequence[tuple[str, str]]) -> list[RewardResult]:
        extractions = [
            extract_answer(
                r, last_number_fallback=self.options.last_number_fallback, answer_format=self.answer_format
            )
            for r, _ in items
        ]
        reasons: list[str | None] = [None] * len(items)
        to_verify: dict[tuple[str, str], list[int]] = {}
        for i, (extraction, (_, gold)) in enumerate(zip(extractions, items, strict=True)):
            if extraction is None:
                reasons[i] = "no_answer"
                continue
            key = (extraction.answer, str(gold).strip())
            quick = self._cache.get(key) or self._decide_in_process(*key)
            if quick is not None:
                reasons[i] = quick
            else:
                to_verify.setdefault(key, []).append(i)
        if to_verify:
            keys = list(to_verify)
            for key, reason in zip(keys, self.pool.run(keys), strict=True):
                self._remember(key, reason)
                for i in to_verify[key]:
                    reasons[i] = reason
        return [
            self._result(reason or "error", extraction)
            for reason, extraction in zip(reasons, extractions, strict=True)
        ]

    def _decide_in_process(self, answer: str, gold: str) -> str | None:
        """A verdict without sympy when it is certain, else None (the pool decides)."""
        if len(answer) > self.options.max_answer_chars:
            return PARSE_ERROR
        if answer == gold:
            return CORRECT
        a, g = plain_integer(answer), plain_integer(gold)
        if a is not None and g is not None:
            return CORRECT if a == g else "wrong"
        return None

    def _remember(self, key: tuple[str, str], reason: str) -> None:
        if self.options.cache_size == 0 or reason == "error":  # a crash may be transient: retry it
            return
        if len(self._cache) >= self.options.cache_size:
            self._cache.clear()  # crude but bounded; an eval rarely has this many distinct pairs
        self._cache[key] = reason

    @staticmethod
    def _result(reason: str, extraction: Extraction | None) -> RewardResult:
        extra: dict[str, Any] = {}
        if extraction is not None:
            extra["answer_source"] = extraction.source
        if reason == GOLD_PARSE_ERROR:
            reason, extra["gold_parse_error"] = PARSE_ERROR, True
        return RewardResult(
            score=1.0 if reason == CORRECT else 0.0,
            reason=reason,
            extracted=extraction.answer if extraction is not None else None,
            extra=extra,
        )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> MathVerifyReward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def build(options: MathVerifyOptions, experiment: ExperimentConfig | None = None) -> MathVerifyReward:
    answer_format = experiment.rollout.answer_format if experiment is not None else "boxed"
    return MathVerifyReward(options, answer_format=answer_format)


@hookimpl
def register_rewards() -> Iterable[RewardSpec]:
    return [
        RewardSpec(
            name=NAME,
            factory=build,
            config_cls=MathVerifyOptions,
            description="1.0 when the final answer (rollout.answer_format) equals the ground truth",
        )
    ]
