"""Where step metrics go (``trainer.loggers``), and the plain-text run log.

Every :class:`~simpletir.core.types.StepReport` the run reports (one per training step and
validation pass, one at the end of a ``val_only`` run) reaches each chosen logger:

* ``console``: one compact line through the ``simpletir`` logger (so stderr and the run log);
* ``jsonl``: one JSON object a line in ``<run_dir>/metrics.jsonl``, flushed and fsynced per line
  (a killed run keeps every finished step; a resumed run appends);
* ``wandb``: a Weights & Biases run stored under ``<run_dir>/wandb``, whose id is kept in
  ``<run_dir>/wandb_id`` so ``RESUME=True`` continues the same run (``pip install simpletir[wandb]``).

The run log ``<logs_dir>/<run name>.log`` (``tail -f``; named after the run folder) receives
everything logged under the ``simpletir`` logger during a run (:func:`run_log`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import netrc
import os
import secrets
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from simpletir.core.config import ExperimentConfig
from simpletir.core.errors import ConfigError, closest
from simpletir.core.fileio import atomic_write_text
from simpletir.core.types import StepReport

LOGGER_NAMES = ("console", "jsonl", "wandb")
METRICS_FILE = "metrics.jsonl"
WANDB_ID_FILE = "wandb_id"
WANDB_INSTALL_HINT = "pip install simpletir[wandb]"

log = logging.getLogger("simpletir")


class MetricLogger(Protocol):
    """Receives every step report of a run; closed once when the run ends (also on error)."""

    def log(self, report: StepReport) -> None: ...

    def close(self) -> None: ...


# -- choosing loggers -------------------------------------------------------------------------


def check_logger_names(names: Sequence[str]) -> None:
    """Unknown or repeated names in ``trainer.loggers`` raise :class:`ConfigError`."""
    seen: set[str] = set()
    for name in names:
        if name not in LOGGER_NAMES:
            raise ConfigError(
                f"trainer.loggers: unknown logger {name!r}{closest(name, LOGGER_NAMES)} "
                f"(loggers: {', '.join(LOGGER_NAMES)})"
            )
        if name in seen:
            raise ConfigError(f"trainer.loggers names {name!r} twice")
        seen.add(name)


def check_wandb_installed(names: Sequence[str]) -> None:
    """``wandb`` chosen but not importable: say how to install it (before any heavy work)."""
    import importlib.util

    if "wandb" in names and importlib.util.find_spec("wandb") is None:
        raise ConfigError(
            f"trainer.loggers includes 'wandb' but wandb is not installed: {WANDB_INSTALL_HINT} "
            "(or drop wandb from trainer.loggers)"
        )


def build_loggers(config: ExperimentConfig, run_dir: str | Path) -> list[MetricLogger]:
    """The loggers ``config.trainer.loggers`` names, in that order, writing under ``run_dir``."""
    names = list(config.trainer.loggers)
    check_logger_names(names)
    check_wandb_installed(names)
    built: list[MetricLogger] = []
    try:
        for name in names:
            if name == "console":
                built.append(ConsoleLogger())
            elif name == "jsonl":
                built.append(JsonlLogger(Path(run_dir) / METRICS_FILE))
            else:
                built.append(WandbLogger(config, Path(run_dir)))
    except BaseException:
        close_loggers(built)
        raise
    return built


def close_loggers(loggers: Sequence[MetricLogger]) -> None:
    """Close each logger; one failing to close does not keep the others open."""
    for logger in loggers:
        try:
            logger.close()
        except Exception as exc:  # a logger failing to close must not hide the run's own outcome
            name = type(logger).__name__
            log.warning("closing the %s logger failed: %s: %s", name, type(exc).__name__, exc)


# -- console ----------------------------------------------------------------------------------


def _number(value: float) -> str:
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


# A training step reports ~60 metrics; the console shows these (when present), metrics.jsonl all.
CONSOLE_TRAIN_KEYS = (
    ("reward/mean", "reward"),
    ("reward/accuracy", "acc"),
    ("response_length/mean", "len"),
    ("env/num_turns/mean", "turns"),
    ("env/void_turn_ratio", "void"),
    ("batch/effective_batch_size", "groups"),
    ("actor/pg_loss", "pg_loss"),
    ("actor/grad_norm", "grad_norm"),
    ("actor/entropy", "entropy"),
    ("rollout/logprob_diff_mean", "mismatch"),
    ("timing/step_s", "step_s"),
)
CONSOLE_VAL_KEYS = (
    ("pass@1", "pass@1"),
    ("answer_rate", "answered"),
    ("avg_turns", "turns"),
    ("timing/val_s", "val_s"),
)


def format_report(report: StepReport, *, compact: bool = False) -> str:
    """``[val] step 3 epoch 0 | pass@1=0.25 avg_turns=2.1``: every metric, in report order.

    ``compact``: only the headline metrics of :data:`CONSOLE_TRAIN_KEYS` / :data:`CONSOLE_VAL_KEYS`
    (a report without any of them is printed whole)."""
    items: list[tuple[str, float]] = list(report.metrics.items())
    if compact:
        keys = CONSOLE_VAL_KEYS if report.phase == "val" else CONSOLE_TRAIN_KEYS
        picked = [(short, report.metrics[key]) for key, short in keys if key in report.metrics]
        items = picked or items
    metrics = " ".join(f"{key}={_number(value)}" for key, value in items)
    return f"[{report.phase}] step {report.step} epoch {report.epoch} | {metrics or '(no metrics)'}"


class ConsoleLogger:
    """One line per report on the ``simpletir.metrics`` logger (stderr and the run log)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or logging.getLogger("simpletir.metrics")

    def log(self, report: StepReport) -> None:
        # Compact for training runs (one short line per step); a val_only run's single report whole.
        self._logger.info(format_report(report, compact=report.phase == "train" or "step" in report.metrics))

    def close(self) -> None:
        pass


