"""The config reference, generated from the schema (so docs cannot drift from code).

``python -m simpletir.core.config_docs docs/config.md`` rewrites the reference block of that
file between the markers below; a test fails when the block is stale. ``simpletir config show
--help-fields`` prints the plain-text form, followed by the options of every installed
component (``plugin_config.<name>.<option>``, from each plugin's ``config_cls``).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simpletir.core.config import ExperimentConfig
from simpletir.core.fileio import atomic_write_text

if TYPE_CHECKING:
    from simpletir.core.plugins import Registry

BEGIN = "<!-- BEGIN GENERATED: python -m simpletir.core.config_docs docs/config.md -->"
END = "<!-- END GENERATED -->"


@dataclasses.dataclass(frozen=True)
class FieldDoc:
    key: str
    type: str
    default: Any
    help: str
    section: str  # "" for top-level keys, else the section name


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def iter_fields(cls: type = ExperimentConfig, prefix: str = "", section: str = "") -> Iterator[FieldDoc]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            yield from iter_fields(tp, f"{prefix}{f.name}.", f.name)
            continue
        default: Any = f.default
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        yield FieldDoc(f"{prefix}{f.name}", _type_name(tp), default, f.metadata.get("help", ""), section)


def _short(value: Any, limit: int = 40) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 4] + '..."'


def fields_text() -> str:
    return "\n".join(f"{d.key}  ({d.type}, default {_short(d.default)})\n    {d.help}" for d in iter_fields())


@dataclasses.dataclass(frozen=True)
class PluginFieldDoc:
    """One option of an installed component: ``plugin_config.<name>.<option>``."""

    kind: str
    name: str
    option: str
    type: str
    default: Any
    help: str
    distribution: str


def iter_plugin_fields(registry: Registry) -> Iterator[PluginFieldDoc | tuple[str, str, str]]:
    """Each installed component's options; ``(kind, name, distribution)`` for one with none."""
    for entry in registry.all():
        cls = entry.spec.config_cls
        fields = dataclasses.fields(cls) if dataclasses.is_dataclass(cls) else ()
        if not fields:
            yield (entry.spec.kind, entry.spec.name, entry.distribution)
            continue
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # a plugin's unresolvable annotation: show it as written
            hints = {}
        for f in fields:
            default: Any = f.default
            if f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            elif f.default is dataclasses.MISSING:
                default = "(required)"
            yield PluginFieldDoc(
                kind=entry.spec.kind,
                name=entry.spec.name,
                option=f.name,
                type=_type_name(hints.get(f.name, f.type)),
                default=default,
                help=f.metadata.get("help", ""),
                distribution=entry.distribution,
            )


def plugin_fields_text(registry: Registry) -> str:
    """``--help-fields``' second part: every installed component's options (kind, name, option,
    type, default, help)."""
    lines = ["", "# plugin options, under plugin_config.<name> (every installed component)"]
    for doc in iter_plugin_fields(registry):
        if isinstance(doc, tuple):
            kind, name, distribution = doc
            lines.append(f"plugin_config.{name}  (no options; {kind} {name!r} from {distribution})")
            continue
        owner = f"{doc.kind} {doc.name!r} from {doc.distribution}"
        lines.append(
            f"plugin_config.{doc.name}.{doc.option}  ({doc.type}, default {_short(doc.default)}; {owner})\n"
            f"    {doc.help or '(no help string)'}"
        )
    return "\n".join(lines)


def fields_markdown() -> str:
    lines: list[str] = []
    current = None
    for doc in iter_fields():
        if doc.section != current:
            current = doc.section
            title = "Top-level keys (the seed's flags)" if not current else f"`{current}` section"
            lines += [
                "",
                f"### {title}",
                "",
                "| key | type | default | meaning |",
                "|---|---|---|---|",
            ]
        cells = [f"`{doc.key}`", doc.type, f"`{_short(doc.default)}`", doc.help]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines).strip("\n") + "\n"


def render_into(text: str) -> str:
    """``text`` with the generated block between BEGIN and END replaced."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"markers {BEGIN!r} / {END!r} not found")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{fields_markdown()}{END}{tail}"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m simpletir.core.config_docs docs/config.md", file=sys.stderr)
        return 2
    path = Path(argv[0])
    atomic_write_text(path, render_into(path.read_text(encoding="utf-8")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
