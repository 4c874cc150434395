"""Where a response gives its final answer: the last complete ``\\boxed{}`` outside code.

Shared by the rollout loop (a turn with an answer ends the trajectory) and the reward plugins
(what gets verified), so both agree on what counts as an answer. Pure string work, no sympy.

Fenced *code* blocks are skipped: the source of ``print(f"\\\\boxed{{{x}}}")`` is code to run,
not an answer; its output (after ``Code execution result:``) is.
"""

from __future__ import annotations

import re

# Every fenced block, matched whole (so a closing fence is never read as an opening one); the
# sandbox runs bare and python/py fences, so those hold code, not answers. Others (```output,
# ```text) are kept: an answer may stand in them.
_FENCED_BLOCK = re.compile(r"```([\w+-]*)[ \t]*\n.*?(?:```|\Z)", re.DOTALL)
_CODE_LANGUAGES = frozenset({"", "py", "python", "python3"})
_BOX_COMMANDS = ("\\boxed", "\\fbox")


def _strip_if_code(block: re.Match[str]) -> str:
    return "\n" if block.group(1).lower() in _CODE_LANGUAGES else block.group(0)


def strip_code_blocks(text: str) -> str:
    """The text with fenced code blocks removed (an unclosed fence runs to the end)."""
    return _FENCED_BLOCK.sub(_strip_if_code, text)


# A backslash escapes the next character (``\\{`` is a literal brace, ``\\\\`` a LaTeX newline
# after which a brace is a real group); any other brace opens or closes a group.
_BRACE_TOKEN = re.compile(r"\\.|[{}]", re.DOTALL)
_SHORT_ARGUMENT = re.compile(r"[^\s$]+")


def _matching_braces(text: str) -> dict[int, int]:
    """``{index of an opening brace: index of its closing brace}`` for every group that closes.

    One pass over the text, so extraction stays linear however many boxes a (degenerate)
    response opens. Escaped braces ``\\{`` / ``\\}`` (set notation) do not count.
    """
    closing: dict[int, int] = {}
    stack: list[int] = []
    for match in _BRACE_TOKEN.finditer(text):
        brace = match.group()
        if brace == "{":
            stack.append(match.start())
        elif brace == "}" and stack:
            closing[stack.pop()] = match.start()
    return closing


def _box_at(text: str, start: int, command: str, closing: dict[int, int]) -> str | None:
    """The argument of ``\\boxed`` starting at ``start``: ``{...}`` or the ``\\boxed 5`` short form.

    None when a braced argument never closes (a response cut off mid-answer).
    """
    i = start + len(command)
    if i < len(text) and text[i].isalpha():  # \boxedsomething is another macro
        return None
    while i < len(text) and text[i] in " \t":
        i += 1
    if i < len(text) and text[i] == "{":
        end = closing.get(i)
        return text[i + 1 : end] if end is not None else None
    if i > start + len(command):  # "\boxed 5": a single token up to whitespace or '$'
        match = _SHORT_ARGUMENT.match(text, i)
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
    if not starts:
        return None
    closing = _matching_braces(text)
    for start, command in reversed(starts):
        content = _box_at(text, start, command, closing)
        if content is not None and content.strip():
            return content.strip()
    return None
