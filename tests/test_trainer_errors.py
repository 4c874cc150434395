"""Bad training input fails in one line (exit 2 from the CLI), before any model is loaded;
a full disk at checkpoint time stops the run with the previous checkpoint intact."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
from _trainer_helpers import tiny_overrides

from simpletir.cli import run_main
from simpletir.core.config_load import load_config
from simpletir.core.errors import ConfigError
from simpletir.core.loggers import read_metrics


@pytest.fixture
def no_heavy_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a run gets as far as resolving the model or building an engine/backend."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("heavy work started before the input was checked")

    import simpletir.core.backend
    import simpletir.core.rollout
    import simpletir.core.rollout.models

    monkeypatch.setattr(simpletir.core.backend, "build_backend", refuse)
    monkeypatch.setattr(simpletir.core.rollout, "build_engine", refuse)
    monkeypatch.setattr(simpletir.core.rollout.models, "resolve_model", refuse)


def cli_error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    """Run ``simpletir-run`` in-process; it must exit 2 with one ``simpletir: error:`` line."""
    assert run_main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("simpletir: error:")]
    assert len(errors) == 1, err
    assert err.rstrip("\n").endswith(errors[0])  # the last thing printed
    return errors[0]


def test_total_training_steps_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    overrides = tiny_overrides(tmp_path, "zero", total_training_steps=0)
    with pytest.raises(ConfigError, match=r"total_training_steps .*got 0"):
        load_config(None, overrides)
    line = cli_error(capsys, overrides)
    assert "total_training_steps" in line
    assert not (tmp_path / "runs").exists()  # refused before a run directory was made


def test_mini_batch_size_must_divide_train_batch_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides = tiny_overrides(tmp_path, "mini", train_batch_size=6, **{"algorithm.ppo_mini_batch_size": 4})
    with pytest.raises(ConfigError, match=r"algorithm\.ppo_mini_batch_size=4 .*train_batch_size=6"):
        load_config(None, overrides)
    cli_error(capsys, overrides)
    # dividing, or larger than the batch (one mini-batch), is fine
    load_config(
        None, tiny_overrides(tmp_path, "ok", train_batch_size=6, **{"algorithm.ppo_mini_batch_size": 3})
    )
    load_config(
        None, tiny_overrides(tmp_path, "ok", train_batch_size=6, **{"algorithm.ppo_mini_batch_size": 8})
    )


def test_train_batch_larger_than_the_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_heavy_work: None
) -> None:
    overrides = tiny_overrides(
        tmp_path,
        "big",
        train_batch_size=8,
        **{"plugin_config.arith_train.size": 4, "algorithm.ppo_mini_batch_size": 8},
    )
    line = cli_error(capsys, overrides)
    assert "train_batch_size=8 is larger than the training set (4 problems" in line
    assert "arith_train" in line


def test_a_full_disk_at_checkpoint_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from simpletir.core.backend.hf import HFBackend

    real_save = HFBackend.save
    calls: list[Path] = []

    def save(self: HFBackend, folder: Path) -> None:
        calls.append(folder)
        if len(calls) == 1:
            real_save(self, folder)
            return
        (folder / "model").mkdir()
        (folder / "model" / "model.safetensors").write_bytes(b"the first megabytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(HFBackend, "save", save)
    line = cli_error(capsys, tiny_overrides(tmp_path, "full", total_training_steps=3))
    assert "disk full" in line and "epoch_2" in line and "epoch_1 is intact" in line
    root = tmp_path / "checkpoints" / "full"
    assert len(calls) == 2 and calls[1].parent == root and calls[1].name.startswith(".epoch_2.tmp-")
    assert sorted(p.name for p in root.iterdir()) == ["epoch_1", "latest"]  # no temporary folder left
    assert (root / "latest").read_text() == "epoch_1\n"
    assert (root / "epoch_1" / "trainer_state.json").is_file()
    assert any((root / "epoch_1" / "model").glob("*.safetensors"))
    records = read_metrics(tmp_path / "runs" / "full" / "metrics.jsonl")
    assert [r["step"] for r in records if r["phase"] == "train"] == [1]  # step 2 was never reported
