"""Comparing one extracted answer with a ground truth through math-verify.

Runs inside a verification worker process (see :mod:`simpletir.plugins.rewards.verify_pool`),
never in threads: math-verify's own timeouts use ``signal.alarm``. They are switched off here
(``parsing_timeout=None``, ``timeout_seconds=None``) because the worker arms its own interval
timer around the whole verdict, and math-verify's ``alarm(0)`` on exit would cancel it; the
parent process kills a worker that overruns even that (a stall inside C code ignores signals).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

# Verdict reasons a worker can return. The parent adds ``timeout`` and ``error`` itself.
CORRECT = "correct"
WRONG = "wrong"
PARSE_ERROR = "parse_error"
GOLD_PARSE_ERROR = "gold_parse_error"


@dataclass(frozen=True)
class JudgeOptions:
    """The math-verify knobs a worker needs (a picklable subset of the plugin options)."""

    float_rounding: int = 6
    numeric_precision: int = 15
    strict: bool = True


def quiet_math_verify() -> None:
    # math-verify warns once that its timeout is off (ours is on) and logs every parse failure.
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)


@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> list[Any]:
    """math-verify's parse of ``\\boxed{text}``; cached since a gold answer repeats n_val times.

    The ``\\boxed{}`` wrapper makes math-verify read the whole answer as LaTeX (its boxed
    extraction), and keeps its string fallback so text answers ("\\text{Evelyn}") still compare.
    """
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    return list(
        parse(
            f"\\boxed{{{text}}}",
            extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
            fallback_mode="first_match",
            parsing_timeout=None,
            raise_on_error=False,
        )
    )


def judge(answer: str, gold: str, options: JudgeOptions) -> str:
    """``correct``, ``wrong``, ``parse_error`` (the answer) or ``gold_parse_error`` (the ground truth)."""
    from math_verify import verify

    # math-verify appends the raw string as a fallback; an input with nothing *but* that
    # string did not parse (verify would only compare strings, which the caller already did).
    gold_parsed = _parse(gold)
    if not any(not isinstance(item, str) for item in gold_parsed):
        return GOLD_PARSE_ERROR
    answer_parsed = _parse(answer)
    if not any(not isinstance(item, str) for item in answer_parsed):
        return PARSE_ERROR
    same = verify(
        gold_parsed,
        answer_parsed,
        float_rounding=options.float_rounding,
        numeric_precision=options.numeric_precision,
        strict=options.strict,
        timeout_seconds=None,
        raise_on_error=False,
    )
    return CORRECT if same else WRONG
