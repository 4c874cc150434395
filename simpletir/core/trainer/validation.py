"""Validation inside a training run: the evaluation code path on the trainer's warm engine.

Every ``test_freq`` steps (and at step 0 with ``val_before_train``) the validation benchmarks
are rolled out with the validation sampling parameters, scored and summarised exactly as a
``val_only`` run does (:func:`simpletir.core.evaluate.evaluate_async`). Files:

* ``<logs_dir>/<run>_val_epoch_<N>.json``: the accuracy dict (the seed's name; ``N`` is the
  training step the weights come from, 0 before training);
* ``<logs_dir>/<run>_val_epoch_<N>_generations.jsonl``: every sample, with ``output_acc_to_file``;
* ``<run_dir>/validation/journal_step_<N>.jsonl``: each finished group, fsynced, so a run
  killed mid-validation resumes it without redoing groups, and never mixes steps (the step is
  part of the journal's fingerprint; journals of steps after the checkpoint a run resumes from
  are removed);
* ``<run_dir>/validation/step_<N>.json``: written last; its presence means step N's validation
  is complete.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simpletir.core.eval_journal import EvalJournal, evaluation_fingerprint
from simpletir.core.evaluate import evaluate_async, summary_table, write_evaluation_files
from simpletir.core.fileio import atomic_write_json
from simpletir.core.run import flatten_metrics, report_step
from simpletir.core.types import StepReport

if TYPE_CHECKING:
    from simpletir.core.trainer.loop import Trainer

log = logging.getLogger("simpletir.trainer")

FOLDER = "validation"
# Settings the accuracy dict repeats for the record; not metrics to plot.
_NOT_METRICS = {"n_val", "max_turns", "seed", "val_sample_size", "tool_use", "resume", "timings", "sampling"}


def validation_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / FOLDER


def forget_after(run_dir: str | Path, step: int) -> None:
    """Remove validation records of steps after ``step`` (a resumed run redoes those steps)."""
    folder = validation_dir(run_dir)
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        stem = path.name.split(".")[0]
        number = stem.rsplit("_", 1)[-1]
        if number.isdigit() and int(number) > step:
            path.unlink() if path.is_file() else shutil.rmtree(path, ignore_errors=True)


async def validate(t: Trainer, *, step: int) -> dict[str, Any]:
    """Validate the current weights as step ``step``; report and write its files."""
    config = t.config
    assert config.run_dir is not None
    folder = validation_dir(config.run_dir)
    done = folder / f"step_{step}.json"
    if done.is_file():  # a resumed run whose checkpoint was saved right before this validation
        log.info("validation of step %d is already complete (%s)", step, done)
        return {}
    folder.mkdir(parents=True, exist_ok=True)
    fingerprint = {**evaluation_fingerprint(config, t.valid), "step": step}
    journal = EvalJournal.open(folder / f"journal_step_{step}.jsonl", fingerprint, resume=True)
    try:
        result, by_benchmark = await evaluate_async(
            config,
            t.valid,
            t.reward,
            runner=t.runner,
            journal=journal,
            seed_round=("val", step),
            desc=f"validation (step {step})",
        )
    finally:
        journal.close()
    result["step"] = step
    logs = Path(config.logs_dir)
    stem = f"{config.run_name}_val_epoch_{step}"
    atomic_write_json(logs / f"{stem}.json", result)
    if config.output_acc_to_file:
        files = write_evaluation_files(
            result, by_benchmark, logs / f"{stem}.json", logs / f"{stem}_generations.jsonl"
        )
        result["files"] = files
    atomic_write_json(done, result)
    log.info("%s", summary_table(result))
    metrics = flatten_metrics({k: v for k, v in result.items() if k not in _NOT_METRICS})
    metrics["timing/val_s"] = float(result["timings"]["total_s"])
    report_step(t.pm, StepReport(step=step, epoch=t.sampler.epoch, metrics=metrics, phase="val"))
    return result
