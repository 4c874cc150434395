"""Benchmark plugins: names, aliases, the shared parquet files, sampling, missing data, the hub path."""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from simpletir.core.config import ExperimentConfig
from simpletir.core.errors import DataError
from simpletir.core.plugins import make_plugin_manager
from simpletir.plugins.benchmarks.arith import ArithOptions, make_problems
from simpletir.plugins.benchmarks.parquet import BenchmarkOptions, ParquetBenchmark, problems_from_rows


def _load(
    name: str, data_dir: Path | None, plugin_config: dict[str, Any] | None = None, **kw: Any
) -> list[Any]:
    pm = make_plugin_manager()
    spec = pm.registry().benchmark(name)
    config = ExperimentConfig(plugin_config=plugin_config or {})
    return pm.build("benchmark", spec.name, config).load(data_dir, **kw)


@pytest.mark.parametrize(
    ("name", "alias", "rows", "split"),
    [
        ("aime24", "deepscaler/aime", 30, "test"),
        ("aime25", "deepscaler/aime25", 30, "test"),
        ("math500", "simplelr_math_35/test", 500, "test"),
        ("simplelr_train", "simplelr_math_35/train", 8523, "train"),
    ],
)
def test_benchmarks_read_the_shared_files(
    shared_data_dir: Path, name: str, alias: str, rows: int, split: str
) -> None:
    registry = make_plugin_manager().registry()
    assert registry.benchmark(alias).name == name
    assert registry.benchmark(name).split == split
    problems = _load(alias, shared_data_dir)
    assert len(problems) == rows
    assert all(p.benchmark == name for p in problems)
    assert len({p.id for p in problems}) == rows
    assert all(p.question for p in problems)
    # The snapshot's training set has two rows without a ground truth (kept: the reward then
    # reports them as gold parse errors instead of the loader dropping rows silently).
    empty = sorted(p.id for p in problems if not p.ground_truth)
    assert empty == (["5054", "5158"] if name == "simplelr_train" else [])


def test_aime_keeps_leading_zeros_verbatim(shared_data_dir: Path) -> None:
    golds = [p.ground_truth for p in _load("aime24", shared_data_dir)]
    assert any(g.startswith("0") for g in golds), golds  # normalising is the reward's job


def test_seeded_subsample_is_stable_and_ordered(shared_data_dir: Path) -> None:
    first = [p.id for p in _load("math500", shared_data_dir, limit=20, seed=3)]
    again = [p.id for p in _load("math500", shared_data_dir, limit=20, seed=3)]
    other = [p.id for p in _load("math500", shared_data_dir, limit=20, seed=4)]
    assert first == again and len(first) == 20 and first != other
    everything = [p.id for p in _load("math500", shared_data_dir)]
    assert first == [i for i in everything if i in set(first)]  # original order kept


def test_missing_file_says_where_it_looked_and_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        _load("deepscaler/train", tmp_path)
    message = str(err.value)
    assert str(tmp_path / "deepscaler" / "train.parquet") in message
    assert "data_dir" in message and "SIMPLETIR_DATA_DIR" in message
    assert "source=hub" in message and "agentica-org/DeepScaleR-Preview-Dataset" in message


def test_no_data_dir_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError, match="no data directory was found"):
        _load("aime24", None)


def test_explicit_path_option(shared_data_dir: Path, tmp_path: Path) -> None:
    path = shared_data_dir / "deepscaler" / "aime25.parquet"
    problems = _load("aime24", tmp_path, {"aime24": {"path": str(path)}})
    assert len(problems) == 30 and problems[0].benchmark == "aime24"
    with pytest.raises(DataError, match=r"plugin_config\.aime24\.path"):
        _load("aime24", tmp_path, {"aime24": {"path": str(tmp_path / "nope.parquet")}})


def test_arith_is_generated_deterministically() -> None:
    problems = make_problems(ArithOptions(size=8, generator_seed=1))
    assert problems == make_problems(ArithOptions(size=8, generator_seed=1))
    for p in problems:
        assert int(p.ground_truth) == eval(p.meta["expression"])  # the gold is the expression's value
    assert len(_load("arith", None, limit=3)) == 3


# -- the hub path -----------------------------------------------------------------------------


def test_plain_rows_become_problems() -> None:
    rows = [
        {"id": "a1", "problem": "What is 1+1?", "answer": " 2 ", "year": 2024},
        {"problem": "What is 2+2?", "answer": 4},
    ]
    problems = problems_from_rows(rows, "aime24", BenchmarkOptions(), source="some/hub-id")
    assert [p.id for p in problems] == ["a1", "1"]
    assert [p.ground_truth for p in problems] == ["2", "4"]
    assert problems[0].question == "What is 1+1?" and problems[0].meta == {"id": "a1", "year": 2024}
    with pytest.raises(DataError, match="question_field"):
        problems_from_rows([{"question": "q", "answer": "1"}], "aime24", BenchmarkOptions(), source="x")


def test_hub_without_datasets_installed_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_datasets(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "datasets":
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    bench = ParquetBenchmark("aime24", "deepscaler/aime", BenchmarkOptions(source="hub", hub_dataset="x/y"))
    with pytest.raises(DataError, match="pip install datasets"):
        bench.load(None)


def test_hub_path_on_a_local_file(tmp_path: Path) -> None:
    """The source=hub code path end to end through `datasets`, on a local parquet file."""
    pytest.importorskip("datasets", reason="the `datasets` package is not installed (optional)")
    path = tmp_path / "hub.parquet"
    pq.write_table(pa.table({"problem": ["What is 3*3?", "What is 2^5?"], "answer": ["9", "32"]}), path)
    options = {"aime24": {"source": "hub", "hub_dataset": str(path)}}
    problems = _load("aime24", None, options)
    assert [(p.question, p.ground_truth) for p in problems] == [("What is 3*3?", "9"), ("What is 2^5?", "32")]


def test_hub_path_reads_simpletir_schema_rows(shared_data_dir: Path) -> None:
    """Hub rows already in SimpleTIR's schema are read exactly as the local parquet file is."""
    pytest.importorskip("datasets", reason="the `datasets` package is not installed (optional)")
    path = shared_data_dir / "deepscaler" / "aime25.parquet"
    via_hub = _load("aime25", None, {"aime25": {"source": "hub", "hub_dataset": str(path)}})
    local = _load("aime25", shared_data_dir)
    assert [(p.id, p.question, p.ground_truth) for p in via_hub] == [
        (p.id, p.question, p.ground_truth) for p in local
    ]
