"""Option fields for config dataclasses: the core schema's and every plugin's ``config_cls``.

A leaf module (it imports nothing from simpletir), so the schema (:mod:`simpletir.core.config`),
the spec records (:mod:`simpletir.core.specs`, which re-exports both names) and plugins can all
use it without importing one another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["NoOptions", "option"]


def option(default: Any, help: str) -> Any:
    """A config dataclass field with a help string (``simpletir config show --help-fields``).

    Mutable defaults (lists, dicts) are wrapped in a factory, so instances never share them.
    Plugins use it for their ``config_cls`` fields as the core schema does.
    """
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class NoOptions:
    """Config class for a component that takes no options."""
