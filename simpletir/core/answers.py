"""Where a response gives its final answer: by default the last complete ``\\boxed{}`` outside code.

Shared by the rollout loop (a turn with an answer ends the trajectory) and the reward plugins
(what gets verified), so both agree on what counts as an answer. Pure string work, no sympy.

The *answer format* is a named piece chosen by ``rollout.answer_format`` (:data:`ANSWER_FORMATS`):
``boxed`` (SimpleTIR's, the default) or ``answer_tag`` (``<answer>...</answer>``). Each format
brings its extractor and the line the default prompt uses to ask for it.

Fenced *code* blocks are skipped: the source of ``print(f"\\\\boxed{{{x}}}")`` is code to run,
not an answer; its output (after ``Code execution result:``) is.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from simpletir.core.errors import ConfigError, closest

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


_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_LONE_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{(.*)\}", re.DOTALL)


def last_answer_tag(text: str) -> str | None:
    """The content of the last complete ``<answer>...</answer>`` outside code blocks, stripped.

    An unclosed tag (truncated output) does not count; an empty one is skipped. A content that
    is itself one ``\\boxed{x}`` gives ``x``.
    """
    for match in reversed(list(_ANSWER_TAG.finditer(strip_code_blocks(text)))):
        content = match.group(1).strip()
        if not content:
            continue
        box = _LONE_BOX.fullmatch(content)
        if box is not None and last_boxed(content) == box.group(1).strip():
            return box.group(1).strip()
        return content
    return None


@dataclass(frozen=True)
class AnswerFormat:
    """How a response states its final answer.

    ``extract(text)`` returns the answer or None; ``instruction`` is the plain text (no format
    braces) the default prompt uses to ask for it (see :mod:`simpletir.core.prompts`).
    """

    name: str
    extract: Callable[[str], str | None]
    instruction: str
    description: str = ""


ANSWER_FORMATS: dict[str, AnswerFormat] = {
    "boxed": AnswerFormat(
        "boxed",
        last_boxed,
        "The last part of your response should be in the following format:\n"
        "\\boxed{'The final answer goes here.'}\n",
        "the last complete \\boxed{...} outside code blocks (SimpleTIR's)",
    ),
    "answer_tag": AnswerFormat(
        "answer_tag",
        last_answer_tag,
        "The last part of your response should be in the following format:\n"
        "<answer>The final answer goes here.</answer>\n",
        "the last complete <answer>...</answer> outside code blocks",
    ),
}


def answer_format(name: str) -> AnswerFormat:
    """The answer format called ``name``; a :class:`ConfigError` naming the key otherwise."""
    try:
        return ANSWER_FORMATS[name]
    except KeyError:
        raise ConfigError(
            f"rollout.answer_format={name!r} is not an answer format "
            f"(choose from {', '.join(ANSWER_FORMATS)}){closest(name, ANSWER_FORMATS)}"
        ) from None
