"""``simpletir view RUN_DIR [RUN_DIR2] [-o report.html]``: one self-contained, offline HTML file.

The page (``page.css`` and ``page.js`` beside this module, inlined) needs no server and loads
nothing from the network. It holds an index (every set's problem table, the run's settings and
step metrics) as JSON, and each problem's samples as gzip-compressed, base64 JSON in a
``<script type="text/plain">`` element that the page decompresses (``DecompressionStream``) only
when the problem is opened. Tables are paginated (50 problems a page), so a 500-problem x
32-sample evaluation renders one page of rows and opens in about the time the browser takes to
read the file (docs/evaluation.md gives measured sizes and load times).
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import math
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from simpletir import __version__
from simpletir.core.errors import SimpletirError
from simpletir.core.fileio import atomic_writer
from simpletir.viewer.collect import RunData, read_run, set_summary


def _asset(name: str) -> str:
    return resources.files("simpletir.viewer").joinpath(name).read_text(encoding="utf-8")


def _script_json(value: Any) -> str:
    """JSON that is safe inside a <script> element (no ``</``, no HTML comment openers)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)
    return text.replace("<", "\\u003c")  # "<" only occurs inside JSON strings


def _finite(value: Any) -> Any:
    """NaN and infinities (a metric that was not measured) become null: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _packed(detail: dict[str, Any]) -> str:
    raw = json.dumps(_finite(detail), ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")
    return base64.b64encode(gzip.compress(raw, compresslevel=6, mtime=0)).decode("ascii")


def build_index(runs: Sequence[RunData]) -> dict[str, Any]:
    """The page's index: runs, their sets (with a global detail number ``d`` per row)."""
    number = 0
    out_runs = []
    for run in runs:
        sets = []
        for problem_set in run.sets:
            rows = []
            for row in problem_set.rows:
                rows.append({**row, "d": number})
                number += 1
            sets.append(
                {
                    "label": problem_set.label,
                    "kind": problem_set.kind,
                    "step": problem_set.step,
                    "notes": problem_set.notes,
                    "summary": set_summary(problem_set.rows),
                    "rows": rows,
                }
            )
        out_runs.append(
            {
                "name": run.name,
                "path": run.path,
                "kind": run.kind,
                "settings": run.settings,
                "steps": run.steps,
                "notes": run.notes,
                "sets": sets,
            }
        )
    return {
        "version": __version__,
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "runs": out_runs,
    }


def write_report(runs: Sequence[RunData], out: str | Path) -> Path:
    """Write the page for ``runs`` (one, or two side by side) to ``out``, atomically."""
    index = _finite(build_index(runs))
    title = "simpletir view: " + " vs ".join(r.name for r in runs)
    with atomic_writer(out) as page:
        page.write(
            "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            # The page may only use what it carries: a policy that forbids every fetch.
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
            "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">"
            f"<title>{_escape(title)}</title><style>{_asset('page.css')}</style></head><body>"
        )
        page.write(
            f"<header><h1>simpletir view</h1><span class='runs'>{_escape(' vs '.join(r.name for r in runs))}"
            f" | simpletir {__version__} | written {index['generated']}</span></header>"
            "<nav id='nav'></nav><main id='main'><noscript>This page needs JavaScript.</noscript></main>"
        )
        page.write(f"<script id='st-index' type='application/json'>{_script_json(index)}</script>\n")
        number = 0
        for run in runs:
            for problem_set in run.sets:
                for detail in problem_set.details:
                    page.write(f"<script type='text/plain' id='d-{number}'>{_packed(detail)}</script>\n")
                    number += 1
        page.write(f"<script>{_asset('page.js')}</script></body></html>\n")
    return Path(out)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&#39;")


def default_output(runs: Sequence[RunData]) -> Path:
    """``<logs>/<run>_view.html`` beside the run's other files (``..._vs_<run2>`` for two)."""
    first = Path(runs[0].path)
    from simpletir.viewer.collect import logs_dir_of, read_config

    logs = logs_dir_of(first, read_config(first / "config.yaml"))
    name = "_vs_".join(r.name for r in runs)
    return (logs if logs.is_dir() else first) / f"{name}_view.html"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="simpletir view",
        description="Write one self-contained HTML file (no server, no network) to browse a run's "
        "trajectories: per-set tables, each problem's samples turn by turn (code, sandbox output, "
        "answer, reward), the loss mask and log-probs of recorded training steps; two runs side by side.",
    )
    parser.add_argument(
        "runs", nargs="+", metavar="RUN_DIR", help="one run folder (runs/<name>), or two to compare"
    )
    parser.add_argument("-o", "--output", default=None, help="the HTML file (default logs/<run>_view.html)")
    parser.add_argument(
        "--samples",
        type=int,
        default=0,
        help="samples per problem in the detail view (0 = all; tables count all)",
    )
    parser.add_argument(
        "--steps", type=int, default=0, help="recorded training steps to include, the last N (0 = all)"
    )
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if len(args.runs) > 2:
        raise SimpletirError(f"simpletir view takes one run or two to compare, got {len(args.runs)}")
    runs = [read_run(r, max_samples=args.samples, max_steps=args.steps) for r in args.runs]
    out = write_report(runs, args.output or default_output(runs))
    size = out.stat().st_size
    print(f"wrote {out} ({size / 2**20:.1f} MiB): open it in a browser (file://{out.resolve()})")
    return 0
