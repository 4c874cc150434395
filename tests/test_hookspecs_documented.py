"""Every hook has a docstring, a docs section and a test (as datasette checks its own hooks)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from simpletir import hookspecs

REPO = Path(__file__).resolve().parents[1]
HOOKS = sorted(
    name
    for name, value in vars(hookspecs).items()
    if callable(value) and hasattr(value, f"{hookspecs.PROJECT_NAME}_spec")
)


def test_the_hook_list_is_not_empty() -> None:
    assert {
        "register_tools",
        "register_rewards",
        "register_filters",
        "register_benchmarks",
        "configure",
    } <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_docstring(hook: str) -> None:
    doc = getattr(hookspecs, hook).__doc__
    assert doc and len(doc.strip()) > 40, f"hookspec {hook} needs a docstring saying what it gets and returns"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_docs_section(hook: str) -> None:
    docs = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")
    assert re.search(rf"^###\s+`?{hook}\b", docs, re.MULTILINE), (
        f"docs/plugins.md lacks a '### {hook}' section"
    )


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook: str) -> None:
    # A hook counts as tested when a test module other than this one implements or calls it.
    here = Path(__file__).name
    sources = [p.read_text(encoding="utf-8") for p in (REPO / "tests").glob("test_*.py") if p.name != here]
    pattern = re.compile(rf"def {hook}\(|hook\.{hook}\b|{hook}=")
    assert any(pattern.search(text) for text in sources), f"no test implements or calls the {hook} hook"
