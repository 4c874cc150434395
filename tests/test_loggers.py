"""Step-metric loggers (console, jsonl, wandb), the run log, and their wiring into a run."""

from __future__ import annotations

import json
import logging
import socket
import struct
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _plugin_fakes import FAKE_OVERRIDES, FakeComponents

from simpletir import hookimpl
from simpletir.core import run as run_module
from simpletir.core.config_load import load_config, validate_config
from simpletir.core.errors import ConfigError
from simpletir.core.loggers import (
    METRICS_FILE,
    WANDB_ID_FILE,
    ConsoleLogger,
    JsonlLogger,
    WandbLogger,
    build_loggers,
    format_report,
    read_metrics,
    resolve_wandb_mode,
    run_log,
)
from simpletir.core.plugins import make_plugin_manager
from simpletir.core.run import LoggerHooks, run_experiment
from simpletir.core.types import StepReport


def fake_pm(*extra: tuple[str, Any]):  # type: ignore[no-untyped-def]
    return make_plugin_manager(load_entry_points=False, plugins=[("fakes", FakeComponents()), *extra])


def reports(n: int, start: int = 0) -> list[StepReport]:
    return [
        StepReport(step=i, epoch=i // 2, metrics={"reward/mean": i / 10, "filter/void_turn/masked": i})
        for i in range(start, start + n)
    ]


# -- jsonl ------------------------------------------------------------------------------------


def test_jsonl_has_one_line_per_report_and_a_resumed_run_appends(tmp_path: Path) -> None:
    path = tmp_path / METRICS_FILE
    first = JsonlLogger(path)
    for report in reports(3):
        first.log(report)
        # on disk at once, before close: a killed run keeps every finished step
        assert len(path.read_text().splitlines()) == report.step + 1
    first.close()
    with path.open("a") as handle:
        handle.write('{"step": 3, "epo')  # the run was killed mid-line

    resumed = JsonlLogger(path)
    for report in reports(2, start=3):
        resumed.log(report)
    resumed.log(StepReport(step=4, epoch=2, metrics={"val/aime24/pass@1": 0.25}, phase="val"))
    resumed.close()

    records = read_metrics(path)
    assert [(r["step"], r["phase"]) for r in records] == [
        (0, "train"),
        (1, "train"),
        (2, "train"),
        (3, "train"),
        (4, "train"),
        (4, "val"),
    ]
    assert records[2]["metrics"] == {"reward/mean": 0.2, "filter/void_turn/masked": 2}
    assert records[2]["epoch"] == 1 and records[-1]["metrics"] == {"val/aime24/pass@1": 0.25}
    assert len(path.read_text().splitlines()) == 7  # the torn line stays, alone on its line


# -- console and the run log ------------------------------------------------------------------


def test_console_line_format() -> None:
    report = StepReport(step=3, epoch=1, metrics={"pass@1": 0.123456, "n": 6.0, "kl": 1e-05})
    assert format_report(report) == "[train] step 3 epoch 1 | pass@1=0.1235 n=6 kl=1e-05"
    assert format_report(StepReport(0, 0, {}, phase="val")) == "[val] step 0 epoch 0 | (no metrics)"


def test_compact_console_line_keeps_headline_metrics_in_a_fixed_order() -> None:
    metrics = {"timing/step_s": 12.5, "actor/grad_norm": 0.25, "batch/draws": 2.0, "reward/mean": 0.5}
    line = format_report(StepReport(step=4, epoch=0, metrics=metrics), compact=True)
    assert line == "[train] step 4 epoch 0 | reward=0.5 grad_norm=0.25 step_s=12.5"
    val = StepReport(step=4, epoch=0, metrics={"pass@1": 0.25, "benchmarks/arith/pass@1": 0.25}, phase="val")
    assert format_report(val, compact=True) == "[val] step 4 epoch 0 | pass@1=0.25"
    other = StepReport(step=1, epoch=0, metrics={"custom": 1.0})  # nothing to pick: printed whole
    assert format_report(other, compact=True) == "[train] step 1 epoch 0 | custom=1"


def test_console_logger_goes_to_stderr_and_the_run_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log_path = tmp_path / "logs" / "exp.log"
    with run_log(log_path):
        ConsoleLogger().log(StepReport(step=1, epoch=0, metrics={"reward/mean": 0.5}))
        logging.getLogger("simpletir.core.somewhere").warning("a note")
        logging.getLogger("vllm").warning("engine note")  # vLLM's go to the run log only (issue 14)
        logging.getLogger("urllib3").warning("library spam")  # other libraries stay out of the run log
    logging.getLogger("simpletir.metrics").info("after the run: nowhere")
    err = capsys.readouterr().err
    assert "[train] step 1 epoch 0 | reward=0.5\n" in err and "a note" in err  # compact: headline names
    text = log_path.read_text()
    assert "INFO simpletir.metrics: [train] step 1 epoch 0 | reward=0.5" in text
    assert "WARNING simpletir.core.somewhere: a note" in text
    assert "library spam" not in text and "after the run" not in text
    assert "engine note" in text and "engine note" not in err  # only vLLM's errors reach stderr


# -- choosing loggers -------------------------------------------------------------------------


def test_unknown_logger_name_is_a_config_error_with_the_closest_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown logger 'jsnl' \(did you mean 'jsonl'\?\)"):
        load_config(None, ["trainer.loggers=[console,jsnl]"])
    with pytest.raises(ConfigError, match="names 'console' twice"):
        load_config(None, ["trainer.loggers=console,console"])
    config = load_config(None, [*FAKE_OVERRIDES])
    config.trainer.loggers = ["wandbb"]  # set after loading: build and validate still refuse it
    with pytest.raises(ConfigError, match="did you mean 'wandb'"):
        build_loggers(config, tmp_path)
    with pytest.raises(ConfigError, match="did you mean 'wandb'"):
        validate_config(config, fake_pm(), check_data=False)


def test_wandb_chosen_but_not_installed_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if it were not installed
    config = load_config(None, [*FAKE_OVERRIDES, "trainer.loggers=[jsonl,wandb]"])
    with pytest.raises(ConfigError, match=r"wandb is not installed: pip install simpletir\[wandb\]"):
        validate_config(config, fake_pm(), check_data=False)


def test_wandb_mode_auto(tmp_path: Path) -> None:
    no_netrc = {"NETRC": str(tmp_path / "missing")}
    assert resolve_wandb_mode("auto", {**no_netrc, "WANDB_MODE": "disabled"}) == "disabled"
    assert resolve_wandb_mode("auto", {**no_netrc}) == "offline"
    assert resolve_wandb_mode("auto", {**no_netrc, "WANDB_API_KEY": "k" * 40}) == "online"
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    assert resolve_wandb_mode("auto", {"NETRC": str(netrc)}) == "online"
    assert resolve_wandb_mode("offline", {"WANDB_MODE": "online"}) == "offline"


# -- wandb, offline, read back from its own files ---------------------------------------------


def _wandb_records(path: Path) -> Iterator[bytes]:
    """The records of a ``.wandb`` file (a LevelDB-style log: 32 KiB blocks of chunks)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if kind == 0 and length == 0:
            break
        pending += data[pos : pos + length]
        pos += length
        if kind in (1, 4):  # FULL or LAST chunk
            yield pending
            pending = b""


def _wandb_history(run_dir: Path) -> tuple[list[dict[str, Any]], list[Any]]:
    from wandb.proto import wandb_internal_pb2 as pb

    history: list[dict[str, Any]] = []
    runs: list[Any] = []
    files = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"), key=lambda p: p.stat().st_mtime)
    for path in files:
        for raw in _wandb_records(path):
            record = pb.Record()
            record.ParseFromString(raw)
            kind = record.WhichOneof("record_type")
            if kind == "history":
                items = record.history.item  # wandb 0.31 fills nested_key, older versions key
                history.append({i.key or ".".join(i.nested_key): json.loads(i.value_json) for i in items})
            elif kind == "run":
                runs.append(record.run)
    return history, runs


@pytest.fixture
def wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # auto must pick offline by itself
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_wandb_offline_run_writes_the_metrics_and_resume_keeps_its_id(
    tmp_path: Path, wandb_offline: None
) -> None:
    config = load_config(
        None, [*FAKE_OVERRIDES, "experiment_name=wb", "trainer.loggers=[wandb]", "trainer.wandb_project=proj"]
    )
    run_dir = tmp_path / "run"
    (first,) = build_loggers(config, run_dir)
    for report in reports(2):
        first.log(report)
    first.close()
    run_id = (run_dir / WANDB_ID_FILE).read_text().strip()

    (resumed,) = build_loggers(config, run_dir)  # RESUME=True: same run dir, same wandb run
    resumed.log(StepReport(step=2, epoch=1, metrics={"pass@1": 0.75}, phase="val"))
    resumed.close()

    history, runs = _wandb_history(run_dir)
    for _ in range(50):  # wandb's writer process may still be flushing the last records
        if len(history) >= 3:
            break
        time.sleep(0.1)
        history, runs = _wandb_history(run_dir)
    assert [(r["_step"], r.get("reward/mean"), r.get("val/pass@1")) for r in history] == [
        (0, 0.0, None),
        (1, 0.1, None),
        (2, None, 0.75),
    ]
    assert history[1]["filter/void_turn/masked"] == 1 and history[2]["epoch"] == 1
    assert {r.run_id for r in runs} == {run_id}
    assert {(r.project, r.display_name) for r in runs} == {("proj", "wb")}
    recorded = {i.key or ".".join(i.nested_key): json.loads(i.value_json) for i in runs[0].config.update}
    assert recorded["experiment_name"] == "wb" and recorded["trainer"]["wandb_project"] == "proj"


def test_wandb_online_without_a_reachable_server_falls_back_to_offline(
    tmp_path: Path, wandb_offline: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as closed:  # bound, never listening: connections are refused at once
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed.getsockname()[1]}")
        monkeypatch.setenv("WANDB_API_KEY", "k" * 40)  # so auto picks online
        config = load_config(None, ["trainer.loggers=[wandb]", "trainer.wandb_init_timeout_s=1"])
        started = time.monotonic()
        with run_log(tmp_path / "run.log"):
            (logger,) = build_loggers(config, tmp_path / "run")
        assert isinstance(logger, WandbLogger) and logger.mode == "offline"
        assert time.monotonic() - started < 30
        logger.log(StepReport(step=0, epoch=0, metrics={"reward/mean": 0.5}))
        logger.close()
    assert "cannot reach the server" in capsys.readouterr().err
    history, _ = _wandb_history(tmp_path / "run")
    assert [h.get("reward/mean") for h in history] == [0.5]


# -- wiring into a run ------------------------------------------------------------------------


def _fake_stage(monkeypatch: pytest.MonkeyPatch, outcome: Any) -> None:
    module = types.ModuleType("simpletir.core.evaluate")

    def run_evaluation(config: Any, pm: Any) -> dict[str, Any]:
        if isinstance(outcome, BaseException):
            raise outcome
        return dict(outcome)

    module.run_evaluation = run_evaluation  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "simpletir.core.evaluate", module)


def _run_config(tmp_path: Path, *extra: str) -> Any:
    return load_config(
        None,
        [
            *FAKE_OVERRIDES,
            "val_only=True",
            "experiment_name=exp",
            f"runs_dir={tmp_path / 'runs'}",
            f"logs_dir={tmp_path / 'logs'}",
            *extra,
        ],
    )


def test_a_run_sends_its_report_to_jsonl_console_and_the_run_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_stage(monkeypatch, {"tiny": {"pass@1": 0.5}})

    class Failing:  # a plugin whose hook fails: the metrics are already on disk
        @hookimpl
        def on_validation_end(self, report: StepReport) -> None:
            raise RuntimeError("plugin hook broke")

    pm = fake_pm(("failing", Failing()))
    with pytest.raises(RuntimeError, match="plugin hook broke"):
        run_experiment(_run_config(tmp_path), pm)
    assert pm.get_plugin(LoggerHooks.PLUGIN_NAME) is None

    pm = fake_pm()
    run_experiment(_run_config(tmp_path, "resume=True"), pm)  # same run dir: appends
    records = read_metrics(tmp_path / "runs" / "exp" / METRICS_FILE)
    assert [(r["phase"], r["metrics"]) for r in records] == [("val", {"tiny/pass@1": 0.5})] * 2
    err = capsys.readouterr().err
    assert err.count("[val] step 0 epoch 0 | tiny/pass@1=0.5") == 2
    assert "plugin hook broke" not in err  # the traceback goes to the run log only; the CLI says it once
    text = (tmp_path / "logs" / "exp.log").read_text()
    assert text.count("[val] step 0 epoch 0 | tiny/pass@1=0.5") == 2
    assert "ERROR simpletir.core.run: run failed: RuntimeError: plugin hook broke" in text
    assert "Traceback" in text and "finished in" in text


def test_loggers_are_closed_when_the_stage_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_stage(monkeypatch, ValueError("stage exploded"))
    events: list[str] = []

    class Spy:
        def log(self, report: StepReport) -> None:
            events.append("log")

        def close(self) -> None:
            events.append("close")

    class BadClose(Spy):
        def close(self) -> None:
            events.append("close-fails")
            raise OSError("disk gone")

    monkeypatch.setattr(run_module, "build_loggers", lambda config, run_dir: [BadClose(), Spy()])
    pm = fake_pm()
    with pytest.raises(ValueError, match="stage exploded"):
        run_experiment(_run_config(tmp_path), pm)
    assert events == ["close-fails", "close"]  # one failing close does not keep the other open
    assert pm.get_plugin(LoggerHooks.PLUGIN_NAME) is None
    text = (tmp_path / "logs" / "exp.log").read_text()
    assert "closing the BadClose logger failed: OSError: disk gone" in text
    assert "run failed: ValueError: stage exploded" in text
