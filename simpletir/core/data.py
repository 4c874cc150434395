"""Data layer: SimpleTIR's parquet schema, read as-is, and where dataset files live.

SimpleTIR (and verl) store one problem per row::

    data_source: str
    prompt: list[{role, content}]          # the chat, without SimpleTIR's instruction prefix
    reward_model: {ground_truth: str, style: "rule"}
    extra_info: {index: int, split: str, ...}

Any further columns (``solution``, ``subject``, ``id``...) are kept in ``Problem.meta``.
A dataset name such as ``deepscaler/aime`` is the file ``<data_dir>/deepscaler/aime.parquet``.
Benchmark plugins map their own names and aliases onto these files; this module knows only paths.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from simpletir.core.errors import DataError
from simpletir.core.types import Message, Problem

DATA_DIR_ENV = "SIMPLETIR_DATA_DIR"
REQUIRED_COLUMNS = ("prompt", "reward_model")
_VALID_ROLES = {"system", "user", "assistant", "tool"}
# Columns consumed into Problem fields; everything else goes to meta.
_CONSUMED_COLUMNS = {"prompt", "reward_model", "data_source", "extra_info"}


def _repo_root() -> Path:
    """The checkout root when simpletir runs from source (editable install); used for fallbacks."""
    return Path(__file__).resolve().parents[2]


def data_dir_candidates(explicit: str | None) -> list[tuple[str, Path]]:
    """Where a data directory is looked for, in order, each with the reason it is looked at.

    The config's ``data_dir`` wins, then ``$SIMPLETIR_DATA_DIR``; when neither is set, a ``data``
    folder in the working directory and the project's shared snapshot (``../shared/data``
    beside a source checkout) are tried, so a fresh clone next to the shared data just works.
    """
    if explicit:
        return [("config data_dir", Path(explicit).expanduser())]
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return [(f"${DATA_DIR_ENV}", Path(env).expanduser())]
    return [
        ("./data", Path.cwd() / "data"),
        ("../shared/data beside the checkout", _repo_root().parent / "shared" / "data"),
    ]


def resolve_data_dir(explicit: str | None) -> Path | None:
    """The data directory to use, or None when no candidate exists.

    An explicit ``data_dir`` (or ``$SIMPLETIR_DATA_DIR``) that does not exist is an error: the
    user named it, so silently falling back would read the wrong data.
    """
    candidates = data_dir_candidates(explicit)
    if explicit or os.environ.get(DATA_DIR_ENV):
        label, path = candidates[0]
        if not path.is_dir():
            raise DataError(f"data directory {str(path)!r} (from {label}) does not exist")
        return path
    for _label, path in candidates:
        if path.is_dir():
            return path
    return None


def describe_data_dir_search(explicit: str | None) -> str:
    """One line saying which places were looked at, for error messages."""
    looked = ", ".join(f"{label} = {str(path)!r}" for label, path in data_dir_candidates(explicit))
    return f"looked at: {looked}; set data_dir in the config or ${DATA_DIR_ENV}"


def dataset_path(data_dir: Path, name: str) -> Path:
    """``deepscaler/aime`` -> ``<data_dir>/deepscaler/aime.parquet`` (a ``.parquet`` suffix is optional)."""
    clean = name.strip().strip("/")
    if not clean or ".." in Path(clean).parts:
        raise DataError(f"dataset name {name!r} is not a relative path like 'deepscaler/aime'")
    if clean.endswith(".parquet"):
        clean = clean[: -len(".parquet")]
    return data_dir / f"{clean}.parquet"


def _messages(raw: Any, path: Path, row: int) -> tuple[Message, ...]:
    if isinstance(raw, str):  # some exports store a bare question; treat it as one user turn
        return (Message("user", raw),)
    if not isinstance(raw, Sequence) or not raw:
        raise DataError(f"{path}: row {row}: 'prompt' must be a non-empty list of {{role, content}}")
    messages = []
    for item in raw:
        if not isinstance(item, Mapping) or "role" not in item or "content" not in item:
            raise DataError(
                f"{path}: row {row}: each 'prompt' entry needs 'role' and 'content', got {item!r}"
            )
        role = str(item["role"])
        if role not in _VALID_ROLES:
            raise DataError(
                f"{path}: row {row}: unknown prompt role {role!r} (expected {sorted(_VALID_ROLES)})"
            )
        messages.append(Message(role, str(item["content"])))  # type: ignore[arg-type]
    return tuple(messages)


def _ground_truth(raw: Any, path: Path, row: int) -> str:
    if not isinstance(raw, Mapping) or raw.get("ground_truth") is None:
        raise DataError(f"{path}: row {row}: 'reward_model.ground_truth' is missing")
    value = raw["ground_truth"]
    # Kept verbatim (AIME's "025" stays "025"): normalisation is the reward's job.
    return value if isinstance(value, str) else str(value)


def read_parquet_problems(path: Path, benchmark: str) -> list[Problem]:
    """Read a SimpleTIR-schema parquet file into problems, in file order.

    ``Problem.id`` is ``extra_info.index`` when present, else the row number; ``meta`` holds
    ``extra_info`` and any extra columns. Raises :class:`DataError` naming the file and the
    missing column or bad row.
    """
    import pyarrow.parquet as pq  # heavy-ish import, only when data is actually read

    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset file {str(path)!r} does not exist")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path}: not a readable parquet file ({exc})") from exc
    missing = [column for column in REQUIRED_COLUMNS if column not in table.column_names]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing}; SimpleTIR's schema needs {list(REQUIRED_COLUMNS)} "
            f"(found {table.column_names})"
        )
    problems: list[Problem] = []
    seen: set[str] = set()
    for row, record in enumerate(table.to_pylist()):
        extra_info = record.get("extra_info") or {}
        if not isinstance(extra_info, Mapping):
            extra_info = {"value": extra_info}
        index = extra_info.get("index")
        problem_id = str(index) if index is not None else str(row)
        if problem_id in seen:  # ids must be unique within a benchmark: fall back to the row
            problem_id = f"row{row}"
        seen.add(problem_id)
        meta = {key: value for key, value in record.items() if key not in _CONSUMED_COLUMNS}
        meta["extra_info"] = dict(extra_info)
        problems.append(
            Problem(
                id=problem_id,
                benchmark=benchmark,
                messages=_messages(record["prompt"], path, row),
                ground_truth=_ground_truth(record["reward_model"], path, row),
                data_source=str(record.get("data_source") or ""),
                meta=meta,
            )
        )
    return problems


def sample_problems(problems: Sequence[Problem], limit: int | None, seed: int) -> list[Problem]:
    """A seeded sample of ``limit`` problems, kept in their original order.

    ``None`` or a negative limit (the seed's ``val_sample_size=-1``) or one at least the size
    of the set returns every problem. The same seed always picks the same problems.
    """
    if limit is None or limit < 0 or limit >= len(problems):
        return list(problems)
    chosen = sorted(random.Random(seed).sample(range(len(problems)), limit))
    return [problems[i] for i in chosen]
