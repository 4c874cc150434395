"""Benchmarks read from SimpleTIR's parquet files, or (with network) from the Hugging Face hub.

A :class:`ParquetBenchmark` knows one data file (``deepscaler/aime`` is
``<data_dir>/deepscaler/aime.parquet``) and, optionally, a hub dataset with the same problems.
``plugin_config.<benchmark>`` chooses between them:

- ``source: local`` (default): the parquet file under the data dir, or ``path`` when given;
- ``source: hub``: ``datasets.load_dataset(hub_dataset, split=hub_split)``. Rows in SimpleTIR's
  schema (``prompt``, ``reward_model``) are read as such; other rows need a question and an
  answer column (``question_field`` / ``answer_field``). ``hub_dataset`` may also be a local
  ``.parquet`` / ``.json`` / ``.jsonl`` / ``.csv`` file, read through ``datasets`` the same way.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from simpletir.core.config import ExperimentConfig
from simpletir.core.data import dataset_path, describe_data_dir_search, read_parquet_problems, sample_problems
from simpletir.core.errors import DataError
from simpletir.core.specs import option
from simpletir.core.types import Message, Problem

SIMPLETIR_DATA_HINT = (
    "get SimpleTIR's parquet files (the datasets/ folder of the public SimpleTIR repository) into a "
    "folder and point data_dir (or $SIMPLETIR_DATA_DIR) at it"
)
_LOCAL_FORMATS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}


@dataclass
class BenchmarkOptions:
    """``plugin_config.<benchmark>``: where a file-backed benchmark reads its problems."""

    source: Literal["local", "hub"] = option(
        "local", "local: parquet under data_dir; hub: datasets.load_dataset"
    )
    path: str | None = option(None, "explicit parquet file (overrides <data_dir>/<file>.parquet)")
    hub_dataset: str | None = option(
        None, "hub id or local file for source=hub (None = the benchmark's default)"
    )
    hub_split: str | None = option(None, "split for source=hub (None = the benchmark's default)")
    question_field: str = option("problem", "question column of hub rows not in SimpleTIR's schema")
    answer_field: str = option("answer", "answer column of hub rows not in SimpleTIR's schema")


@dataclass(frozen=True)
class HubSource:
    """The hub dataset holding the same problems as a parquet file (None where there is none)."""

    dataset: str
    split: str


class ParquetBenchmark:
    """One benchmark: ``load()`` returns its problems in file order (a seeded sample with ``limit``)."""

    def __init__(
        self,
        name: str,
        data_file: str,
        options: BenchmarkOptions,
        *,
        hub: HubSource | None = None,
        config_data_dir: str | None = None,
    ) -> None:
        self.name = name
        self.data_file = data_file
        self.options = options
        self.hub = hub
        self._config_data_dir = config_data_dir

    def load(self, data_dir: Path | None, *, limit: int | None = None, seed: int = 0) -> list[Problem]:
        problems = self._load_hub() if self.options.source == "hub" else self._load_local(data_dir)
        if not problems:
            raise DataError(f"benchmark {self.name!r}: its data holds no problems")
        return sample_problems(problems, limit, seed)

    # -- local parquet -----------------------------------------------------------------------
    def local_path(self, data_dir: Path | None) -> Path | None:
        if self.options.path:
            return Path(self.options.path).expanduser()
        return dataset_path(data_dir, self.data_file) if data_dir is not None else None

    def _load_local(self, data_dir: Path | None) -> list[Problem]:
        path = self.local_path(data_dir)
        if path is None or not path.is_file():
            raise DataError(self._missing_message(path))
        return read_parquet_problems(path, self.name)

    def _missing_message(self, path: Path | None) -> str:
        if self.options.path:
            where = f"plugin_config.{self.name}.path = {str(path)!r} does not exist"
        elif path is None:
            where = f"no data directory was found ({describe_data_dir_search(self._config_data_dir)})"
        else:
            where = f"{str(path)!r} does not exist ({describe_data_dir_search(self._config_data_dir)})"
        hub = (
            f"; or, with network and `pip install datasets`, set plugin_config.{self.name}.source=hub "
            f"to download {self.hub.dataset}"
            if self.hub is not None
            else ""
        )
        needs = f"benchmark {self.name!r} needs {self.data_file}.parquet"
        return f"{needs}: {where}. To get it, {SIMPLETIR_DATA_HINT}{hub}"

    # -- hub ---------------------------------------------------------------------------------
    def _load_hub(self) -> list[Problem]:
        dataset = self.options.hub_dataset or (self.hub.dataset if self.hub else None)
        split = self.options.hub_split or (self.hub.split if self.hub else "train")
        if not dataset:
            raise DataError(
                f"benchmark {self.name!r} has no default hub dataset: "
                f"set plugin_config.{self.name}.hub_dataset"
            )
        try:
            import datasets
        except ImportError as exc:
            raise DataError(
                f"benchmark {self.name!r}: source=hub needs the `datasets` package (pip install datasets); "
                f"or use the local parquet file ({SIMPLETIR_DATA_HINT})"
            ) from exc
        local = Path(dataset).expanduser()
        try:
            if local.is_file():
                fmt = _LOCAL_FORMATS.get(local.suffix.lower())
                if fmt is None:
                    raise DataError(
                        f"hub_dataset {dataset!r}: unknown file type (use {sorted(_LOCAL_FORMATS)})"
                    )
                loaded = datasets.load_dataset(fmt, data_files=str(local), split="train")
            else:
                loaded = datasets.load_dataset(dataset, split=split)
        except DataError:
            raise
        except Exception as exc:  # network, missing split, bad id: one clear message
            raise DataError(
                f"benchmark {self.name!r}: could not load {dataset!r} (split {split!r}) from the hub: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        columns = list(loaded.column_names)
        if "prompt" in columns and "reward_model" in columns:
            # SimpleTIR's schema: reuse the parquet reader so both paths agree on ids and meta.
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "hub.parquet"
                loaded.to_parquet(str(path))
                return read_parquet_problems(path, self.name)
        return problems_from_rows(loaded, self.name, self.options, source=dataset)


def problems_from_rows(
    rows: Iterable[Mapping[str, Any]], benchmark: str, options: BenchmarkOptions, *, source: str
) -> list[Problem]:
    """Problems from plain ``{question, answer, ...}`` rows (the hub's AIME / MATH-500 layout).

    The id is the row's ``id`` or ``unique_id`` when present, else its position; every other
    column goes to ``meta``.
    """
    problems: list[Problem] = []
    seen: set[str] = set()
    q_field, a_field = options.question_field, options.answer_field
    for row_number, row in enumerate(rows):
        missing = [name for name in (q_field, a_field) if row.get(name) is None]
        if missing:
            raise DataError(
                f"{source}: row {row_number} has no {missing} column(s) (found {sorted(row)}); set "
                f"plugin_config.{benchmark}.question_field / answer_field"
            )
        raw_id = row.get("id", row.get("unique_id"))
        problem_id = str(raw_id) if raw_id is not None else str(row_number)
        if problem_id in seen:
            problem_id = f"row{row_number}"
        seen.add(problem_id)
        problems.append(
            Problem(
                id=problem_id,
                benchmark=benchmark,
                messages=(Message("user", str(row[q_field])),),
                ground_truth=str(row[a_field]).strip(),
                data_source=source,
                meta={k: v for k, v in row.items() if k not in (q_field, a_field)},
            )
        )
    return problems


def parquet_factory(
    name: str, data_file: str, hub: HubSource | None
) -> Any:  # Callable[[BenchmarkOptions, ExperimentConfig], ParquetBenchmark]
    """The ``BenchmarkSpec.factory`` of one file-backed benchmark."""

    def factory(options: BenchmarkOptions, experiment: ExperimentConfig | None) -> ParquetBenchmark:
        data_dir = experiment.data_dir if experiment is not None else None
        return ParquetBenchmark(name, data_file, options, hub=hub, config_data_dir=data_dir)

    return factory
