"""Run identity: atomic folder choice, an exclusive lock, names after the folder, one-line file
system errors, and a full disk mid-run that resumes (issue: hardening)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from simpletir.cli import main
from simpletir.core.eval_journal import EvalJournal
from simpletir.core.run_dir import RunDirError, choose_run_dir, locked

TINY_EVAL = [
    "model_name=tiny-qwen2",
    "rollout.engine=hf",
    "rollout.progress=false",
    "rollout.chat_template=false",
    "val_only=true",
    "tool_use=false",
    "tools=[]",
    "valid_dataset=arith",
    "plugin_config.arith.size=4",
    "n_val=1",
    "max_prompt_length=512",
    "max_response_length=4",
    "output_acc_to_file=true",
    "plugin_config.math_verify.workers=1",
]


def run(tmp_path: Path, *overrides: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    dirs = [f"runs_dir={tmp_path / 'runs'}", f"logs_dir={tmp_path / 'logs'}"]
    code = main(["run", *TINY_EVAL, *dirs, *overrides])
    return code, capsys.readouterr().err


def test_simultaneous_choices_of_one_name_get_distinct_folders(tmp_path: Path) -> None:
    chosen: list[Path] = []
    barrier = threading.Barrier(10)

    def start() -> None:
        barrier.wait()
        chosen.append(choose_run_dir(tmp_path, "same", resume=False))

    threads = [threading.Thread(target=start) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(p.name for p in chosen) == sorted(["same"] + [f"same-{i}" for i in range(2, 11)])


def test_a_locked_folder_refuses_a_second_run_naming_the_holder(tmp_path: Path) -> None:
    folder = choose_run_dir(tmp_path, "busy", resume=False)
    with (
        locked(folder),
        pytest.raises(RunDirError, match=rf"in use by another run \(PID {os.getpid()}\)"),
        locked(folder),
    ):
        pass
    with locked(folder):  # released when the holder ends: taken over
        pass


def test_a_resumed_run_of_a_busy_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = choose_run_dir(tmp_path / "runs", "held", resume=False)
    with locked(folder):
        code, err = run(tmp_path, "experiment_name=held", "resume=true", capsys=capsys)
    assert code == 2 and "is in use by another run" in err and len(err.strip().splitlines()) == 1


def test_results_are_named_after_the_run_folder_and_early_failures_leave_no_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run(tmp_path, "experiment_name=dup", "model_name=/no/such/model", capsys=capsys)
    assert code == 2 and "no such folder" in err
    assert not (tmp_path / "runs" / "dup").exists()  # failed before any work: the name is free again
    assert run(tmp_path, "experiment_name=dup", capsys=capsys)[0] == 0
    assert run(tmp_path, "experiment_name=dup", capsys=capsys)[0] == 0
    logs = tmp_path / "logs"
    assert (logs / "dup_accuracy.json").is_file() and (logs / "dup-2_accuracy.json").is_file()
    assert (logs / "dup.log").is_file() and (logs / "dup-2.log").is_file()
    assert json.loads((logs / "dup-2_accuracy.json").read_text())["n_problems"] == 4


def test_file_system_refusals_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, err = run(tmp_path, f"runs_dir={blocker}", capsys=capsys)
    assert code == 2 and str(blocker) in err and "not a folder" in err and len(err.strip().splitlines()) == 1
    long_dir = tmp_path / ("d" * 300)
    code, err = run(tmp_path, f"runs_dir={long_dir}", capsys=capsys)
    assert code == 2 and "name too long" in err and len(err.strip().splitlines()) == 1


def test_a_full_disk_mid_run_stops_cleanly_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    original = EvalJournal.append
    calls = {"n": 0}

    def append(self: EvalJournal, benchmark: str, group: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        original(self, benchmark, group)

    monkeypatch.setattr(EvalJournal, "append", append)
    code, err = run(tmp_path, "experiment_name=full", capsys=capsys)
    assert code == 2 and "disk full" in err and "eval_journal.jsonl" in err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("simpletir: error: ")
    journal = tmp_path / "runs" / "full" / "eval_journal.jsonl"
    assert len(journal.read_text().splitlines()) == 3  # the header and the two groups written
    monkeypatch.setattr(EvalJournal, "append", original)  # space freed
    code, err = run(tmp_path, "experiment_name=full", "resume=true", capsys=capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "logs" / "full_accuracy.json").read_text())
    assert result["n_problems"] == 4 and result["resume"]["resumed_groups"] == 2


@pytest.mark.slow
def test_ten_simultaneous_starts_of_one_name_lose_nothing(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "simpletir", "run", *TINY_EVAL, "experiment_name=same"]
    argv += [f"runs_dir={tmp_path / 'runs'}", f"logs_dir={tmp_path / 'logs'}"]
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    procs = [
        subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(10)
    ]
    outcomes = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err.decode()[-500:] for _, err in outcomes]
    folders = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert folders == sorted(["same"] + [f"same-{i}" for i in range(2, 11)])
    for name in folders:
        accuracy = json.loads((tmp_path / "logs" / f"{name}_accuracy.json").read_text())
        assert accuracy["n_problems"] == 4
        generations = (tmp_path / "logs" / f"{name}_generations.jsonl").read_text().splitlines()
        assert len(generations) == 4 and all(json.loads(line)["problem_id"] for line in generations)
        assert (tmp_path / "runs" / name / "result.json").is_file()
