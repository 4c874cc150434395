"""Recording a training run's rollouts, step by step, losslessly (``trainer.record_rollouts=true``).

Each step leaves ``<run_dir>/rollouts/step_<N>.jsonl``, written atomically when the step ends::

    {"record": "simpletir-rollouts", "version": 1, "step": 3, "weight_version": 2, ...}   header
    {"draw": 0, "prompts": 8}                                 one line per rollout draw, then
    {"draw": 0, "group": {<serialize.group_to_dict>}}         one line per group of that draw
    {"kept": [{"problem_id": ..., "trajectories": [...]}]}    what the filters decided
    {"outcome": {"advantages": {"f64": ...}, "metrics": {...}, "params_sha256": "..."}}

The groups are the scored groups as the rollout returned them, before any filter: token ids,
engine log-probs (bit for bit), turns with tool calls and outputs, verdicts
(:mod:`simpletir.core.serialize`). ``weight_version`` is the step whose weights sampled them
(``step - 1``: the engine gets new weights at the end of every step). The outcome records what
the update made of them: the advantages, the step's metrics (loss, grad norm, clip fractions)
and a digest of every parameter after the update, so :mod:`simpletir.core.trainer.replay` can
re-run the update on the recorded rollouts and say whether it got the same.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from simpletir.core.fileio import atomic_write_jsonl
from simpletir.core.serialize import group_from_dict, group_to_dict, pack_floats, unpack_floats
from simpletir.core.types import Problem, Trajectory, TrajectoryGroup

if TYPE_CHECKING:
    from simpletir.core.backend import TrainerBackend
    from simpletir.core.specs import AdvantageEstimator

FOLDER = "rollouts"
MAGIC = "simpletir-rollouts"
VERSION = 1


def record_path(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"step_{step:06d}.jsonl"


def recorded_steps(folder: str | Path) -> list[int]:
    """The steps that have a complete record in ``folder``, in order."""
    steps = []
    for path in Path(folder).glob("step_*.jsonl"):
        number = path.stem.removeprefix("step_")
        if number.isdigit():
            steps.append(int(number))
    return sorted(steps)


def parameters_digest(backend: TrainerBackend) -> str:
    """sha256 over every parameter's name, dtype, shape and bytes: equal only if bit-identical."""
    h = hashlib.sha256()
    for name, tensor in backend.named_hf_tensors():
        value = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{value.dtype}|{tuple(value.shape)}\n".encode())
        h.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return h.hexdigest()


def mask_digest(trajectory: Trajectory) -> str:
    return hashlib.sha256(bytes(trajectory.loss_mask)).hexdigest()[:16]


def filter_decisions(groups: Sequence[TrajectoryGroup]) -> list[dict[str, Any]]:
    """The kept groups, in order, and what the filters did to each trajectory's loss mask."""
    return [
        {
            "problem_id": g.problem.id,
            "benchmark": g.problem.benchmark,
            "trajectories": [
                {
                    "sample_index": t.sample_index,
                    "mask_reasons": list(t.mask_reasons),
                    "loss_tokens": t.num_loss_tokens,
                    "loss_mask_sha": mask_digest(t),
                }
                for t in g.trajectories
            ],
        }
        for g in groups
    ]


