"""A non-editable install (a wheel) ships the configs: bare names resolve outside a checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_an_installed_wheel_resolves_shipped_config_names(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = wheels.glob("simpletir-*.whl")
    target = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"  # no configs/ here, and not the checkout
    elsewhere.mkdir()
    script = (
        "import simpletir, pathlib; from simpletir.core.config_load import resolve_config_path, load_config;"
        "p = resolve_config_path('quickstart_cpu', environ={}); c = load_config(p, environ={});"
        "print(pathlib.Path(simpletir.__file__).parent, p, c.experiment_name)"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=elsewhere, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    package, path, name = done.stdout.split()
    assert package.startswith(str(target)) and path.startswith(str(target)) and name == "quickstart_cpu"
