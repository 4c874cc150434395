"""Checkpoint folders: atomic writes, the ``latest`` pointer, keep-last-k, torn folders, a full disk."""

from __future__ import annotations

import dataclasses
import errno
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from simpletir.core.config import AlgorithmConfig, ExperimentConfig
from simpletir.core.errors import ConfigError
from simpletir.core.trainer import checkpoint as ckpt
from simpletir.core.trainer.checkpoint import (
    LATEST_FILE,
    STATE_FILE,
    CheckpointError,
    complete_checkpoints,
    find_latest,
    prune_checkpoints,
    save_checkpoint,
)


class FakeBackend:
    """Writes a small model folder and optimiser file; ``fail`` raises part-way through ``save``."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.fail = fail
        self.loaded: list[Path] = []
        self.saves = 0

    def save(self, folder: Path) -> None:
        self.saves += 1
        (folder / "model").mkdir()
        (folder / "model" / "model.safetensors").write_bytes(b"weights-%d" % self.saves)
        if self.fail is not None:
            raise self.fail
        (folder / "optimizer.pt").write_bytes(b"adam")

    def load(self, folder: Path) -> None:
        self.loaded.append(folder)


def save(root: Path, step: int, backend: Any = None, keep: int = 2) -> Path:
    return save_checkpoint(root, step, backend or FakeBackend(), {"step": step}, keep=keep)


def steps(root: Path) -> list[int]:
    return [int(p.name.split("_")[1]) for p in complete_checkpoints(root)]


def hidden(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def test_save_writes_a_complete_folder_and_points_latest_at_it(tmp_path: Path) -> None:
    folder = save(tmp_path, 3)
    assert folder == tmp_path / "epoch_3"
    assert (tmp_path / LATEST_FILE).read_text() == "epoch_3\n"
    assert json.loads((folder / STATE_FILE).read_text()) == {"step": 3}
    assert (folder / "model" / "model.safetensors").is_file() and (folder / "optimizer.pt").is_file()
    assert (folder / ckpt.RNG_FILE).is_file()
    assert find_latest(tmp_path) == folder
    assert hidden(tmp_path) == []  # no temporary folder or file left


def test_keep_checkpoints_prunes_the_oldest(tmp_path: Path) -> None:
    for step in range(1, 6):
        save(tmp_path, step, keep=2)
        assert steps(tmp_path) == list(range(max(1, step - 1), step + 1))
        assert (tmp_path / LATEST_FILE).read_text().strip() == f"epoch_{step}"
    save(tmp_path, 6, keep=1)
    assert steps(tmp_path) == [6]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_6", "latest"]


def test_prune_never_removes_the_checkpoint_latest_names(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        save(tmp_path, step, keep=5)
    (tmp_path / LATEST_FILE).write_text("epoch_1\n")
    prune_checkpoints(tmp_path, keep=1)
    assert steps(tmp_path) == [1, 3]


def test_saving_a_step_again_replaces_it_whole(tmp_path: Path) -> None:
    first = save(tmp_path, 2)
    (first / "stale.txt").write_text("from the first attempt")
    again = save(tmp_path, 2, FakeBackend())
    assert again == first and not (again / "stale.txt").exists()
    assert steps(tmp_path) == [2] and hidden(tmp_path) == []


def test_find_latest_falls_back_when_the_pointer_is_lost_or_wrong(tmp_path: Path) -> None:
    assert find_latest(tmp_path) is None
    assert find_latest(tmp_path / "missing") is None
    save(tmp_path, 1)
    save(tmp_path, 2)
    (tmp_path / LATEST_FILE).unlink()
    assert find_latest(tmp_path) == tmp_path / "epoch_2"  # newest complete by step number
    (tmp_path / LATEST_FILE).write_text("epoch_7\n")  # names a folder that is not there
    assert find_latest(tmp_path) == tmp_path / "epoch_2"
    (tmp_path / LATEST_FILE).write_text("epoch_1\n")  # the pointer wins when it is valid
    assert find_latest(tmp_path) == tmp_path / "epoch_1"


def test_torn_folders_are_ignored(tmp_path: Path) -> None:
    save(tmp_path, 1)
    save(tmp_path, 2)
    # a folder whose trainer_state.json was never written (killed mid-save, copied partially)
    torn = tmp_path / "epoch_10"
    (torn / "model").mkdir(parents=True)
    (torn / "model" / "model.safetensors").write_bytes(b"half")
    # a temporary folder left by a killed process, and names that are not checkpoints
    (tmp_path / ".epoch_3.tmp-99999").mkdir()
    (tmp_path / ".epoch_3.tmp-99999" / STATE_FILE).write_text("{}")
    (tmp_path / "epoch_x").mkdir()
    (tmp_path / "notes.txt").write_text("")
    assert steps(tmp_path) == [1, 2]
    (tmp_path / LATEST_FILE).unlink()
    assert find_latest(tmp_path) == tmp_path / "epoch_2"
    (tmp_path / LATEST_FILE).write_text("epoch_10\n")  # the pointer names the torn folder
    assert find_latest(tmp_path) == tmp_path / "epoch_2"
    save(tmp_path, 3, keep=1)  # pruning counts complete folders only and leaves the rest alone
    assert steps(tmp_path) == [3] and torn.is_dir()


def disk_full(tmp_path: Path, error: BaseException) -> None:
    save(tmp_path, 1)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(CheckpointError, match=r"disk full") as caught:
        save(tmp_path, 2, FakeBackend(fail=error))
    message = str(caught.value)
    assert "epoch_2" in message and "epoch_1 is intact" in message and "\n" not in message
    assert (tmp_path / LATEST_FILE).read_text() == "epoch_1\n"
    assert find_latest(tmp_path) == tmp_path / "epoch_1"
    assert (tmp_path / "epoch_1" / "model" / "model.safetensors").read_bytes() == b"weights-1"
    assert json.loads((tmp_path / "epoch_1" / STATE_FILE).read_text()) == {"step": 1}
    assert not (tmp_path / "epoch_2").exists() and hidden(tmp_path) == []
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    disk_full(tmp_path, OSError(errno.ENOSPC, "No space left on device"))


def test_a_full_disk_reported_by_safetensors_is_a_full_disk_too(tmp_path: Path) -> None:
    """safetensors raises its own SafetensorError (not an OSError) when the disk fills up."""
    from safetensors import SafetensorError

    disk_full(
        tmp_path, SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    )


def test_a_torch_save_failure_on_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.save says only "unexpected pos" when the disk fills; the free space tells."""
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=1024))
    disk_full(tmp_path, RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"))


def test_other_write_errors_name_their_cause_and_clean_up(tmp_path: Path) -> None:
    save(tmp_path, 1)
    with pytest.raises(CheckpointError, match=r"PermissionError: .*denied.*epoch_1 is intact"):
        save(tmp_path, 2, FakeBackend(fail=PermissionError(errno.EACCES, "denied")))
    assert hidden(tmp_path) == [] and find_latest(tmp_path) == tmp_path / "epoch_1"
    # a bug (not an I/O error) keeps its own exception, and still leaves no partial folder
    with pytest.raises(KeyError):
        save(tmp_path, 2, FakeBackend(fail=KeyError("bug")))
    assert hidden(tmp_path) == [] and steps(tmp_path) == [1]


def test_resume_refuses_another_config_and_names_the_key(tmp_path: Path) -> None:
    config = ExperimentConfig(experiment_name="ck", total_training_steps=4)
    state = {"step": 1, "config": ckpt.resume_fingerprint(config)}
    backend = FakeBackend()
    folder = save_checkpoint(tmp_path, 1, backend, state, keep=2)
    # what a resumed run may change: its length, how often it saves or validates
    longer = dataclasses.replace(config, total_training_steps=9, save_freq=3, resume=True)
    assert ckpt.load_checkpoint(folder, backend, longer)["step"] == 1
    assert backend.loaded == [folder]
    other = dataclasses.replace(config, algorithm=AlgorithmConfig(lr=2e-6))
    with pytest.raises(ConfigError, match=r"algorithm\.lr: checkpoint 1e-06, now 2e-06") as caught:
        ckpt.load_checkpoint(folder, backend, other)
    assert "total_training_steps" not in str(caught.value)
    assert backend.loaded == [folder]  # refused before anything was loaded


def test_where_a_run_executes_is_a_resumable_change() -> None:
    """Executor, Ray layout and TP size change no result (megatron checkpoints are TP-independent)."""
    from simpletir.core.config_load import load_config

    config = load_config(None, [])
    moved = load_config(
        None,
        [
            "executor=ray",
            "ray.engine_replicas=2",
            "trainer.tensor_parallel_size=2",
            "rollout.max_trajectory_retries=5",
        ],
    )
    assert ckpt.resume_fingerprint(moved) == ckpt.resume_fingerprint(config)
    assert ckpt.resume_fingerprint(
        load_config(None, ["trainer.backend=megatron"])
    ) != ckpt.resume_fingerprint(config)


def test_rng_states_round_trip(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    folder = save(tmp_path, 1)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(2)
    np.random.seed(2)
    torch.manual_seed(2)
    ckpt.set_rng_state(torch.load(folder / ckpt.RNG_FILE, weights_only=False))
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_a_killed_savers_temporary_folder_is_removed_by_the_next_save(tmp_path: Path) -> None:
    import os

    from simpletir.core.trainer.checkpoint import remove_stale_temporaries

    gone = tmp_path / ".epoch_3.tmp-999999999"  # above pid_max: no such process
    mine = tmp_path / f".epoch_4.tmp-{os.getpid()}"
    alive = tmp_path / ".epoch_5.tmp-1"  # pid 1 lives
    for folder in (gone, mine, alive):
        folder.mkdir()
    remove_stale_temporaries(tmp_path)
    assert not gone.exists() and mine.exists() and alive.exists()
