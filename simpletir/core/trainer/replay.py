"""``simpletir replay RUN_DIR --steps a:b``: re-run recorded steps' updates, without engine or sandbox.

A run recorded with ``trainer.record_rollouts=true`` holds every step's scored rollouts
(:mod:`simpletir.core.trainer.record`). Replay runs the training loop itself
(:func:`simpletir.core.trainer.loop.train`: the same ``collect``, filters, advantage estimator,
``loss_function`` and ``backend.train_step``) on those rollouts: the prompt sampler hands out
the recorded draws, the "rollout" returns the recorded groups, the "reward" returns the
recorded verdicts, and the engine only takes the weights. The replay records its own steps
the same way, and each step is compared with the original: the filter decisions, the
advantages (bit for bit), the step's metrics (loss, gradient norm, clip fractions...) and the
digest of every parameter after the update.

Steps ``a..b`` start from the weights and optimiser state before step ``a``: the model itself
for ``a = 1``, else the checkpoint of step ``a - 1`` (``save_freq=1`` keeps one per step).
On the CPU, with the recorded torch thread count, an unchanged configuration reproduces every
number exactly. Overrides (``algorithm.adv_estimator=rloo``, ``filters=[void_turn]``) replay the
same rollouts under another algorithm or filter, the regression harness for such plugins: the
report then says what changed. Exit status 0 when every step matched, 1 when one differed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from simpletir.core.batching import PromptSampler
from simpletir.core.errors import SimpletirError
from simpletir.core.rollout.engine import Generation, PolicyEngine, SamplingParams
from simpletir.core.trainer.record import (
    FOLDER,
    RecordingEstimator,
    RolloutRecorder,
    StepRecord,
    read_step,
    record_path,
    recorded_steps,
)
from simpletir.core.types import Problem, RewardInput, RewardResult, TrajectoryGroup

if TYPE_CHECKING:
    from simpletir.core.config import ExperimentConfig
    from simpletir.core.plugins import SimpletirPluginManager


class ReplayError(SimpletirError):
    """A replay that cannot run: no record, no checkpoint to start from, a step that diverged."""


# -- stand-ins for the engine, the rollout, the reward and the sampler -------------------------


class RecordedDraws:
    """The recorded draws in order: the sampler hands out their problems, the runner their groups."""

    retried_trajectories = 0  # what the rollout runner counts; nothing is rolled out again here

    def __init__(self, records: Sequence[StepRecord]) -> None:
        self._queue = [(r.step, i, d) for r in records for i, d in enumerate(r.draws)]
        self._next = 0
        self.current: tuple[int, int] | None = None

    def take(self, k: int) -> list[Problem]:
        if self._next >= len(self._queue):
            raise ReplayError("the replay asked for a rollout draw that was not recorded (filters changed?)")
        step, number, draw = self._queue[self._next]
        if k != draw.prompts:
            raise ReplayError(
                f"step {step} draw {number}: the replay asked for {k} prompts, the record has {draw.prompts}"
            )
        self._next += 1
        self.current = (step, number)
        return draw.problems

    async def arun(
        self, problems: Sequence[Problem], n: int | None = None, training: bool = False, **options: Any
    ) -> list[TrajectoryGroup]:
        assert self.current is not None, "arun before take"
        step, number = self.current
        expected = ("train", step, number)
        seed_round = options.get("seed_round")
        if seed_round is not None and tuple(seed_round) != expected:
            raise ReplayError(f"the loop rolled out {seed_round}, the record holds {expected}")
        draw = self._queue[self._next - 1][2]
        return list(draw.groups)


class RecordedSampler(PromptSampler):
    """A :class:`PromptSampler` whose ``take`` returns the recorded draws' problems."""

    def __init__(self, draws: RecordedDraws, problems: Sequence[Problem], epoch: int) -> None:
        super().__init__(problems, seed=0, shuffle=False)
        self.draws = draws
        self.epoch = epoch

    def take(self, k: int) -> list[Problem]:
        return self.draws.take(k)


class RecordedVerdicts:
    """A reward whose verdict on a recorded trajectory is the one it was recorded with."""

    name = "recorded"

    def score_inputs(self, inputs: Sequence[RewardInput]) -> list[RewardResult]:
        verdicts = []
        for item in inputs:
            if item.trajectory.reward is None:
                raise ReplayError(f"trajectory {item.trajectory.problem_id} was recorded without a verdict")
            verdicts.append(item.trajectory.reward)
        return verdicts

    def score_many(self, pairs: Sequence[tuple[str, str]]) -> list[RewardResult]:
        raise ReplayError("the replay scores only recorded trajectories")

    def close(self) -> None:
        pass