# -- jsonl ------------------------------------------------------------------------------------


class JsonlLogger:
    """``{"step", "epoch", "phase", "time", "metrics"}`` a line, appended and fsynced per report.

    A resumed run appends to the same file, so a step redone after a checkpoint appears twice:
    readers keep the last line per (phase, step). A line torn by a kill is left on a line of its
    own and skipped by :func:`read_metrics`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        if self._file.tell() > 0 and not self.path.read_bytes().endswith(b"\n"):
            self._file.write("\n")  # isolate a line torn by a killed run

    def log(self, report: StepReport) -> None:
        record = {
            "step": report.step,
            "epoch": report.epoch,
            "phase": report.phase,
            "time": datetime.now(UTC).isoformat(),
            "metrics": report.metrics,
        }
        self._file.write(json.dumps(record, ensure_ascii=False, allow_nan=True) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` in file order, skipping a line torn by a kill."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


# -- wandb ------------------------------------------------------------------------------------


def wandb_api_key_configured(environ: Mapping[str, str] | None = None) -> bool:
    """``WANDB_API_KEY`` is set, or ``~/.netrc`` (what ``wandb login`` writes) has the host."""
    environ = os.environ if environ is None else environ
    if environ.get("WANDB_API_KEY"):
        return True
    host = environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://", 1)[-1].split("/")[0]
    try:
        return netrc.netrc(environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_wandb_mode(setting: str, environ: Mapping[str, str] | None = None) -> str:
    """``trainer.wandb_mode``: ``auto`` is ``$WANDB_MODE`` when set, else online with an API key
    configured, else offline (never a network wait on a machine that was not set up for wandb)."""
    environ = os.environ if environ is None else environ
    if setting != "auto":
        return setting
    if environ.get("WANDB_MODE"):
        return environ["WANDB_MODE"]
    return "online" if wandb_api_key_configured(environ) else "offline"


def stable_wandb_id(run_dir: Path) -> str:
    """The wandb run id of this run directory: made once, then read back (so RESUME continues it)."""
    path = run_dir / WANDB_ID_FILE
    if path.is_file():
        stored = path.read_text(encoding="utf-8").strip()
        if stored:
            return stored
    run_id = secrets.token_hex(6)
    atomic_write_text(path, run_id + "\n")
    return run_id


class WandbLogger:
    """A wandb run under ``<run_dir>/wandb``; validation keys get a ``val/`` prefix.

    wandb shares one step axis between phases, so a validation metric ``pass@1`` is logged as
    ``val/pass@1`` (keys already under ``val/`` are kept). An online start that cannot reach the
    server within ``trainer.wandb_init_timeout_s`` falls back to offline (sync later with
    ``wandb sync <run_dir>/wandb/offline-run-*``).
    """

    def __init__(self, config: ExperimentConfig, run_dir: Path) -> None:
        try:
            import wandb
        except ImportError as exc:
            raise ConfigError(
                f"trainer.loggers includes 'wandb' but it cannot be imported ({exc}): {WANDB_INSTALL_HINT}"
            ) from exc
        from omegaconf import OmegaConf

        self.mode = resolve_wandb_mode(config.trainer.wandb_mode)
        self.run_id = stable_wandb_id(run_dir)
        kwargs: dict[str, Any] = {
            "project": config.trainer.wandb_project,
            "name": config.experiment_name,
            "dir": str(run_dir),
            "config": OmegaConf.to_container(OmegaConf.structured(config)),
            "id": self.run_id,
            "resume": "allow",
        }
        # The short init timeout bounds the wait for a server; an offline start needs no network
        # but may still be slow on a loaded machine, so it keeps wandb's own (long) default.
        online_settings = wandb.Settings(init_timeout=config.trainer.wandb_init_timeout_s)
        try:
            if self.mode == "online":
                self._run = wandb.init(mode="online", settings=online_settings, **kwargs)
            else:
                self._run = wandb.init(mode=self.mode, **kwargs)  # type: ignore[arg-type]
        except wandb.errors.CommError as exc:
            if self.mode != "online":
                raise
            log.warning("wandb: cannot reach the server (%s); logging offline under %s/wandb", exc, run_dir)
            wandb.teardown()  # the failed online run still holds the id in wandb's service
            self.mode = "offline"
            self._run = wandb.init(mode="offline", **kwargs)

    def log(self, report: StepReport) -> None:
        metrics: dict[str, Any] = {
            key if report.phase != "val" or key.startswith("val/") else f"val/{key}": value
            for key, value in report.metrics.items()
        }
        metrics["epoch"] = report.epoch
        self._run.log(metrics, step=report.step)

    def close(self) -> None:
        import wandb

        self._run.finish()
        # finish() can return before wandb's service has written the last records (seen after an
        # online -> offline fallback); teardown waits for the service to stop, so the files are whole
        wandb.teardown()


# -- the run log ------------------------------------------------------------------------------


class _ConsoleOnly(logging.Filter):
    """Keeps records marked ``extra={"file_only": True}`` (tracebacks the CLI summarises) off the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)


