"""The training stage: ``simpletir-run CONFIG`` without ``val_only``.

:func:`run_training` checks what it can before anything heavy (dataset sizes, batch arithmetic,
the checkpoint to resume from), builds the components once through the executor (``executor``:
local or ray; reward workers, sandbox tools, the rollout engine, the trainer backend), pushes the
trainer's weights into the engine (which also proves that they fit), restores a checkpoint when
resuming, and hands everything to :func:`simpletir.core.trainer.loop.train` on one event loop.
Whatever it built, it closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simpletir.core.errors import ConfigError

if TYPE_CHECKING:
    from simpletir.core.config import ExperimentConfig
    from simpletir.core.plugins import SimpletirPluginManager
    from simpletir.core.types import Problem

log = logging.getLogger("simpletir.trainer")


def plan_steps(config: ExperimentConfig, num_train: int) -> tuple[int, int]:
    """``(total_steps, steps_per_epoch)``.

    With ``total_training_steps`` that many steps run. Otherwise the run stops once the prompt
    sampler has made ``total_epochs`` passes over the training set; a step draws
    ``train_batch_size x oversample`` prompts (more when filters make it refill), so
    ``steps_per_epoch`` is an estimate, for the progress bar and the log.
    """
    per_step = config.train_batch_size * config.oversample
    steps_per_epoch = max(math.ceil(num_train / per_step), 1)
    total = config.total_training_steps or config.total_epochs * steps_per_epoch
    return total, steps_per_epoch


def check_training_data(config: ExperimentConfig, train: list[Problem]) -> None:
    if config.train_batch_size > len(train):
        raise ConfigError(
            f"train_batch_size={config.train_batch_size} is larger than the training set "
            f"({len(train)} problems in train_dataset={config.train_dataset!r}); lower train_batch_size"
        )


def run_training(config: ExperimentConfig, pm: SimpletirPluginManager) -> dict[str, Any]:
    """Train ``config.model_name``; returns the last step's metrics and where files went."""
    from simpletir.core.backend import check_backend_available, check_backend_fits
    from simpletir.core.batching import PromptSampler
    from simpletir.core.evaluate import close_unused_tools, closing, load_benchmarks, with_tools_closed
    from simpletir.core.executor import open_executor
    from simpletir.core.filtering import build_filters
    from simpletir.core.rollout import RolloutRunner
    from simpletir.core.rollout.models import resolve_model
    from simpletir.core.trainer import checkpoint as ckpt
    from simpletir.core.trainer.loop import Trainer, train
    from simpletir.core.trainer.validation import forget_after
    from simpletir.core.trainer.weight_sync import check_weight_sync

    assert config.run_dir is not None, "run_training runs inside run_experiment (it sets run_dir)"
    # -- before anything heavy ------------------------------------------------------------------
    train_problems = [p for ps in load_benchmarks(config, pm, split="train").values() for p in ps]
    check_training_data(config, train_problems)
    valid = load_benchmarks(config, pm) if config.test_freq != -1 else {}
    total_steps, steps_per_epoch = plan_steps(config, len(train_problems))
    check_backend_available(config)
    root = ckpt.checkpoint_root(config)
    resume_from = ckpt.find_latest(root) if config.resume else None
    if resume_from is not None:  # refuse another config's checkpoint before loading any model
        ckpt.check_same_config(
            resume_from, ckpt.read_state(resume_from).get("config", {}), ckpt.resume_fingerprint(config)
        )
    elif config.resume:
        log.info("resume: no checkpoint under %s; starting from step 0", root)
    model_dir = resolve_model(config.model_name)
    check_backend_fits(config, model_dir)

    with contextlib.ExitStack() as stack:
        # executor: local (in-process) or ray (actors); everything below is the same code for both
        executor = stack.enter_context(open_executor(config))
        reward = executor.build_reward(config, pm)
        stack.callback(closing, "reward", reward.close)
        warm_up = getattr(reward, "warm_up", None)
        if callable(warm_up):
            warm_up()
        filters = build_filters(pm, config)
        tools = executor.build_tools(config, pm)
        handed: list[bool] = []
        stack.callback(close_unused_tools, tools, handed)
        engine = executor.build_engine(config)
        stack.callback(closing, "engine", engine.close)
        backend = executor.build_backend(config, model_dir)
        stack.callback(closing, "trainer backend", backend.close)
        sampler = PromptSampler(train_problems, seed=config.seed)
        estimator = pm.build("advantage_estimator", config.algorithm.adv_estimator, config)
        recorder = None
        if config.trainer.record_rollouts:
            from simpletir.core.trainer.record import FOLDER, RecordingEstimator, RolloutRecorder

            recorder = RolloutRecorder(Path(config.run_dir) / FOLDER)
            estimator = RecordingEstimator(estimator, recorder)
        trainer = Trainer(
            config=config,
            pm=pm,
            engine=engine,
            runner=RolloutRunner(engine, tools, config),
            reward=reward,
            filters=filters,
            backend=backend,
            estimator=estimator,
            policy_loss=pm.build("policy_loss", config.algorithm.policy_loss, config),
            sampler=sampler,
            valid=valid,
            checkpoints=root,
            total_steps=total_steps,
            steps_per_epoch=steps_per_epoch,
            epoch_limit=None if config.total_training_steps else config.total_epochs,
            recorder=recorder,
        )
        if resume_from is not None:
            state = ckpt.load_checkpoint(resume_from, backend, config)
            sampler.load_state_dict(state["sampler"])
            trainer.step = int(state["step"])
            forget_after(config.run_dir, trainer.step)
            replay_lost_report(trainer, state)
            log.info(
                "resumed from %s: continuing at step %d of %d", resume_from, trainer.step + 1, total_steps
            )
        check_weight_sync(
            backend, engine, bucket_mb=config.trainer.weight_sync_bucket_mb, model=config.model_name
        )
        log.info(
            "training %s for %d steps (%d per epoch, %d training problems); checkpoints in %s",
            config.model_name,
            total_steps,
            steps_per_epoch,
            len(train_problems),
            root,
        )
        handed.append(True)
        metrics = asyncio.run(with_tools_closed(train(trainer), tools))
    latest = ckpt.find_latest(root)
    report_files(config, trainer.step, latest)
    return {
        **metrics,
        "steps": trainer.step,
        "checkpoint": str(latest) if latest else None,
    }


