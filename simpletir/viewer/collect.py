"""Reading a run folder into what the viewer shows: sets of problems, each with its samples.

A *set* is one batch of trajectories of a run:

* ``evaluation``: a ``val_only`` run's ``<logs>/<run>_accuracy.json`` and ``_generations.jsonl``;
* ``validation step N``: a training run's ``<logs>/<run>_val_epoch_<N>_generations.jsonl``;
* ``training step N``: a recorded step, ``<run_dir>/rollouts/step_<N>.jsonl``
  (``trainer.record_rollouts``): every group rolled out, its verdicts, what the filters kept
  and masked, the advantages, and every token with its loss mask and engine log-prob.

Each problem becomes one row (pass rate, void / truncated / tool-error counts) and one detail
record (its samples, turn by turn), which the page decompresses only when it is opened.
Nothing here starts an engine or a sandbox; the record reader (torch) and the tokenizer (the
token pieces of recorded steps) are imported only when a run has records.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from simpletir.core.errors import SimpletirError
from simpletir.core.loggers import METRICS_FILE, read_metrics

QUESTION_CHARS = 300  # of a question in the problem table (the detail view has all of it)
STEP_METRICS = (  # the training-step table of the overview
    "reward/mean",
    "env/void_turn_ratio",
    "response_length/mean",
    "batch/effective_batch_size",
    "batch/trained_trajectories",
    "actor/loss",
    "actor/grad_norm",
    "actor/entropy",
    "actor/pg_clipfrac",
    "rollout/kl_engine_trainer",
    "timing/step_s",
)


@dataclass
class ProblemSet:
    """One set of a run: its problems' table rows and their detail records (same order)."""

    label: str
    kind: str  # evaluation | validation | training
    step: int | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    details: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class RunData:
    name: str
    path: str
    kind: str  # evaluation | training
    settings: dict[str, Any]
    steps: list[dict[str, Any]]
    sets: list[ProblemSet]
    notes: list[str] = field(default_factory=list)


# -- one sample -------------------------------------------------------------------------------


def turn_view(turn: Mapping[str, Any]) -> dict[str, Any]:
    """A turn as the page shows it (from a generations line or a recorded trajectory)."""
    result = turn.get("tool_result") or None
    out: dict[str, Any] = {"text": turn.get("text", ""), "void": bool(turn.get("is_void"))}
    if turn.get("code") is not None:
        out["code"] = turn["code"]
    if result is not None:
        ok = (
            result.get("exit_code") == 0
            and not result.get("timed_out")
            and not result.get("killed_by")
            and not result.get("error")
        )
        out["tool"] = {
            "stdout": result.get("stdout", ""),
            "stderr": result.get("stderr", ""),
            "exit_code": result.get("exit_code"),
            "timed_out": bool(result.get("timed_out")),
            "killed_by": result.get("killed_by"),
            "error": result.get("error"),
            "ms": round(float(result.get("duration_ms") or 0.0), 1),
            "ok": ok,
        }
    if turn.get("observation") is not None:
        out["obs"] = turn["observation"]
    if turn.get("final_answer") is not None:
        out["final"] = turn["final_answer"]
    if turn.get("truncated"):
        out["truncated"] = True
    if turn.get("stop_reason"):
        out["stop"] = turn["stop_reason"]
    return out


def sample_flags(sample: Mapping[str, Any]) -> dict[str, bool]:
    turns = sample.get("turns", [])
    return {
        "correct": float(sample.get("score") or 0.0) > 0.0,
        "void": any(t.get("void") for t in turns),
        "truncated": bool(sample.get("truncated")),
        "tool_error": any(t.get("tool") is not None and not t["tool"]["ok"] for t in turns),
        "tool_use": any(t.get("tool") is not None for t in turns),
        "answered": sample.get("answer") not in (None, ""),
    }


