"""Atomic writes: whole files or none, with the permissions any other file of the user gets."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from simpletir.core.fileio import atomic_write_text, atomic_writer


def test_an_atomic_write_gets_the_umask_permissions_not_mkstemps_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.json", "{}\n")
    finally:
        os.umask(old)
    assert path.read_text() == "{}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~0o022  # readable by others, like logs/*.log


def test_a_failed_write_leaves_neither_the_file_nor_a_temporary(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_writer(tmp_path / "b.txt") as handle:
        handle.write("half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