def report_files(config: ExperimentConfig, steps: int, latest: Path | None) -> None:
    """The last lines of a training run: where everything went, and what to do next."""
    from simpletir.core.loggers import METRICS_FILE, run_log_path
    from simpletir.viewer import view_hint

    assert config.run_dir is not None
    logs = Path(config.logs_dir)
    validations = sorted(logs.glob(f"{config.run_name}_val_epoch_*.json"), key=lambda p: p.stat().st_mtime)
    lines = [
        f"trained {steps} steps",
        f"  step metrics:  {Path(config.run_dir) / METRICS_FILE}",
        f"  validation:    {validations[-1] if validations else '(none: test_freq=-1)'}",
        f"  checkpoint:    {latest or '(none: save_freq=-1)'}",
        f"  run log:       {run_log_path(config)}",
        f"  trajectories:  {view_hint(config.run_dir, logs, config.run_name)}",
    ]
    if not config.trainer.record_rollouts:
        lines.append("                 (the steps' own rollouts too with trainer.record_rollouts=true)")
    if latest is not None:
        lines.append(
            f"  export:        simpletir export --ckpt_path {latest} --output_path models/{config.run_name}"
        )
        lines.append(f"  continue:      RESUME=True simpletir-run ... total_training_steps={steps + 1}")
    log.info("%s", "\n".join(lines))


def replay_lost_report(trainer: Any, state: dict[str, Any]) -> None:
    """A run killed between saving step N and reporting it: report N's saved metrics now."""
    from simpletir.core.loggers import METRICS_FILE, read_metrics
    from simpletir.core.run import report_step
    from simpletir.core.types import StepReport

    path = Path(trainer.config.run_dir) / METRICS_FILE
    reported = (
        {r["step"] for r in read_metrics(path) if r.get("phase") == "train"} if path.is_file() else set()
    )
    if trainer.step not in reported and state.get("metrics"):
        report_step(
            trainer.pm, StepReport(step=trainer.step, epoch=int(state["epoch"]), metrics=state["metrics"])
        )


__all__ = ["run_training"]
