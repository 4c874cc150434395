"""The data layer reads SimpleTIR's parquet schema as-is and says clearly what is wrong."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from simpletir.core.data import (
    DATA_DIR_ENV,
    dataset_path,
    read_parquet_problems,
    resolve_data_dir,
    sample_problems,
)
from simpletir.core.errors import DataError


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _row(question: str, answer: str, index: int | None = None) -> dict:
    row = {
        "data_source": "unit",
        "prompt": [{"role": "user", "content": question}],
        "reward_model": {"ground_truth": answer, "style": "rule"},
        "ability": "math",
    }
    if index is not None:
        row["extra_info"] = {"index": index, "split": "test"}
    return row


def test_reads_aime_as_is(shared_data_dir: Path) -> None:
    problems = read_parquet_problems(dataset_path(shared_data_dir, "deepscaler/aime"), "aime24")
    assert len(problems) == 30
    first = problems[0]
    assert first.benchmark == "aime24"
    assert first.id == "0"
    assert first.ground_truth == "204"
    assert first.data_source == "deepscaler"
    assert first.messages[0].role == "user" and "Aya" in first.question
    assert first.meta["extra_info"]["split"] == "test"
    # leading zeros are kept verbatim: normalising answers is the reward's job
    assert any(p.ground_truth.startswith("0") for p in problems)
    assert len({p.id for p in problems}) == 30


def test_extra_columns_go_to_meta(shared_data_dir: Path) -> None:
    problems = read_parquet_problems(dataset_path(shared_data_dir, "simplelr_math_35/test"), "math500")
    assert len(problems) == 500
    assert {"solution", "subject", "unique_id"} <= set(problems[0].meta)
    assert problems[0].meta["extra_info"]["level"] == 2


def test_id_falls_back_to_row_number(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.parquet", [_row("1+1?", "2"), _row("2+2?", "4")])
    problems = read_parquet_problems(path, "x")
    assert [p.id for p in problems] == ["0", "1"]
    assert problems[1].ground_truth == "4"


def test_missing_column_names_file_and_column(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "bad.parquet", [{"data_source": "x", "prompt": [{"role": "user", "content": "q"}]}]
    )
    with pytest.raises(DataError, match=r"bad\.parquet.*reward_model"):
        read_parquet_problems(path, "bad")


def test_missing_ground_truth_names_row(tmp_path: Path) -> None:
    row = _row("q", "1")
    row["reward_model"] = {"ground_truth": None, "style": "rule"}
    path = _write(tmp_path / "gt.parquet", [row])
    with pytest.raises(DataError, match=r"gt\.parquet: row 0: 'reward_model.ground_truth'"):
        read_parquet_problems(path, "gt")


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_parquet_problems(tmp_path / "nope.parquet", "x")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(DataError, match=r"junk\.parquet: not a readable parquet"):
        read_parquet_problems(tmp_path / "junk.parquet", "x")


def test_dataset_path(tmp_path: Path) -> None:
    assert dataset_path(tmp_path, "deepscaler/aime") == tmp_path / "deepscaler" / "aime.parquet"
    assert dataset_path(tmp_path, "deepscaler/aime.parquet") == tmp_path / "deepscaler" / "aime.parquet"
    with pytest.raises(DataError, match="relative path"):
        dataset_path(tmp_path, "../etc/passwd")


def test_resolve_data_dir_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = tmp_path / "explicit"
    from_env = tmp_path / "env"
    explicit.mkdir()
    from_env.mkdir()
    monkeypatch.setenv(DATA_DIR_ENV, str(from_env))
    assert resolve_data_dir(str(explicit)) == explicit
    assert resolve_data_dir(None) == from_env
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(DataError, match=rf"missing.*\${DATA_DIR_ENV}"):
        resolve_data_dir(None)
    with pytest.raises(DataError, match="config data_dir"):
        resolve_data_dir(str(tmp_path / "nowhere"))


def test_resolve_data_dir_falls_back_to_cwd_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    assert resolve_data_dir(None) == tmp_path / "data"


def test_sample_is_seeded_stable_and_ordered(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.parquet", [_row(f"q{i}", str(i), index=i) for i in range(20)])
    problems = read_parquet_problems(path, "s")
    a = sample_problems(problems, 5, seed=1)
    assert a == sample_problems(problems, 5, seed=1)
    assert [p.id for p in a] == sorted((p.id for p in a), key=int)  # original order kept
    assert len(a) == 5
    assert {p.id for p in a} != {p.id for p in sample_problems(problems, 5, seed=2)}
    assert sample_problems(problems, -1, seed=0) == problems
    assert sample_problems(problems, None, seed=0) == problems
    assert sample_problems(problems, 100, seed=0) == problems
