"""Errors a user can act on. Each names the file, key or value at fault.

The CLI prints ``SimpletirError`` subclasses as one clear message (no traceback) and exits 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable


class SimpletirError(Exception):
    """Base of every error that is the user's input, not a bug."""


class ConfigError(SimpletirError):
    """A config file, key, value or override is wrong."""


class PluginError(SimpletirError):
    """A plugin failed to load, collides with another, or a chosen name does not exist."""


class DataError(SimpletirError):
    """A dataset is missing or does not have the expected schema."""


class StageUnavailableError(SimpletirError):
    """A run needs a stage (trainer backend, engine...) this installation does not provide yet."""


class ModelNotFoundError(SimpletirError):
    """A model name resolves to nothing loadable here (offline hub, missing folder)."""


class SandboxUnavailableError(SimpletirError):
    """The sandbox cannot run on this machine (no namespaces, no nsjail); says how to fix it."""


def closest(name: str, candidates: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest candidate, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def print_warning(message: str) -> None:
    """``simpletir: warning: ...`` on stderr: something the user should know that stops nothing."""
    print(f"simpletir: warning: {message}", file=sys.stderr)


class ComponentLost(Exception):
    """A component's worker died mid-call (a Ray engine replica or sandbox pool actor).

    Not the user's fault and not the call's: whoever raises it has arranged for the worker to come
    back (Ray restarts the actor), so the work that was in flight can be redone. The rollout loop
    restarts the trajectory from its first turn (``rollout.max_trajectory_retries``); a tool call
    that raises it is not turned into a failed tool result.
    """
