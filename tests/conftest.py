"""Shared test fixtures and markers.

* ``gpu``-marked tests are skipped when no CUDA device is present.
* ``shared_data_dir``: the SimpleTIR parquet snapshot (``../shared/data`` beside the checkout,
  or ``$SIMPLETIR_TEST_DATA``); tests needing it are skipped with the reason when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items or _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none present)")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The folder holding deepscaler/aime.parquet etc.; skips the test when it is absent."""
    explicit = os.environ.get("SIMPLETIR_TEST_DATA")
    path = Path(explicit) if explicit else REPO_ROOT.parent / "shared" / "data"
    if not (path / "deepscaler" / "aime.parquet").is_file():
        source = "$SIMPLETIR_TEST_DATA" if explicit else "../shared/data beside the checkout"
        pytest.skip(
            f"test data not found at {path} ({source}); set SIMPLETIR_TEST_DATA to the parquet folder"
        )
    return path
