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
    if not same and _equal_with_imaginary_unit(answer_parsed, gold_parsed):
        same = True
    return CORRECT if same else WRONG


def _equal_with_imaginary_unit(answers: list[Any], golds: list[Any]) -> bool:
    """math-verify reads the ``i`` of ``e^{i\\pi}`` as a variable, so ``e^{i\\pi}`` never equals ``-1``.

    A bounded fallback: when the answer's only free symbol is ``i`` and the gold is a constant (or
    its only free symbol is ``i`` too), substitute the imaginary unit in both and compare
    numerically (30 digits; the worker's timer bounds it). Anything with another variable is
    left to math-verify.
    """
    import sympy

    def as_number(expr: Any) -> Any:
        if not isinstance(expr, sympy.Expr):
            return None
        symbols = list(expr.free_symbols)
        if not symbols:
            return expr
        if [getattr(s, "name", None) for s in symbols] == ["i"]:  # math-verify's i carries assumptions
            return expr.subs(symbols[0], sympy.I)
        return None

    values = [v for v in map(as_number, answers) if v is not None]
    if not values or not any(isinstance(a, sympy.Expr) and a.free_symbols for a in answers + golds):
        return False  # no i anywhere: math-verify already said all there is
    for gold in filter(lambda g: g is not None, map(as_number, golds)):
        for value in values:
            try:
                if abs(complex(sympy.N(value - gold, 30))) < 1e-12:
                    return True
            except (TypeError, ValueError):  # not a number after all
                continue
    return False