def finite_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """What a record keeps of a step's metrics: the finite numbers that do not measure time."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if not k.startswith(("timing/", "perf/")) and isinstance(v, int | float) and math.isfinite(v)
    }


@dataclass
class _Step:
    draws: list[tuple[int, list[TrajectoryGroup]]] = field(default_factory=list)
    kept: list[dict[str, Any]] | None = None
    advantages: list[float] | None = None


class RolloutRecorder:
    """Collects one step's draws, filter decisions and advantages; writes them when the step ends.

    The loop calls :meth:`draw` for every scored draw and :meth:`kept` with the groups the
    filters kept (both in ``collect``), and :meth:`finish` after the update; the advantages
    arrive through :class:`RecordingEstimator`, which wraps the configured estimator.
    """

    def __init__(self, folder: str | Path, *, extra_header: Mapping[str, Any] | None = None) -> None:
        self.folder = Path(folder)
        self.extra_header = dict(extra_header or {})
        self._steps: dict[int, _Step] = {}
        self._current: int | None = None

    def _step(self, step: int) -> _Step:
        self._current = step
        return self._steps.setdefault(step, _Step())

    def draw(self, step: int, problems: Sequence[Problem], groups: Sequence[TrajectoryGroup]) -> None:
        self._step(step).draws.append((len(problems), list(groups)))

    def kept(self, step: int, groups: Sequence[TrajectoryGroup]) -> None:
        self._step(step).kept = filter_decisions(groups)

    def advantages(self, values: torch.Tensor) -> None:
        if self._current is not None:
            self._step(self._current).advantages = [float(v) for v in values.detach().cpu().flatten()]

    def finish(self, step: int, metrics: Mapping[str, float], backend: TrainerBackend, *, epoch: int) -> Path:
        """Write ``step_<N>.jsonl`` (atomically) and forget the step."""
        record = self._steps.pop(step, _Step())
        self._current = None
        header = {
            "record": MAGIC,
            "version": VERSION,
            "step": step,
            "weight_version": step - 1,
            "epoch": epoch,
            "torch_threads": torch.get_num_threads(),
            **self.extra_header,
        }
        outcome = {
            "advantages": pack_floats(record.advantages) if record.advantages is not None else None,
            "metrics": finite_metrics(metrics),
            "params_sha256": parameters_digest(backend),
        }

        def lines() -> Iterator[dict[str, Any]]:
            yield header
            for number, (prompts, groups) in enumerate(record.draws):
                yield {"draw": number, "prompts": prompts}
                for group in groups:
                    yield {"draw": number, "group": group_to_dict(group)}
            yield {"kept": record.kept or []}
            yield {"outcome": outcome}

        return atomic_write_jsonl(record_path(self.folder, step), lines())


@dataclass
class RecordingEstimator:
    """The configured advantage estimator, telling the recorder what it computed."""

    inner: AdvantageEstimator
    recorder: RolloutRecorder
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = self.inner.name

    def compute(self, scores: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
        advantages = self.inner.compute(scores, group_ids)
        self.recorder.advantages(advantages)
        return advantages


# -- reading -----------------------------------------------------------------------------------


@dataclass
class Draw:
    prompts: int
    groups: list[TrajectoryGroup]

    @property
    def problems(self) -> list[Problem]:
        return [g.problem for g in self.groups]


@dataclass
class StepRecord:
    """One recorded step, read back."""

    header: dict[str, Any]
    draws: list[Draw]
    kept: list[dict[str, Any]]
    advantages: tuple[float, ...] | None
    metrics: dict[str, float]
    params_sha256: str

    @property
    def step(self) -> int:
        return int(self.header["step"])


def read_step(path: str | Path) -> StepRecord:
    """Read ``step_<N>.jsonl``; a file that is not a rollout record raises ``ValueError``."""
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        lines = [json.loads(line) for line in handle if line.strip()]
    if not lines or lines[0].get("record") != MAGIC:
        raise ValueError(f"{path} is not a simpletir rollout record")
    if lines[0].get("version") != VERSION:
        raise ValueError(
            f"{path}: record version {lines[0].get('version')!r}; this simpletir reads {VERSION}"
        )
    draws: list[Draw] = []
    kept: list[dict[str, Any]] = []
    outcome: dict[str, Any] = {}
    for line in lines[1:]:
        if "group" in line:
            draws[line["draw"]].groups.append(group_from_dict(line["group"]))
        elif "prompts" in line:
            draws.append(Draw(prompts=int(line["prompts"]), groups=[]))
        elif "kept" in line:
            kept = line["kept"]
        elif "outcome" in line:
            outcome = line["outcome"]
    packed = outcome.get("advantages")
    return StepRecord(
        header=lines[0],
        draws=draws,
        kept=kept,
        advantages=unpack_floats(packed) if packed is not None else None,
        metrics=dict(outcome.get("metrics", {})),
        params_sha256=str(outcome.get("params_sha256", "")),
    )
