"""Finding the final answer in a response: the configured answer format (``rollout.answer_format``:
the last complete ``\\boxed{}`` by default, or ``<answer>...</answer>``), or (opt-in) the last number.

Pure string work, no sympy: it runs in the parent process before anything is sent to a
verification worker, so a response without an answer never costs a round trip.

The response text of a multi-turn trajectory includes the tool observations, so an answer the
model printed with ``final_answer(x)`` (which the sandbox shows as ``\\boxed{x}`` after
``Code execution result:``) is found like any other. Fenced *code* blocks are skipped: the
source of ``print(f"\\\\boxed{{{x}}}")`` is not an answer, its output is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from simpletir.core.answers import answer_format as find_answer_format
from simpletir.core.answers import last_boxed, strip_code_blocks

__all__ = ["Extraction", "extract_answer", "last_boxed", "last_number", "plain_integer"]

# A number as written in prose: sign, digits with optional thousands commas, decimals or a fraction.
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")


@dataclass(frozen=True)
class Extraction:
    """The answer text found in a response and how it was found."""

    answer: str
    source: str  # the answer format's name ("boxed", "answer_tag") or "last_number"


def last_number(text: str) -> str | None:
    """SimpleTIR's fallback: the last number in the text outside code blocks (commas dropped)."""
    matches = _NUMBER.findall(strip_code_blocks(text))
    return matches[-1].replace(",", "") if matches else None


def extract_answer(
    response: str, *, last_number_fallback: bool = False, answer_format: str = "boxed"
) -> Extraction | None:
    """The final answer of ``response`` in ``answer_format``, or None when it gives none.

    The last-number fallback grants false positives (a stray "2" in the last sentence of a wrong
    solution counts as an answer), so it is opt-in and marked in the extraction's ``source``.
    """
    found = find_answer_format(answer_format).extract(response)
    if found is not None:
        return Extraction(found, answer_format)
    if last_number_fallback:
        number = last_number(response)
        if number is not None:
            return Extraction(number, "last_number")
    return None


_INT = re.compile(r"[+-]?\d+")


def plain_integer(text: str) -> int | None:
    """``text`` as an int when it is nothing but an integer literal ("025", "-7"), else None.

    Used for the fast path: two integer literals are equal exactly when their values are,
    so AIME-style answers need no sympy round trip.
    """
    stripped = text.strip()
    if _INT.fullmatch(stripped) and len(stripped) <= 50:
        return int(stripped)
    return None