class WeightSink(PolicyEngine):
    """An engine that takes the new weights (so ``perf/sync_bytes`` is counted as in the run)."""

    tokenizer = None
    eos_token_ids: frozenset[int] = frozenset()
    max_model_len = 0

    async def generate(self, prompt_ids: Sequence[int], params: SamplingParams) -> Generation:
        raise ReplayError("the replay generates nothing")

    def update_weights(
        self, named_tensors: Iterable[tuple[str, torch.Tensor]], *, bucket_bytes: int | None = None
    ) -> None:
        for _ in named_tensors:
            pass

    def close(self) -> None:
        pass


# -- comparing ---------------------------------------------------------------------------------


@dataclass
class StepComparison:
    step: int
    differences: list[str] = field(default_factory=list)
    loss: tuple[float | None, float | None] = (None, None)

    @property
    def same(self) -> bool:
        return not self.differences


def compare_steps(recorded: StepRecord, replayed: StepRecord) -> StepComparison:
    out = StepComparison(
        recorded.step, loss=(recorded.metrics.get("actor/loss"), replayed.metrics.get("actor/loss"))
    )
    if recorded.kept != replayed.kept:
        out.differences.append("filter decisions (kept groups or loss masks)")
    if recorded.advantages != replayed.advantages:
        a, b = recorded.advantages or (), replayed.advantages or ()
        if len(a) != len(b):
            out.differences.append(f"advantages: {len(a)} recorded, {len(b)} replayed")
        else:
            worst = max((abs(x - y) for x, y in zip(a, b, strict=True)), default=0.0)
            out.differences.append(f"advantages (max |difference| {worst:.3g})")
    # A metric only one side has comes from another simpletir version, not from the update.
    for key in sorted(set(recorded.metrics) & set(replayed.metrics)):
        old, new = recorded.metrics[key], replayed.metrics[key]
        if old != new:
            out.differences.append(f"{key}: recorded {old!r}, replayed {new!r}")
    if recorded.params_sha256 != replayed.params_sha256:
        out.differences.append("parameters after the update (sha256 differs)")
    return out


# -- the replay --------------------------------------------------------------------------------


def parse_steps(text: str) -> tuple[int, int]:
    """``"3"`` -> (3, 3); ``"2:5"`` -> (2, 5), both ends included."""
    first, _, last = text.partition(":")
    try:
        a, b = int(first), int(last or first)
    except ValueError as exc:
        raise ReplayError(f"--steps {text!r}: expected N or A:B (training steps, both included)") from exc
    if a < 1 or b < a:
        raise ReplayError(f"--steps {text!r}: need 1 <= A <= B")
    return a, b


def replay_config(run_dir: Path, overrides: Sequence[str], last_step: int) -> ExperimentConfig:
    from simpletir.core.config_load import load_config

    config = load_config(run_dir / "config.yaml", overrides, environ={})
    return dataclasses.replace(
        config,
        run_dir=str(run_dir),
        resume=False,
        total_training_steps=last_step,
        test_freq=-1,
        save_freq=-1,
        val_before_train=False,
        rollout=dataclasses.replace(config.rollout, progress=False),
        trainer=dataclasses.replace(config.trainer, record_rollouts=True),
    )


def start_weights(config: ExperimentConfig, first_step: int, backend: Any) -> str:
    """Load the weights and optimiser state of step ``first_step - 1``; say where they came from."""
    if first_step == 1:
        return f"the model {config.model_name} (step 0)"
    from simpletir.core.trainer import checkpoint as ckpt

    folder = ckpt.checkpoint_dir(ckpt.checkpoint_root(config), first_step - 1)
    if not (folder / ckpt.STATE_FILE).is_file():
        have = [p.name for p in ckpt.complete_checkpoints(ckpt.checkpoint_root(config))]
        raise ReplayError(
            f"replaying from step {first_step} needs the checkpoint of step {first_step - 1} ({folder}); "
            f"there are {have or 'none'} (record with save_freq=1 to replay any step, or start at 1)"
        )
    ckpt.load_checkpoint(folder, backend, config)
    return str(folder)