def run_log_path(config: ExperimentConfig) -> Path:
    return Path(config.logs_dir) / f"{config.run_name}.log"


@contextmanager
def run_log(path: str | Path, *, verbose: bool = False) -> Iterator[Path]:
    """During the block, the ``simpletir`` logger writes to stderr (bare messages) and appends
    to ``path`` (timestamped); so does vLLM's, in every process of the engine, with only its
    errors on the console unless ``verbose`` (:func:`vllm_logging`)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(target, mode="a", encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s"))
    console.addFilter(_ConsoleOnly())
    saved = (log.level, log.propagate)
    log.setLevel(logging.INFO)
    log.propagate = False  # a root handler (pytest, an embedding app) would print lines twice
    log.addHandler(file_handler)
    log.addHandler(console)
    try:
        with vllm_logging(target, verbose=verbose):
            yield target
    finally:
        log.removeHandler(console)
        log.removeHandler(file_handler)
        file_handler.close()
        log.setLevel(saved[0])
        log.propagate = saved[1]


# -- vLLM's own logging -----------------------------------------------------------------------

VLLM_LOGGER = "vllm"
_VLLM_HANDLERS = ("simpletir_run_log", "simpletir_console")
_VLLM_FILE_FORMAT = "%(asctime)s %(levelname)s vllm %(processName)s[%(process)d] %(name)s: %(message)s"
_VLLM_CONSOLE_FORMAT = "vllm %(processName)s: %(levelname)s %(message)s"


def vllm_logging_config(path: str | Path, *, verbose: bool = False) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the ``vllm`` logger: everything (from
    ``$VLLM_LOGGING_LEVEL``, default INFO) appended to ``path``; on stderr only errors, or
    everything when ``verbose``. ``disable_existing_loggers`` is off: other loggers keep theirs."""
    level = os.environ.get("VLLM_LOGGING_LEVEL", "INFO").upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "simpletir_file": {"format": _VLLM_FILE_FORMAT},
            "simpletir_console": {"format": _VLLM_CONSOLE_FORMAT},
        },
        "handlers": {
            "simpletir_run_log": {
                "class": "logging.FileHandler",
                "filename": str(Path(path).resolve()),
                "mode": "a",
                "encoding": "utf-8",
                "delay": True,
                "formatter": "simpletir_file",
                "level": level,
            },
            "simpletir_console": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "simpletir_console",
                "level": level if verbose else "ERROR",
            },
        },
        "loggers": {VLLM_LOGGER: {"handlers": list(_VLLM_HANDLERS), "level": level, "propagate": False}},
    }


