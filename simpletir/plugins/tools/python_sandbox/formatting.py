"""What the model sees: finding the code in a turn and turning a result into an observation.

SimpleTIR's semantics (confirmed from its source) are the defaults: the code block regex
```` ```(?:py|python)?\\n(.*?)\\n``` ````, the last complete block of the turn is the call, output
longer than 512 characters keeps the first and last 256, and the observation appended to the
trajectory is ``\\nCode execution result: <output>\\n``. Where SimpleTIR replaces the whole
output with the last line of stderr (which hides what the code printed), the default here shows
stdout and then stderr, each truncated; ``stderr_policy: last_line`` restores SimpleTIR's rule.
"""

from __future__ import annotations

import re
from functools import lru_cache

from simpletir.core.types import ToolResult

from .config import DEFAULT_CODE_PATTERN, SandboxConfig


@lru_cache(maxsize=32)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.DOTALL)


def find_code(text: str, pattern: str) -> str | None:
    """The code of the last *complete* block in ``text`` (an unclosed block does not count)."""
    last = None
    for match in _compiled(pattern).finditer(text):
        last = match
    return None if last is None else last.group(1)


_OPENING = re.compile(r"```[\w+-]*\n")


def ends_inside_block(text: str, pattern: str = DEFAULT_CODE_PATTERN) -> bool:
    """True when ``text`` ends inside an opened, unclosed fence: an opening fence (```` ``` ````
    plus an optional tag and a newline) after the last complete block that ``pattern`` finds.

    A stop string such as ``"```\\n"`` also matches a bare *opening* fence; a rollout that
    stopped there should keep generating instead of treating the turn as void. Agrees with
    :func:`find_code`: fences inside a complete block's code, or opened mid-line, count as
    that block's."""
    end = 0
    for match in _compiled(pattern).finditer(text):
        end = match.end()
    return _OPENING.search(text, end) is not None


def truncate(text: str, cfg: SandboxConfig) -> str:
    """Keep the first ``keep_head`` and last ``keep_tail`` characters of text over ``max_chars``."""
    if not cfg.max_chars or len(text) <= cfg.max_chars:
        return text
    head = text[: cfg.keep_head]
    tail = text[len(text) - cfg.keep_tail :] if cfg.keep_tail else ""
    omitted = len(text) - len(head) - len(tail)
    return head + cfg.truncation_note.format(omitted=omitted) + tail


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def output_text(result: ToolResult, cfg: SandboxConfig) -> str:
    """The ``<output>`` part of the observation, after the stderr policy and truncation."""
    stdout = result.stdout
    stderr = result.stderr if cfg.stderr_policy != "stdout_only" else ""
    if result.timed_out:
        note = cfg.timeout_message.format(timeout_s=_timeout_of(result, cfg))
        stderr = f"{stderr.rstrip()}\n{note}" if stderr.strip() else note
    if cfg.stderr_policy == "last_line" and stderr.strip():
        # SimpleTIR: the error's last line replaces everything the code printed.
        text = truncate(_last_line(stderr), cfg)
    else:
        parts = [truncate(part, cfg) for part in (stdout, stderr) if part]
        text = "".join(
            p if i == len(parts) - 1 or p.endswith("\n") else p + "\n" for i, p in enumerate(parts)
        )
    return text if text else cfg.empty_output


def _timeout_of(result: ToolResult, cfg: SandboxConfig) -> float:
    # A per-call timeout is not stored in the result; the run's duration, to 2 digits, is it.
    return float(f"{result.duration_ms / 1000.0:.2g}") if result.duration_ms else cfg.timeout_s


def observation(result: ToolResult, cfg: SandboxConfig) -> str:
    """The text appended to the trajectory after the turn."""
    return cfg.observation_template.format(output=output_text(result, cfg))
