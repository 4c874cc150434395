"""Looking at runs: ``simpletir view`` (an offline HTML trajectory browser), ``simpletir plot``
(training curves as a PNG). Both only read a run's files; neither starts an engine or a sandbox."""

from __future__ import annotations

from pathlib import Path


def view_hint(run_dir: str | Path, logs_dir: str | Path, run_name: str) -> str:
    """The line a run ends with: how to look at what it did."""
    return f"simpletir view {run_dir}   (then open {Path(logs_dir) / f'{run_name}_view.html'} in a browser)"
