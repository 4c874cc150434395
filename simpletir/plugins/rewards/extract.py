"""Finding the final answer in a response: the last complete ``\\boxed{}``, or (opt-in) the last number.

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
from typing import Literal

# ```python / ```py fences hold code, not answers. Output fences (```output) are kept.
_CODE_FENCE = re.compile(r"```(?:python|py|python3)[ \t]*\n.*?(?:```|\Z)", re.DOTALL | re.IGNORECASE)
_BOX_COMMANDS = ("\\boxed", "\\fbox")
# A number as written in prose: sign, digits with optional thousands commas, decimals or a fraction.
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")


@dataclass(frozen=True)
class Extraction:
    """The answer text found in a response and how it was found."""

    answer: str
    source: Literal["boxed", "last_number"]


def strip_code_blocks(text: str) -> str:
    """The text with fenced Python code blocks removed (an unclosed fence runs to the end)."""
    return _CODE_FENCE.sub("\n", text)


def _braced(text: str, open_at: int) -> tuple[str, int] | None:
    """The content of the brace group opening at ``text[open_at] == '{'`` and the index after it.

    None when the group never closes (a response cut off mid-answer). ``\\{`` and ``\\}`` are
    escaped literal braces (set notation) and do not count towards the nesting.
    """
    depth = 0
    i = open_at
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\" and i + 1 < n and text[i + 1] in "{}":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : i], i + 1
        i += 1
    return None


def _box_at(text: str, start: int, command: str) -> str | None:
    """The argument of ``\\boxed`` starting at ``start``: ``{...}`` or the ``\\boxed 5`` short form."""
    i = start + len(command)
    if i < len(text) and text[i].isalpha():  # \boxedsomething is another macro
        return None
    while i < len(text) and text[i] in " \t":
        i += 1
    if i < len(text) and text[i] == "{":
        group = _braced(text, i)
        return group[0] if group is not None else None
    if i > start + len(command):  # "\boxed 5": a single token up to whitespace or '$'
        match = re.match(r"[^\s$]+", text[i:])
        return match.group(0) if match else None
    return None


def last_boxed(text: str) -> str | None:
    """The content of the last *complete* ``\\boxed{...}`` (or ``\\fbox{...}``) outside code blocks.

    Nested braces are balanced (``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``). A final box
    that never closes (truncated output) is skipped in favour of the last complete one before it.
    """
    text = strip_code_blocks(text)
    starts = sorted(
        (m.start(), command) for command in _BOX_COMMANDS for m in re.finditer(re.escape(command), text)
    )
    for start, command in reversed(starts):
        content = _box_at(text, start, command)
        if content is not None and content.strip():
            return content.strip()
    return None


def last_number(text: str) -> str | None:
    """SimpleTIR's fallback: the last number in the text outside code blocks (commas dropped)."""
    matches = _NUMBER.findall(strip_code_blocks(text))
    return matches[-1].replace(",", "") if matches else None


def extract_answer(response: str, *, last_number_fallback: bool = False) -> Extraction | None:
    """The final answer of ``response``, or None when it gives none.

    The last-number fallback grants false positives (a stray "2" in the last sentence of a wrong
    solution counts as an answer), so it is opt-in and marked in the extraction's ``source``.
    """
    boxed = last_boxed(response)
    if boxed is not None:
        return Extraction(boxed, "boxed")
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
