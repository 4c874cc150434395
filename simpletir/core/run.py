"""Run an experiment: check it, make its run directory, call ``configure``, dispatch a stage.

The stages live in their own modules and are imported only when a run needs them, so a
missing stage is reported by name (:class:`StageUnavailableError`) instead of pretending:

* ``val_only=True``  -> :func:`simpletir.core.evaluate.run_evaluation`
* training           -> :func:`simpletir.core.trainer.run_training`

The run directory (``<runs_dir>/<experiment_name>``) holds the resolved config, the plugin
versions and the final metrics; every file is written atomically. While the run goes, every
step report reaches the loggers of ``trainer.loggers`` (:mod:`simpletir.core.loggers`: console,
``metrics.jsonl``, wandb) and the plugins' hooks, and the ``simpletir`` logger's messages go to
stderr and to the run log ``<logs_dir>/<experiment_name>.log``.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import platform
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from simpletir import __version__
from simpletir.core.config import ExperimentConfig
from simpletir.core.config_load import to_yaml, validate_config
from simpletir.core.errors import StageUnavailableError
from simpletir.core.fileio import atomic_write_json, atomic_write_text
from simpletir.core.loggers import MetricLogger, build_loggers, close_loggers, run_log, run_log_path
from simpletir.core.plugins import SimpletirPluginManager
from simpletir.core.run_dir import choose_run_dir, locked, remove_if_unused
from simpletir.core.types import StepReport
from simpletir.hookspecs import hookimpl

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
PLUGINS_FILE = "plugins.json"
RESULT_FILE = "result.json"

EVALUATION_STAGE = ("simpletir.core.evaluate", "run_evaluation", "evaluation (val_only) stage, issue 5")
TRAINING_STAGE = ("simpletir.core.trainer", "run_training", "trainer stage")


def load_stage(
    module: str, function: str, what: str
) -> Callable[[ExperimentConfig, SimpletirPluginManager], Any]:
    """Import a stage entry point, or say exactly which stage is not available yet."""
    try:
        loaded = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:  # the stage exists but one of *its* imports is missing: a real error
            raise
        raise StageUnavailableError(
            f"the {what} is not available yet in this installation ({module}.{function} does not exist)"
        ) from exc
    entry = getattr(loaded, function, None)
    if entry is None:
        raise StageUnavailableError(f"the {what} is not available yet: {module} has no {function}()")
    stage: Callable[[ExperimentConfig, SimpletirPluginManager], Any] = entry
    return stage


def prepare_run_dir(config: ExperimentConfig) -> Path:
    """``<runs_dir>/<experiment_name>``, or ``-2``, ``-3``... when taken; ``resume`` reuses it.

    Atomic (``mkdir``), see :mod:`simpletir.core.run_dir`.
    """
    return choose_run_dir(config.runs_dir, config.experiment_name, resume=config.resume)


def plugin_versions(pm: SimpletirPluginManager) -> dict[str, Any]:
    """What the run directory records about the software: enough to reproduce the run."""
    registry = pm.registry()
    return {
        "simpletir": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "plugins": [
            {
                "name": info.name,
                "distribution": info.distribution,
                "version": info.version,
                "hooks": list(info.hooks),
            }
            for info in pm.plugin_infos()
        ],
        "components": [
            {
                "kind": e.spec.kind,
                "name": e.spec.name,
                "plugin": e.plugin,
                "distribution": e.distribution,
                "version": e.version,
            }
            for e in registry.all()
        ],
        "blocked": list(pm.blocked_names),
    }


def flatten_metrics(result: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested numeric results as flat slash-named floats (``aime24/pass@1``); non-numbers skipped."""
    flat: dict[str, float] = {}
    for key, value in result.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, f"{name}/"))
        elif isinstance(value, bool | int | float):
            flat[name] = float(value)
    return flat


def report_step(pm: SimpletirPluginManager, report: StepReport) -> None:
    """Report a finished step: ``on_step_end`` for training, ``on_validation_end`` for validation.

    The trainer calls this after each step and each periodic validation; :func:`run_experiment`
    calls it once at the end of a ``val_only`` run (so an evaluation stage need not). During
    :func:`run_experiment` the run's metric loggers listen on these hooks (:class:`LoggerHooks`,
    registered last so they are called first): a report reaches ``metrics.jsonl`` even when a
    plugin's hook then fails.
    """
    if report.phase == "val":
        pm.hook.on_validation_end(report=report)
    else:
        pm.hook.on_step_end(report=report)


