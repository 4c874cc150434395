"""Checkpoints that never lose data: ``checkpoints/<run>/epoch_<N>/``, a ``latest`` pointer, keep-last-k.

``N`` counts training steps (the seed names its checkpoint folders ``epoch_<N>`` although it
saves every ``save_freq`` steps; we keep its names). One checkpoint holds::

    epoch_<N>/model/               the policy as a Hugging Face folder (safetensors, config, tokenizer)
    epoch_<N>/optimizer.pt         optimiser state and its step count
    epoch_<N>/rng.pt               Python, numpy and torch RNG states
    epoch_<N>/trainer_state.json   step, epoch, sampler position, the config it was made under,
                                   the wandb id and the step's metrics (written last)

It is written into a hidden temporary folder, every file fsynced, then renamed into place; the
``latest`` file is replaced (atomically) only after that, and older checkpoints beyond
``trainer.keep_checkpoints`` are removed only once the new one is complete. A failure while
writing (a full disk) removes the partial folder and leaves ``latest`` and every earlier
checkpoint as they were.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from simpletir.core.errors import ConfigError, SimpletirError
from simpletir.core.fileio import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from simpletir.core.backend import TrainerBackend
    from simpletir.core.config import ExperimentConfig

PREFIX = "epoch_"
LATEST_FILE = "latest"
STATE_FILE = "trainer_state.json"
RNG_FILE = "rng.pt"

# Keys a resumed run may change: how long it runs, how often it saves/validates, where it logs.
# Everything else decides the trajectories or the update, so a checkpoint made under other
# values is refused.
RESUMABLE_CHANGES = (
    "resume",
    "run_dir",
    "total_epochs",
    "total_training_steps",
    "save_freq",
    "test_freq",
    "val_before_train",
    "valid_dataset",
    "n_val",
    "val_sample_size",
    "output_acc_to_file",
    "logs_dir",
    "runs_dir",
    "checkpoints_dir",
    "data_dir",
    "rollout.progress",
    "rollout.val_temperature",
    "rollout.val_top_p",
    "rollout.val_top_k",
    "rollout.max_concurrency",
    "trainer.loggers",
    "trainer.keep_checkpoints",
    # megatron checkpoints keep weights and Adam moments gathered in HF names: any TP size loads them
    "trainer.tensor_parallel_size",
    # where the components run changes no result (tested: local and ray give identical steps)
    "executor",
    "rollout.max_trajectory_retries",
    "trainer.wandb_project",
    "trainer.wandb_mode",
    "trainer.wandb_init_timeout_s",
)


# every key under these: a run may resume on another Ray cluster layout
RESUMABLE_PREFIXES = ("ray.",)


class CheckpointError(SimpletirError):
    """A checkpoint cannot be written or used (disk full, another config, a torn folder)."""


def checkpoint_root(config: ExperimentConfig) -> Path:
    """``<checkpoints_dir>/<run folder name>``: a rerun in ``runs/<name>-2`` never touches ``<name>``'s."""
    return Path(config.checkpoints_dir) / config.run_name


def checkpoint_dir(root: Path, step: int) -> Path:
    return root / f"{PREFIX}{step}"


def resume_fingerprint(config: ExperimentConfig) -> dict[str, Any]:
    """The resolved config without :data:`RESUMABLE_CHANGES`, flattened to dotted keys."""
    from omegaconf import OmegaConf

    tree = OmegaConf.to_container(OmegaConf.structured(config), resolve=True)
    assert isinstance(tree, dict)
    flat = _flatten({str(key): value for key, value in tree.items()})
    return {
        key: value
        for key, value in flat.items()
        if key not in RESUMABLE_CHANGES and not key.startswith(RESUMABLE_PREFIXES)
    }


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and key != "plugin_config":
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = json.loads(json.dumps(value, default=str))
    return flat


def check_same_config(folder: Path, saved: Mapping[str, Any], now: Mapping[str, Any]) -> None:
    differences = [
        f"{key}: checkpoint {saved.get(key)!r}, now {now.get(key)!r}"
        for key in sorted(set(saved) | set(now))
        if saved.get(key) != now.get(key)
    ]
    if differences:
        raise ConfigError(
            f"cannot resume from {folder}: it was made under another config ({'; '.join(differences)}). "
            "Resume with the same settings, or start a new run (another experiment_name, no RESUME)"
        )