def problem_row(key: int, problem: Mapping[str, Any], samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    flags = [sample_flags(s) for s in samples]
    n = len(samples)
    correct = sum(f["correct"] for f in flags)
    row = {
        "key": key,
        "pid": problem["id"],
        "bench": problem["benchmark"],
        "q": problem["question"][:QUESTION_CHARS],
        "gt": problem["ground_truth"],
        "n": n,
        "correct": correct,
        "pass": correct / n if n else 0.0,
        "void": sum(f["void"] for f in flags),
        "trunc": sum(f["truncated"] for f in flags),
        "toolerr": sum(f["tool_error"] for f in flags),
        "tooluse": sum(f["tool_use"] for f in flags),
        "answered": sum(f["answered"] for f in flags),
        "tokens": round(sum(int(s.get("response_tokens") or 0) for s in samples) / n, 1) if n else 0,
    }
    if "kept" in problem:
        row["kept"] = problem["kept"]
    return row


def set_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Per benchmark and overall: problems, samples, pass@1, pass@n, answer / void / trunc / tool rates."""
    by: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by.setdefault(row["bench"], []).append(row)
    if len(by) > 1:
        by["overall"] = list(rows)
    out = {}
    for name, group in by.items():
        samples = sum(r["n"] for r in group) or 1
        out[name] = {
            "problems": len(group),
            "samples": sum(r["n"] for r in group),
            "pass@1": sum(r["correct"] for r in group) / samples,
            "pass@n": sum(r["correct"] > 0 for r in group) / max(len(group), 1),
            "answer_rate": sum(r["answered"] for r in group) / samples,
            "void_rate": sum(r["void"] for r in group) / samples,
            "trunc_rate": sum(r["trunc"] for r in group) / samples,
            "tool_use_rate": sum(r["tooluse"] for r in group) / samples,
            "tool_error_rate": sum(r["toolerr"] for r in group) / samples,
        }
        if any("kept" in r for r in group):
            out[name]["kept_groups"] = sum(bool(r.get("kept")) for r in group)
    return out


# -- evaluation and validation sets (generations files) ---------------------------------------


def generation_sample(line: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "i": line.get("sample_index", 0),
        "score": line.get("score"),
        "reason": line.get("reason"),
        "answer": line.get("answer"),
        "finish": line.get("finish_reason"),
        "truncated": bool(line.get("truncated")),
        "trunc_cause": line.get("truncation_cause"),
        "response_tokens": line.get("response_tokens"),
        "extra": line.get("reward_extra") or {},
        "turns": [turn_view(t) for t in line.get("turns", [])],
    }


def read_generations(path: Path, label: str, kind: str, step: int | None, max_samples: int) -> ProblemSet:
    """A generations file as one set (samples of a problem grouped, file order kept)."""
    problems: dict[tuple[str, str], dict[str, Any]] = {}
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with path.open(encoding="utf-8") as handle:
        for text in handle:
            if not text.strip():
                continue
            line = json.loads(text)
            key = (line["benchmark"], str(line["problem_id"]))
            if key not in problems:
                problems[key] = {
                    "id": str(line["problem_id"]),
                    "benchmark": line["benchmark"],
                    "question": line.get("question", ""),
                    "ground_truth": line.get("ground_truth", ""),
                }
                samples[key] = []
            samples[key].append(generation_sample(line))
    out = ProblemSet(label=label, kind=kind, step=step)
    for number, (key, problem) in enumerate(problems.items()):
        group = samples[key]
        out.rows.append(problem_row(number, problem, group))
        shown = group if max_samples <= 0 else group[:max_samples]
        out.details.append({**problem, "samples": shown, "hidden": len(group) - len(shown)})
    if max_samples > 0 and any(d["hidden"] for d in out.details):
        out.notes.append(f"detail view: the first {max_samples} samples of each problem (--samples)")
    return out


# -- recorded training steps ------------------------------------------------------------------


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet (printable stand-ins for the 256 bytes), reversed."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def token_pieces(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """The text of each token; a character split over tokens shows on the token that completes it."""
    if tokenizer is None:
        return [f"\u2039{i}\u203a" for i in ids]
    table = _byte_decoder()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces = []
    for raw in tokenizer.convert_ids_to_tokens(list(ids)):
        raw = raw or ""
        if raw and all(ch in table for ch in raw):
            pieces.append(decoder.decode(bytes(table[ch] for ch in raw)))
        else:  # a special token or a non-byte-level vocabulary
            pieces.append(decoder.decode(b"", final=True) + tokenizer.convert_tokens_to_string([raw]))
            decoder.reset()
    return pieces


def load_tokenizer(model_name: str) -> tuple[Any, str | None]:
    """The model's tokenizer, or (None, why not): token ids are then shown as numbers."""
    try:
        from transformers import AutoTokenizer

        from simpletir.core.rollout.models import resolve_model

        return AutoTokenizer.from_pretrained(resolve_model(model_name)), None
    except Exception as exc:  # the viewer still works without token text
        return None, f"no tokenizer for {model_name!r} ({type(exc).__name__}: {exc}); tokens shown as ids"


def recorded_sample(trajectory: Any, tokenizer: Any, advantage: float | None, kept: bool) -> dict[str, Any]:
    from simpletir.core.serialize import turn_to_dict

    reward = trajectory.reward
    turns = [turn_view(turn_to_dict(t)) for t in trajectory.turns]
    obs_spans = [list(t.obs_span) for t in trajectory.turns if t.obs_span is not None]
    return {
        "i": trajectory.sample_index,
        "score": reward.score if reward else None,
        "reason": reward.reason if reward else None,
        "answer": reward.extracted if reward else None,
        "finish": str(trajectory.finish_reason),
        "truncated": trajectory.truncated,
        "trunc_cause": trajectory.truncation_cause,
        "response_tokens": len(trajectory.response_ids),
        "extra": dict(reward.extra) if reward else {},
        "turns": turns,
        "prompt": trajectory.prompt_text,
        "kept": kept,
        "masked": list(trajectory.mask_reasons),
        "adv": advantage,
        "tok": {
            "s": token_pieces(tokenizer, trajectory.response_ids),
            "m": list(trajectory.loss_mask),
            "lp": [round(v, 4) for v in trajectory.logprobs],
            "obs": obs_spans,
        },
    }


def read_record(path: Path, tokenizer: Any, max_samples: int) -> ProblemSet:
    """One recorded step as a set: every group rolled out, kept or not, with its filter decision."""
    from simpletir.core.trainer.record import read_step

    record = read_step(path)
    kept = {(k["benchmark"], k["problem_id"]): k for k in record.kept}
    # advantages are in group-then-sample order over the kept groups (masked trajectories included)
    values = iter(record.advantages or ())
    advantage: dict[tuple[str, str, int], float] = {}
    for k in record.kept:
        for t in k["trajectories"]:
            advantage[(k["benchmark"], k["problem_id"], t["sample_index"])] = next(values, float("nan"))
    out = ProblemSet(label=f"training step {record.step}", kind="training", step=record.step)
    for draw_number, draw in enumerate(record.draws):
        for group in draw.groups:
            problem_key = (group.problem.benchmark, group.problem.id)
            decision = kept.get(problem_key)
            decided = {t["sample_index"]: t for t in decision["trajectories"]} if decision else {}
            samples = []
            for trajectory in group.trajectories:
                key = (*problem_key, trajectory.sample_index)
                sample = recorded_sample(trajectory, tokenizer, advantage.get(key), kept=decision is not None)
                if trajectory.sample_index in decided:  # the filters' verdict on the trained copy
                    verdict = decided[trajectory.sample_index]
                    sample["masked"] = verdict["mask_reasons"]
                    sample["loss_tokens"] = verdict["loss_tokens"]
                    if verdict["loss_tokens"] == 0:  # masked whole: nothing of it was trained
                        sample["tok"]["m"] = [0] * len(sample["tok"]["m"])
                samples.append(sample)
            problem = {
                "id": group.problem.id,
                "benchmark": group.problem.benchmark,
                "question": group.problem.question,
                "ground_truth": group.problem.ground_truth,
                "kept": decision is not None,
                "draw": draw_number,
            }
            out.rows.append(problem_row(len(out.rows), problem, samples))
            shown = samples if max_samples <= 0 else samples[:max_samples]
            out.details.append({**problem, "samples": shown, "hidden": len(samples) - len(shown)})
    out.notes.append(
        "loss mask: what the trainer used for trajectories a filter masked whole (void turn...); "
        "otherwise the rollout's mask (a filter's partial edit shows only in 'loss tokens')"
    )
    return out


# -- a run ------------------------------------------------------------------------------------


def read_config(path: Path) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    return data if isinstance(data, dict) else {}


def logs_dir_of(run_dir: Path, config: Mapping[str, Any]) -> Path:
    logs = Path(str(config.get("logs_dir", "logs")))
    if logs.is_absolute() or logs.is_dir():
        return logs
    beside = run_dir.parent.parent / logs
    return beside if beside.is_dir() else logs


def _step_of(path: Path, prefix: str, suffix: str) -> int | None:
    middle = path.name[len(prefix) : len(path.name) - len(suffix)]
    return int(middle) if middle.isdigit() else None


def settings_of(config: Mapping[str, Any]) -> dict[str, Any]:
    rollout = config.get("rollout", {}) or {}
    algorithm = config.get("algorithm", {}) or {}
    keys = {
        "model_name": config.get("model_name"),
        "train_dataset": None if config.get("val_only") else config.get("train_dataset"),
        "valid_dataset": config.get("valid_dataset"),
        "mask_void_turns": config.get("mask_void_turns"),
        "filters": config.get("filters"),
        "max_turns": config.get("max_turns"),
        "max_response_length": config.get("max_response_length"),
        "rollout.n": rollout.get("n"),
        "n_val": config.get("n_val"),
        "temperature": rollout.get("temperature"),
        "adv_estimator": algorithm.get("adv_estimator"),
        "lr": algorithm.get("lr"),
    }
    return {k: v for k, v in keys.items() if v is not None}


def read_run(run_dir: str | Path, *, max_samples: int = 0, max_steps: int = 0) -> RunData:
    """Everything the viewer shows of one run folder (``runs/<name>``)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SimpletirError(f"{run_dir}: no such run folder")
    config = read_config(run_dir / "config.yaml")
    name = run_dir.name
    logs = logs_dir_of(run_dir, config)
    kind = "evaluation" if config.get("val_only") else "training"
    run = RunData(name=name, path=str(run_dir), kind=kind, settings=settings_of(config), steps=[], sets=[])
    if (run_dir / METRICS_FILE).is_file():
        by_step: dict[int, dict[str, Any]] = {}
        for record in read_metrics(run_dir / METRICS_FILE):
            if record.get("phase") == "train":
                metrics = record.get("metrics", {})
                by_step[int(record["step"])] = {k: metrics[k] for k in STEP_METRICS if k in metrics}
        run.steps = [{"step": s, **m} for s, m in sorted(by_step.items())]
    evaluation = logs / f"{name}_generations.jsonl"
    if evaluation.is_file():
        run.sets.append(read_generations(evaluation, "evaluation", "evaluation", None, max_samples))
    prefix, suffix = f"{name}_val_epoch_", "_generations.jsonl"
    validations = [(p, _step_of(p, prefix, suffix)) for p in logs.glob(f"{prefix}*{suffix}")]
    for path, step in sorted(((p, s) for p, s in validations if s is not None), key=lambda ps: ps[1]):
        run.sets.append(read_generations(path, f"validation step {step}", "validation", step, max_samples))
    records = run_dir / "rollouts"
    if records.is_dir():
        from simpletir.core.trainer.record import record_path, recorded_steps

        steps = recorded_steps(records)
        if max_steps > 0 and len(steps) > max_steps:
            run.notes.append(f"showing the last {max_steps} of {len(steps)} recorded steps (--steps)")
            steps = steps[-max_steps:]
        if steps:
            tokenizer, why = load_tokenizer(str(config.get("model_name", "")))
            if why:
                run.notes.append(why)
            for step in steps:
                run.sets.append(read_record(record_path(records, step), tokenizer, max_samples))
    if not run.sets:
        run.notes.append(
            "no trajectories found: an evaluation writes them with output_acc_to_file=true, a training "
            "run's validations likewise, and its steps with trainer.record_rollouts=true"
        )
    return run