@contextmanager
def vllm_logging(path: str | Path, *, verbose: bool = False) -> Iterator[None]:
    """During the block, vLLM logs as :func:`vllm_logging_config` says, in every process.

    vLLM (0.32) reads a ``dictConfig`` JSON file named by ``$VLLM_LOGGING_CONFIG_PATH`` when it
    builds an engine, and hands the same setting to the engine-core and worker processes it
    spawns. The file is written to a temporary path for the block. This process's ``vllm``
    logger gets the same handlers now, for what vLLM logs at import. A user's own
    ``VLLM_LOGGING_CONFIG_PATH`` or ``VLLM_CONFIGURE_LOGGING=0`` is left in charge.
    """
    if os.environ.get("VLLM_LOGGING_CONFIG_PATH") or os.environ.get("VLLM_CONFIGURE_LOGGING") == "0":
        yield
        return
    import tempfile

    config = vllm_logging_config(path, verbose=verbose)
    fd, config_path = tempfile.mkstemp(prefix="simpletir-vllm-logging-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(config, fh)
    logger = logging.getLogger(VLLM_LOGGER)
    saved = (logger.level, logger.propagate, list(logger.handlers))
    for previous in saved[2]:
        logger.removeHandler(previous)
    for name in _VLLM_HANDLERS:
        spec = config["handlers"][name]
        handler: logging.Handler = (
            logging.FileHandler(spec["filename"], mode="a", encoding="utf-8", delay=True)
            if name == "simpletir_run_log"
            else logging.StreamHandler(sys.stderr)
        )
        handler.set_name(name)
        handler.setLevel(spec["level"])
        handler.setFormatter(logging.Formatter(config["formatters"][spec["formatter"]]["format"]))
        logger.addHandler(handler)
    logger.setLevel(config["loggers"][VLLM_LOGGER]["level"])
    logger.propagate = False
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = config_path
    try:
        yield
    finally:
        os.environ.pop("VLLM_LOGGING_CONFIG_PATH", None)
        with contextlib.suppress(OSError):
            os.unlink(config_path)
        # vLLM's own dictConfig may have replaced ours with handlers of the same names.
        for handler in list(logger.handlers):
            if handler.get_name() in _VLLM_HANDLERS:
                logger.removeHandler(handler)
                handler.close()
        for previous in saved[2]:
            logger.addHandler(previous)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
