"""simpletir: plugin-extensible RL for multi-turn tool-integrated reasoning."""

from simpletir.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["__version__", "hookimpl"]