# -- RNG ---------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- writing -----------------------------------------------------------------------------------


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    for path in [*sorted(p for p in folder.rglob("*") if p.is_dir()), folder]:
        _fsync_dir(path)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    root: Path, step: int, backend: TrainerBackend, state: Mapping[str, Any], *, keep: int
) -> Path:
    """Write ``epoch_<step>`` atomically, point ``latest`` at it, then prune to ``keep``."""
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(root)
    final = checkpoint_dir(root, step)
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        backend.save(tmp)
        torch.save(rng_state(), tmp / RNG_FILE)
        atomic_write_json(tmp / STATE_FILE, dict(state))  # last: its presence marks a complete folder
        _fsync_tree(tmp)
        if final.exists():  # the same step again (a resumed run redoing it): replace it whole
            old = root / f".{final.name}.old-{os.getpid()}"
            os.rename(final, old)
            shutil.rmtree(old)
        os.rename(tmp, final)
        _fsync_dir(root)
        atomic_write_text(root / LATEST_FILE, final.name + "\n")
    except BaseException as exc:
        # safetensors and torch.save report a full disk as their own errors, not OSError
        full = _disk_full(exc, root)
        shutil.rmtree(tmp, ignore_errors=True)
        if not (full or isinstance(exc, OSError)):
            raise
        previous = find_latest(root)
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        cause = "disk full" if full else f"{type(exc).__name__}: {exc}"
        raise CheckpointError(f"writing checkpoint {final} failed ({cause}); {kept}") from exc
    prune_checkpoints(root, keep)
    return final


def remove_stale_temporaries(root: Path) -> None:
    """Remove ``.epoch_N.tmp-<pid>`` / ``.old-<pid>`` folders of processes that no longer run
    (a run killed while saving); a live process's (a concurrent save) are left alone."""
    for path in root.glob(f".{PREFIX}*.*-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:  # alive, someone else's
            continue


def _disk_full(exc: BaseException, root: Path) -> bool:
    """ENOSPC, as an OSError or inside another library's message (safetensors: "No space left on
    device (os error 28)"), or a write error (torch.save: "unexpected pos") with no space left."""
    if getattr(exc, "errno", None) == errno.ENOSPC or "No space left on device" in str(exc):
        return True
    if not isinstance(exc, Exception):
        return False
    try:
        return shutil.disk_usage(root).free < 2**20
    except OSError:
        return False


def _step_of(folder: Path) -> int | None:
    suffix = folder.name[len(PREFIX) :]
    return int(suffix) if folder.name.startswith(PREFIX) and suffix.isdigit() else None


def complete_checkpoints(root: Path) -> list[Path]:
    """Finished checkpoint folders (with their state file), oldest step first."""
    if not root.is_dir():
        return []
    found = [(s, p) for p in root.iterdir() if (s := _step_of(p)) is not None and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def prune_checkpoints(root: Path, keep: int) -> None:
    """Remove all but the newest ``keep`` complete checkpoints (never the one ``latest`` names)."""
    latest = find_latest(root)
    for folder in complete_checkpoints(root)[:-keep]:
        if folder != latest:
            shutil.rmtree(folder, ignore_errors=True)


def find_latest(root: Path) -> Path | None:
    """The folder ``latest`` names, or (pointer lost) the newest complete one; None when none."""
    pointer = root / LATEST_FILE
    if pointer.is_file():
        folder = root / pointer.read_text(encoding="utf-8").strip()
        if (folder / STATE_FILE).is_file():
            return folder
    done = complete_checkpoints(root)
    return done[-1] if done else None


# -- reading -----------------------------------------------------------------------------------


def read_state(folder: Path) -> dict[str, Any]:
    try:
        state: dict[str, Any] = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {folder} has no readable {STATE_FILE}: {exc}") from exc
    return state


def load_checkpoint(folder: Path, backend: TrainerBackend, config: ExperimentConfig) -> dict[str, Any]:
    """Check the config, restore the backend and the RNGs; returns the trainer state."""
    state = read_state(folder)
    check_same_config(folder, state.get("config", {}), resume_fingerprint(config))
    backend.load(folder)
    set_rng_state(torch.load(folder / RNG_FILE, weights_only=False))
    return state
