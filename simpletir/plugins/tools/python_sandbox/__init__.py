"""The ``python`` tool plugin: SimpleTIR's code interpreter, run in an nsjail warm pool.

Registered through the ``simpletir`` entry-point group like any third-party plugin. Options live
under ``plugin_config.python`` (see :class:`.config.SandboxConfig` and docs/sandbox.md).
"""

from __future__ import annotations

from collections.abc import Iterable

from simpletir import hookimpl
from simpletir.core.specs import ToolSpec

from .config import SandboxConfig
from .tool import PythonTool, build

__all__ = ["PythonTool", "SandboxConfig", "register_tools"]


@hookimpl
def register_tools() -> Iterable[ToolSpec]:
    return [
        ToolSpec(
            name="python",
            factory=build,
            config_cls=SandboxConfig,
            description="runs the last fenced Python block of a turn in an nsjail sandbox (warm pool)",
        )
    ]
