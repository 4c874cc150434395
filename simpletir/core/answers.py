"""Where a response gives its final answer: the last complete ``\\boxed{}`` outside code.

Shared by the rollout loop (a turn with an answer ends the trajectory) and the reward plugins
(what gets verified), so both agree on what counts as an answer. Pure string work, no sympy.

Fenced *code* blocks are skipped: the source of ``print(f"\\\\boxed{{{x}}}")`` is code to run,
not an answer; its output (after ``Code execution result:``) is.
"""

from __future__ import annotations

import re

# ```python / ```py fences hold code, not answers. Output fences (```output) are kept.
_CODE_FENCE = re.compile(r"```(?:python|py|python3)[ \t]*\n.*?(?:```|\Z)", re.DOTALL | re.IGNORECASE)
_BOX_COMMANDS = ("\\boxed", "\\fbox")


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