def replay(
    run_dir: str | Path,
    steps: tuple[int, int],
    *,
    overrides: Sequence[str] = (),
    out_dir: str | Path,
    pm: SimpletirPluginManager | None = None,
) -> list[StepComparison]:
    """Replay ``steps`` of the recorded run; the replay's own records go to ``out_dir``."""
    from simpletir.core.backend import build_backend
    from simpletir.core.config_load import validate_config
    from simpletir.core.filtering import build_filters
    from simpletir.core.plugins import make_plugin_manager
    from simpletir.core.rollout.models import resolve_model
    from simpletir.core.trainer.loop import Trainer, train

    run_dir = Path(run_dir)
    first, last = steps
    folder = run_dir / FOLDER
    missing = [s for s in range(first, last + 1) if not record_path(folder, s).is_file()]
    if missing:
        have = recorded_steps(folder)
        raise ReplayError(
            f"{run_dir}: no rollout record of step(s) {missing} (recorded: {have or 'none'}; "
            "train with trainer.record_rollouts=true)"
        )
    records = [read_step(record_path(folder, s)) for s in range(first, last + 1)]
    pm = pm or make_plugin_manager()
    config = validate_config(replay_config(run_dir, overrides, last), pm, check_data=False)
    threads = int(records[0].header.get("torch_threads", torch.get_num_threads()))
    torch.set_num_threads(threads)  # float sums depend on it: the recording run's count

    draws = RecordedDraws(records)
    # the sampler's own problem list is never drawn from (take() returns the records'), only non-empty
    problems = [p for r in records for d in r.draws for p in d.problems] or [Problem("-", "-", (), "")]
    recorder = RolloutRecorder(Path(out_dir))
    backend = build_backend(config, resolve_model(config.model_name))
    try:
        origin = start_weights(config, first, backend)
        print(
            f"replay: steps {first}..{last} of {run_dir}, from {origin}, torch threads {threads}",
            file=sys.stderr,
        )
        trainer = Trainer(
            config=config,
            pm=pm,
            engine=WeightSink(),
            runner=cast(Any, draws),
            reward=cast(Any, RecordedVerdicts()),
            filters=build_filters(pm, config),
            backend=backend,
            estimator=RecordingEstimator(
                pm.build("advantage_estimator", config.algorithm.adv_estimator, config), recorder
            ),
            policy_loss=pm.build("policy_loss", config.algorithm.policy_loss, config),
            sampler=RecordedSampler(draws, problems, epoch=int(records[0].header.get("epoch", 0))),
            valid={},
            checkpoints=Path(out_dir) / "checkpoints",
            total_steps=last,
            steps_per_epoch=1,
            step=first - 1,
            recorder=recorder,
        )
        asyncio.run(train(trainer))
    finally:
        backend.close()
    return [compare_steps(r, read_step(record_path(out_dir, r.step))) for r in records]


def report(comparisons: Sequence[StepComparison]) -> str:
    lines = []
    for c in comparisons:
        old, new = c.loss
        loss = f"loss {old!r} -> {new!r}" if old is not None or new is not None else "no update"
        verdict = "same" if c.same else f"DIFFERS in {len(c.differences)}"
        lines.append(f"step {c.step}: {verdict} ({loss})")
        lines.extend(f"    {d}" for d in c.differences[:20])
        if len(c.differences) > 20:
            lines.append(f"    ... and {len(c.differences) - 20} more")
    same = sum(c.same for c in comparisons)
    lines.append(
        f"replay: {same} of {len(comparisons)} steps reproduced exactly "
        "(filter decisions, advantages, metrics, parameters)"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="simpletir replay",
        description="Re-run the updates of recorded training steps (trainer.record_rollouts=true) on their "
        "recorded rollouts, with no engine or sandbox, and compare filter decisions, advantages, metrics "
        "and parameters with the original. Exit 0 when all match, 1 when one differs.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the recorded run's folder (runs/<name>)")
    parser.add_argument(
        "--steps", required=True, help="N or A:B (both included); A > 1 needs step A-1's checkpoint"
    )
    parser.add_argument(
        "--out", default=None, help="keep the replay's own records here (default: a temporary folder)"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="replay under changed settings, e.g. algorithm.adv_estimator=rloo",
    )
    args = parser.parse_intermixed_args(list(sys.argv[1:] if argv is None else argv))
    steps = parse_steps(args.steps)
    with tempfile.TemporaryDirectory(prefix="simpletir-replay-") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        comparisons = replay(args.run_dir, steps, overrides=args.overrides, out_dir=out)
    print(report(comparisons))
    return 0 if all(c.same for c in comparisons) else 1
