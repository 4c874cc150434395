"""The evaluation journal: every finished problem group, on disk the moment it is finished.

``<run_dir>/eval_journal.jsonl`` holds a header line, then one line per finished group::

    {"journal": "simpletir-eval", "version": 1, "created": "...", "fingerprint": {...}}
    {"benchmark": "aime24", "problem_id": "3", "n": 32, "group": {<serialize.group_to_dict>}}

Each group line is written whole, flushed and fsynced before the rollout goes on, so a killed
evaluation loses at most the groups still generating. A last line cut by a kill (no newline, or
not JSON) is reported and cut off when the journal is reopened; a bad line *before* the last is
not something a kill makes, and stops the run (:class:`JournalError`).

The fingerprint records what decides the trajectories: model, ``n_val``, turns, tools and their
options, lengths, sampling, prompt, seed, and the problems themselves (a digest per benchmark).
Resuming under a different fingerprint is refused with the fields that differ. The reward is not
part of it: trajectories are journaled unscored and every group is scored at the end of the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from simpletir.core.config import ExperimentConfig
from simpletir.core.errors import ConfigError, SimpletirError
from simpletir.core.fileio import atomic_write_text
from simpletir.core.serialize import FORMAT_VERSION, group_from_dict, group_to_dict
from simpletir.core.types import Problem, TrajectoryGroup

JOURNAL_FILE = "eval_journal.jsonl"
MAGIC = "simpletir-eval"

GroupKey = tuple[str, str]  # (benchmark, problem id)


class JournalError(SimpletirError):
    """The journal cannot be used: a corrupt line, or one written under another configuration."""


def _problems_digest(problems: Sequence[Problem]) -> str:
    h = hashlib.sha256()
    for p in problems:
        record = [p.id, [[m.role, m.content] for m in p.messages], p.ground_truth, p.data_source]
        h.update(json.dumps(record, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def evaluation_fingerprint(
    config: ExperimentConfig, benchmarks: Mapping[str, Sequence[Problem]]
) -> dict[str, Any]:
    """What must be equal for journaled trajectories to belong to this evaluation (JSON values)."""
    r = config.rollout
    tools = list(config.tools) if config.tool_use else []
    fingerprint = {
        "model_name": config.model_name,
        "n_val": config.n_val,
        "max_turns": config.max_turns,
        "tool_use": config.tool_use,
        "tools": tools,
        "tool_options": {name: config.plugin_config.get(name, {}) for name in tools},
        "max_prompt_length": config.max_prompt_length,
        "max_response_length": config.max_response_length,
        "seed": config.seed,
        "sampling": {"temperature": r.val_temperature, "top_p": r.val_top_p, "top_k": r.val_top_k},
        "prompt": {
            "template": r.prompt_template,  # None: assembled from the tools above
            "chat_template": r.chat_template,
            "max_obs_tokens": r.max_obs_tokens,
            "answer_format": r.answer_format,
            "tools_timeout_s": r.tools_timeout_s,
        },
        "valid_dataset": list(benchmarks),
        "val_sample_size": config.val_sample_size,
        "problems": {
            name: {"count": len(ps), "sha256": _problems_digest(ps)} for name, ps in benchmarks.items()
        },
    }
    normalised: dict[str, Any] = json.loads(json.dumps(fingerprint, default=str))
    return normalised


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        flat: dict[str, Any] = {}
        for key, inner in value.items():
            flat.update(_flatten(inner, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): value}


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def fingerprint_differences(journal: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``["n_val: journal 4, now 2", ...]`` for every (dotted) field that differs."""
    old, new = _flatten(journal), _flatten(now)
    return [
        f"{key}: journal {_short(old.get(key))}, now {_short(new.get(key))}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]


def _note(message: str) -> None:
    print(f"simpletir: {message}", file=sys.stderr, flush=True)


class EvalJournal:
    """An open journal: the groups it already holds (``done``) and :meth:`append` for new ones."""

    def __init__(self, path: Path, handle: IO[bytes], done: dict[GroupKey, TrajectoryGroup]) -> None:
        self.path = path
        self.done = done
        self._handle = handle

    @classmethod
    def open(cls, path: str | Path, fingerprint: Mapping[str, Any], *, resume: bool) -> EvalJournal:
        """Open ``path`` for appending; read its groups when ``resume``.

        A journal found without ``resume`` is an error (a fresh run gets a fresh run directory;
        this one holds another evaluation's groups). A journal whose fingerprint differs from
        ``fingerprint`` is refused with every field that differs.
        """
        path = Path(path)
        done: dict[GroupKey, TrajectoryGroup] = {}
        good_bytes = 0
        if path.exists() and path.stat().st_size > 0:
            if not resume:
                raise ConfigError(
                    f"{path} already holds an evaluation journal; pass resume=true (or RESUME=True) to "
                    "continue it, or use another run directory"
                )
            header, done, good_bytes = _read(path, fingerprint)
            if header is None:
                _note(f"{path}: no complete header line; starting the journal afresh")
        if good_bytes == 0:
            header_line = {
                "journal": MAGIC,
                "version": FORMAT_VERSION,
                "created": datetime.now(UTC).isoformat(),
                "fingerprint": dict(fingerprint),
            }
            atomic_write_text(path, json.dumps(header_line, ensure_ascii=False) + "\n")
        else:
            with path.open("r+b") as handle:  # drop a torn last line before appending after it
                handle.truncate(good_bytes)
                handle.flush()
                os.fsync(handle.fileno())
        return cls(path, path.open("ab"), done)

    def append(self, benchmark: str, group: TrajectoryGroup) -> None:
        """Write one finished group as one line, flushed and fsynced before returning."""
        record = {
            "benchmark": benchmark,
            "problem_id": group.problem.id,
            "n": len(group.trajectories),
            "group": group_to_dict(group),
        }
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        self._handle.write(line.encode("utf-8"))
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.done[(benchmark, group.problem.id)] = group

    def close(self) -> None:
        self._handle.close()


def _read(
    path: Path, fingerprint: Mapping[str, Any]
) -> tuple[dict[str, Any] | None, dict[GroupKey, TrajectoryGroup], int]:
    """(header or None, groups by key, bytes of complete good lines) of an existing journal."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    # Every complete line ends with "\n": the piece after the last one is empty unless torn.
    complete, tail = lines[:-1], lines[-1]
    records: list[dict[str, Any]] = []
    good_bytes = 0
    for number, raw in enumerate(complete, start=1):
        try:
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            if number == len(complete) and not tail:  # a torn last line that happens to end "\n"
                tail = raw
                break
            raise JournalError(
                f"{path}, line {number}: not a journal record ({exc}); only a last line can be cut by a "
                "kill, so this file was changed by something else. Move it away to start over."
            ) from exc
        records.append(record)
        good_bytes += len(raw) + 1
    if tail:
        _note(
            f"{path}: ignoring a torn last line ({len(tail)} bytes, cut by a kill or a full disk while "
            "it was written); its group is rolled out again"
        )
    if not records:
        return None, {}, 0
    header = records[0]
    if header.get("journal") != MAGIC:
        raise JournalError(f"{path}: line 1 is not an evaluation journal header ({_short(header)})")
    if header.get("version") != FORMAT_VERSION:
        raise JournalError(
            f"{path}: journal format version {header.get('version')!r}; this simpletir reads {FORMAT_VERSION}"
        )
    differences = fingerprint_differences(header.get("fingerprint", {}), fingerprint)
    if differences:
        raise JournalError(
            f"cannot resume the evaluation from {path}: it was written under another configuration:\n  "
            + "\n  ".join(differences)
            + "\nRun with the journal's settings, or without resume (a fresh run directory), or move the "
            "journal away to start this run over."
        )
    done: dict[GroupKey, TrajectoryGroup] = {}
    for record in records[1:]:
        group = group_from_dict(record["group"])
        done[(record["benchmark"], record["problem_id"])] = group
    return header, done, good_bytes