class LoggerHooks:
    """Hands every reported step to the run's metric loggers (``trainer.loggers``)."""

    PLUGIN_NAME = "simpletir.loggers"

    def __init__(self, loggers: Sequence[MetricLogger]) -> None:
        self.loggers = list(loggers)

    @hookimpl
    def on_step_end(self, report: StepReport) -> None:
        for logger in self.loggers:
            logger.log(report)

    @hookimpl
    def on_validation_end(self, report: StepReport) -> None:
        for logger in self.loggers:
            logger.log(report)


def run_experiment(
    config: ExperimentConfig, pm: SimpletirPluginManager, *, verbose: bool = False
) -> dict[str, Any]:
    """Validate, record, configure plugins, then run the chosen stage. Returns its result.

    ``verbose``: vLLM's own log messages also reach the console (they always go to the run log).
    """
    # the chosen components' options come back resolved (defaults in), so config.yaml records them
    config = validate_config(config, pm)
    # Find the stage first: a run that cannot start leaves no run directory behind.
    stage = load_stage(*(EVALUATION_STAGE if config.val_only else TRAINING_STAGE))
    run_dir = prepare_run_dir(config)
    fresh = not (run_dir / CONFIG_FILE).exists()
    config = dataclasses.replace(config, run_dir=str(run_dir))
    try:
        with locked(run_dir):
            return _record_and_run(config, pm, stage, run_dir, verbose=verbose)
    except BaseException:
        if fresh and remove_if_unused(run_dir):
            log.info("removed %s: the run failed before doing any work", run_dir)
        raise


def _record_and_run(
    config: ExperimentConfig,
    pm: SimpletirPluginManager,
    stage: Callable[[ExperimentConfig, SimpletirPluginManager], Any],
    run_dir: Path,
    *,
    verbose: bool = False,
) -> dict[str, Any]:
    # A fresh run records its config before the stage starts, so even a crashed run leaves it.
    # A resumed run keeps the config its folder was started with until the stage has accepted
    # the resume (the evaluation refuses a journal written under other settings): a refused
    # resume must not leave a config.yaml that no longer describes the folder's results.
    resuming = config.resume and (run_dir / CONFIG_FILE).exists()
    if not resuming:
        atomic_write_text(run_dir / CONFIG_FILE, to_yaml(config))
    atomic_write_json(run_dir / PLUGINS_FILE, plugin_versions(pm))
    with run_log(run_log_path(config), verbose=verbose) as log_path:
        what = "evaluation" if config.val_only else "training"
        log.info("simpletir %s: %s run in %s (log: %s)", __version__, what, run_dir, log_path)
        try:
            result = _run_stage(config, pm, stage, run_dir)
        except BaseException as exc:
            log.error("run failed: %s: %s", type(exc).__name__, exc, exc_info=True, extra={"file_only": True})
            raise
    if resuming:
        atomic_write_text(run_dir / CONFIG_FILE, to_yaml(config))
    return result


def _run_stage(
    config: ExperimentConfig,
    pm: SimpletirPluginManager,
    stage: Callable[[ExperimentConfig, SimpletirPluginManager], Any],
    run_dir: Path,
) -> dict[str, Any]:
    """Configure plugins, open the loggers, run the stage, record the result; loggers always close."""
    pm.hook.configure.call_historic(kwargs={"config": config})
    loggers = build_loggers(config, run_dir)
    bridge = LoggerHooks(loggers)
    pm.register(bridge, name=LoggerHooks.PLUGIN_NAME)
    try:
        started = datetime.now(UTC)
        result = dict(stage(config, pm) or {})
        metrics = flatten_metrics(result)
        if config.val_only:
            report_step(pm, StepReport(step=0, epoch=0, metrics=metrics, phase="val"))
    finally:
        pm.unregister(bridge)
        close_loggers(loggers)

    finished = datetime.now(UTC)
    atomic_write_json(
        run_dir / RESULT_FILE,
        {
            "stage": "evaluation" if config.val_only else "training",
            "started": started.isoformat(),
            "finished": finished.isoformat(),
            "seconds": (finished - started).total_seconds(),
            "metrics": metrics,
        },
    )
    pm.hook.on_run_end(run_dir=str(run_dir), metrics=metrics)
    log.info("finished in %.1f s: %s", (finished - started).total_seconds(), run_dir / RESULT_FILE)
    return {"run_dir": str(run_dir), **result}
