"""The evaluation run (``val_only=true``): rollout -> reward -> metrics -> files.

``simpletir-run configs/eval.yaml val_only=true valid_dataset="aime24 aime25" n_val=32
max_turns=10 val_sample_size=500 output_acc_to_file=true`` reads top to bottom here:

1. load each benchmark of ``valid_dataset`` (names or SimpleTIR aliases; a name no plugin
   provides is read as ``<data_dir>/<name>.parquet``), a seeded subsample of
   ``val_sample_size`` problems each (-1 = all);
2. build the reward, the tools (none when ``tool_use=false``) and the policy engine;
3. sample ``n_val`` trajectories per problem with the *validation* sampling parameters
   (``rollout.val_temperature`` / ``val_top_p`` / ``val_top_k``, which the runner applies and
   the accuracy file records). Each problem's group is appended to
   ``<run_dir>/eval_journal.jsonl`` (fsynced) the moment its ``n_val`` samples are done; with
   ``resume`` the groups already there are read back and only the others are rolled out
   (:mod:`simpletir.core.eval_journal`; a journal of another configuration is refused);
4. score every trajectory, journaled and new alike, with ``reward.score_inputs`` (problem,
   trajectory, text, answer) when the reward has it, else ``reward.score_many`` (the scored
   text includes each tool's output, so an answer printed by ``final_answer()`` counts even in
   a last turn whose output was not appended for the model);
5. compute :mod:`simpletir.core.metrics` per benchmark and overall, print a summary table and,
   when ``output_acc_to_file``, write ``<logs_dir>/<run>_accuracy.json`` and
   ``<logs_dir>/<run>_generations.jsonl`` atomically. Without ``output_acc_to_file`` nothing
   is written to ``logs_dir`` (the seed's meaning of the flag); the metrics are still returned,
   printed, and saved by the run in ``<run_dir>/result.json``.

Everything built here is closed on the way out, error or not. The ``on_validation_end`` hook is
called by :func:`simpletir.core.run.run_experiment` with these metrics, not here, so a plugin
hears about a validation pass exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from simpletir.core.answers import answer_format as find_answer_format
from simpletir.core.components import build_spec, find_benchmark
from simpletir.core.config import ExperimentConfig
from simpletir.core.data import (
    dataset_path,
    describe_data_dir_search,
    read_parquet_problems,
    resolve_data_dir,
    sample_problems,
)
from simpletir.core.errors import ConfigError, DataError
from simpletir.core.eval_journal import JOURNAL_FILE, EvalJournal, evaluation_fingerprint
from simpletir.core.executor import open_executor
from simpletir.core.fileio import atomic_write_json, atomic_write_jsonl
from simpletir.core.metrics import evaluation_metrics
from simpletir.core.types import Problem, RewardInput, Trajectory, TrajectoryGroup

if TYPE_CHECKING:
    from simpletir.core.plugins import SimpletirPluginManager
    from simpletir.core.rollout import PolicyEngine, RolloutRunner
    from simpletir.core.specs import Reward, Tool

log = logging.getLogger(__name__)

SCORE_CHUNK = 256  # verdicts per score_many call: a progress bar that moves, batches that stay big


# -- 1. problems ------------------------------------------------------------------------------
def load_benchmarks(
    config: ExperimentConfig, pm: SimpletirPluginManager, *, split: str = "valid"
) -> dict[str, list[Problem]]:
    """``{benchmark name: problems}`` for ``config.valid_datasets`` (a seeded subsample of
    ``val_sample_size`` each) or, with ``split="train"``, every problem of ``config.train_datasets``."""
    data_dir = resolve_data_dir(config.data_dir)
    training = split == "train"
    limit = None if training or config.val_sample_size < 0 else config.val_sample_size
    key_name = "train_dataset" if training else "valid_dataset"
    loaded: dict[str, list[Problem]] = {}
    for name in config.train_datasets if training else config.valid_datasets:
        spec = find_benchmark(pm, name, config)  # a name two plugins claim: plugin_priority decides
        key = spec.name if spec is not None else name
        if key in loaded:
            print(
                f"simpletir: note: {key_name} names {key!r} twice (once as {name!r}); using it once",
                file=sys.stderr,
            )
            continue
        if spec is not None:
            benchmark = build_spec(spec, config)
            problems = benchmark.load(data_dir, limit=limit, seed=config.seed)
        else:  # a raw SimpleTIR dataset name: its parquet file must exist
            if data_dir is None:
                raise DataError(
                    f"dataset {name!r}: no data directory found ({describe_data_dir_search(config.data_dir)})"
                )
            problems = sample_problems(
                read_parquet_problems(dataset_path(data_dir, name), name), limit, config.seed
            )
        loaded[key] = problems
    if not any(loaded.values()):
        value = config.train_dataset if training else config.valid_dataset
        raise ConfigError(
            f"{key_name}={value!r} gives no problems"
            + ("" if training else f" with val_sample_size={config.val_sample_size}")
        )
    return loaded


# -- 4. scoring -------------------------------------------------------------------------------
def scoring_text(trajectory: Trajectory) -> str:
    """What the reward reads: each turn's text followed by its tool output.

    The appended observation when there is one; otherwise the recorded output of a call whose
    observation the loop did not append (last turn, EOS after a call), so a ``final_answer()``
    made there still counts.
    """
    parts: list[str] = []
    for turn in trajectory.turns:
        parts.append(turn.text)
        if turn.observation is not None:
            parts.append(turn.observation)
        elif turn.tool_result is not None and turn.tool_result.stdout:
            parts.append(f"\nCode execution result: {turn.tool_result.stdout}\n")
    return "".join(parts) if trajectory.turns else trajectory.response_text


def reward_inputs(groups: Sequence[TrajectoryGroup], answer_format: str = "boxed") -> list[RewardInput]:
    """One :class:`RewardInput` per trajectory, in group-then-sample order."""
    extract = find_answer_format(answer_format).extract
    inputs = []
    for group in groups:
        for trajectory in group.trajectories:
            text = scoring_text(trajectory)
            inputs.append(RewardInput(group.problem, trajectory, text, extract(text)))
    return inputs


def score_groups(
    groups: Sequence[TrajectoryGroup],
    reward: Reward,
    *,
    progress: bool = True,
    answer_format: str = "boxed",
) -> list[TrajectoryGroup]:
    """The groups with every trajectory's ``reward`` filled, in chunks.

    Through ``reward.score_inputs`` (Reward v1: problem, trajectory, text and the answer that
    ``answer_format`` extracts) when the reward has it, else ``reward.score_many`` over
    ``(scoring_text, ground_truth)`` pairs.
    """
    inputs = reward_inputs(groups, answer_format)
    score_inputs = getattr(reward, "score_inputs", None)
    verdicts = []
    with tqdm(total=len(inputs), desc="reward", unit="verdict", disable=not progress, leave=False) as bar:
        for start in range(0, len(inputs), SCORE_CHUNK):
            chunk = inputs[start : start + SCORE_CHUNK]
            if callable(score_inputs):
                results = score_inputs(chunk)
            else:
                results = reward.score_many([(i.response_text, i.problem.ground_truth) for i in chunk])
            if len(results) != len(chunk):
                raise RuntimeError(
                    f"reward {reward.name!r} returned {len(results)} verdicts for {len(chunk)} items"
                )
            verdicts.extend(results)
            bar.update(len(chunk))
    it = iter(verdicts)
    return [g.replace([t.with_reward(next(it)) for t in g.trajectories]) for g in groups]


# -- 5. files and the table -------------------------------------------------------------------
def generation_record(group: TrajectoryGroup, trajectory: Trajectory) -> dict[str, Any]:
    """One line of ``_generations.jsonl``: the sample, its turns and tool calls, and its verdict."""
    reward = trajectory.reward
    problem = group.problem
    return {
        "problem_id": problem.id,
        "benchmark": problem.benchmark,
        "sample_index": trajectory.sample_index,
        "data_source": problem.data_source,
        "question": problem.question,
        "ground_truth": problem.ground_truth,
        "response": trajectory.response_text,
        "num_turns": trajectory.num_turns,
        "num_tool_calls": trajectory.num_tool_calls,
        "turns": [
            {
                "index": turn.index,
                "text": turn.text,
                "code": turn.code,
                "tool": turn.tool_call.tool if turn.tool_call else None,
                "tool_result": turn.tool_result.to_dict() if turn.tool_result else None,
                "observation": turn.observation,
                "final_answer": turn.final_answer,
                "is_void": turn.is_void,
                "truncated": turn.truncated,
                "stop_reason": turn.stop_reason,
            }
            for turn in trajectory.turns
        ],
        "finish_reason": str(trajectory.finish_reason),
        "truncated": trajectory.truncated,
        "truncation_cause": trajectory.truncation_cause,
        "response_tokens": len(trajectory.response_ids),
        "answer": reward.extracted if reward else None,
        "score": reward.score if reward else None,
        "reason": reward.reason if reward else None,
        "reward_extra": dict(reward.extra) if reward else {},
    }


def _fmt(value: Any, pct: bool = True) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and pct:
        return f"{100 * value:.1f}"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def summary_table(result: dict[str, Any]) -> str:
    """A plain-text table: one row per benchmark and one for all of them."""
    rows = [(name, m) for name, m in result["benchmarks"].items()]
    rows.append(("overall", {k: v for k, v in result.items() if k not in ("benchmarks",)}))
    n = result.get("samples_per_problem", 1)
    top_k = max((int(k[5:]) for k in result if k.startswith("pass@")), default=1)
    columns = [("benchmark", None), ("problems", "n_problems"), ("pass@1", "pass@1")]
    if top_k > 1:
        columns.append((f"pass@{top_k}", f"pass@{top_k}"))
    columns += [
        ("turns", "avg_turns"),
        ("tool use", "tool_usage_rate"),
        ("code ok", "code_success_rate"),
        ("void", "void_turn_ratio"),
        ("trunc", "truncation_ratio"),
        ("answered", "answer_rate"),
    ]
    cells = [[title for title, _ in columns]]
    for name, metrics in rows:
        cells.append([name] + [_fmt(metrics.get(key), pct=key != "avg_turns") for _, key in columns[1:]])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = [
        "  ".join(
            cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    ]
    lines.insert(1, "-" * len(lines[0]))
    return f"evaluation ({n} samples per problem; rates in %)\n" + "\n".join(lines)


# -- the run ----------------------------------------------------------------------------------
def _warn_close(what: str, exc: Exception) -> None:
    print(f"simpletir: warning: closing the {what} failed: {type(exc).__name__}: {exc}", file=sys.stderr)


async def with_tools_closed(work: Any, owned_tools: Sequence[Tool]) -> Any:
    """Await ``work``, then close the tools it used, in the same event loop.

    A tool's subprocess transports belong to the loop that made them; closed from another loop
    they are torn down by the garbage collector later ("Event loop is closed").
    """
    try:
        return await work
    finally:
        for tool in reversed(owned_tools):
            try:
                await tool.aclose()
            except Exception as exc:  # reported; the other tools are still closed
                _warn_close(f"tool {tool.name!r}", exc)


def close_unused_tools(tools: Sequence[Tool], handed: list[bool]) -> None:
    if not handed:
        for tool in reversed(tools):
            closing(f"tool {tool.name!r}", lambda tool=tool: asyncio.run(tool.aclose()))


def closing(what: str, close: Any) -> None:
    """Close one component; a failing close neither hides the others nor the error in flight."""
    try:
        close()
    except Exception as exc:
        _warn_close(what, exc)


def _open_journal(config: ExperimentConfig, benchmarks: dict[str, list[Problem]]) -> EvalJournal | None:
    """The run directory's journal (read when ``resume``), or None when there is no run directory."""
    if config.run_dir is None:
        return None
    path = Path(config.run_dir) / JOURNAL_FILE
    journal = EvalJournal.open(path, evaluation_fingerprint(config, benchmarks), resume=config.resume)
    total = sum(len(ps) for ps in benchmarks.values())
    if journal.done:
        print(
            f"simpletir: resuming the evaluation from {path}: {len(journal.done)} of {total} problem groups "
            f"are done, rolling out {total - len(journal.done)}",
            file=sys.stderr,
            flush=True,
        )
    return journal


async def evaluate_async(
    config: ExperimentConfig,
    benchmarks: dict[str, list[Problem]],
    reward: Reward,
    *,
    runner: RolloutRunner | None,
    journal: EvalJournal | None = None,
    seed_round: object = None,
    desc: str = "problems",
) -> tuple[dict[str, Any], dict[str, list[TrajectoryGroup]]]:
    """Roll out what ``journal`` lacks, score everything, compute the metrics.

    The core shared by ``val_only`` runs and the trainer's periodic validation, which calls it
    on its long-lived event loop with its own warm engine and sandbox (``runner``; None only
    when the journal already holds every group). Returns the result dict and the scored groups
    per benchmark; writes no file.
    """
    started = time.monotonic()
    keyed = [(name, p) for name, ps in benchmarks.items() for p in ps]
    done: dict[tuple[str, str], TrajectoryGroup] = dict(journal.done) if journal else {}
    todo = [(name, p) for name, p in keyed if (name, p.id) not in done]
    rollout_s = 0.0
    if todo:
        if runner is None:
            raise RuntimeError("evaluate_async: groups left to roll out but no runner was given")
        bar = tqdm(
            total=len(keyed),
            initial=len(done),
            desc=desc + (f" ({len(done)} resumed)" if done else ""),
            unit="group",
            disable=not config.rollout.progress,
            leave=seed_round is None,  # a val_only run keeps its bar; a training run's validations do not
        )

        def finished(i: int, group: TrajectoryGroup) -> None:
            name = todo[i][0]
            if journal is not None:
                journal.append(name, group)  # on disk (fsynced) before the rollout goes on
            done[(name, group.problem.id)] = group
            bar.update(1)

        t0 = time.monotonic()
        try:
            await runner.arun(
                [p for _, p in todo], n=config.n_val, training=False, on_group=finished, seed_round=seed_round
            )
        finally:
            bar.close()
        rollout_s = time.monotonic() - t0
    # Problem order, each group with the problem as loaded now (equal to the journal's).
    groups = [TrajectoryGroup(p, done[(name, p.id)].trajectories) for name, p in keyed]
    t0 = time.monotonic()
    groups = await asyncio.to_thread(
        score_groups,
        groups,
        reward,
        progress=config.rollout.progress,
        answer_format=config.rollout.answer_format,
    )
    reward_s = time.monotonic() - t0

    # Groups are in problem order, so positions map them back to benchmarks.
    by_benchmark: dict[str, list[TrajectoryGroup]] = {}
    position = 0
    for name, ps in benchmarks.items():
        by_benchmark[name] = groups[position : position + len(ps)]
        position += len(ps)
    metrics = evaluation_metrics(by_benchmark)
    r = config.rollout
    n_verdicts = sum(len(g.trajectories) for g in groups)
    result: dict[str, Any] = {
        **metrics["overall"],
        "benchmarks": metrics["benchmarks"],
        "experiment_name": config.experiment_name,
        "model_name": config.model_name,
        "valid_dataset": list(benchmarks),
        "n_val": config.n_val,
        "max_turns": config.max_turns,
        "tool_use": config.tool_use,
        "reward": config.reward,
        "seed": config.seed,
        "val_sample_size": config.val_sample_size,
        "sampling": {
            "temperature": r.val_temperature,
            "top_p": r.val_top_p,
            "top_k": r.val_top_k,
            "max_response_length": config.max_response_length,
        },
        "resume": {"resumed_groups": len(keyed) - len(todo), "rolled_out_groups": len(todo)},
        "timings": {
            "rollout_s": rollout_s,
            "reward_s": reward_s,
            "verdicts_per_s": n_verdicts / reward_s if reward_s > 0 else None,
            "total_s": time.monotonic() - started,
        },
    }
    return result, by_benchmark


def write_evaluation_files(
    result: dict[str, Any], by_benchmark: dict[str, list[TrajectoryGroup]], accuracy: Path, generations: Path
) -> dict[str, str]:
    """The accuracy JSON and one generations line per sample, each written atomically."""
    atomic_write_json(accuracy, result)
    atomic_write_jsonl(
        generations,
        (generation_record(g, t) for gs in by_benchmark.values() for g in gs for t in g.trajectories),
    )
    return {"accuracy": str(accuracy), "generations": str(generations)}


def run_evaluation(
    config: ExperimentConfig,
    pm: SimpletirPluginManager,
    *,
    engine: PolicyEngine | None = None,
    tools: Sequence[Tool] | None = None,
    reward: Reward | None = None,
) -> dict[str, Any]:
    """Evaluate ``config.model_name`` on ``config.valid_datasets``; returns the accuracy dict.

    ``engine`` / ``tools`` / ``reward`` may be passed in (tests, embedding); those are then the
    caller's to close. Whatever this function builds, it closes.
    """
    started = time.monotonic()
    benchmarks = load_benchmarks(config, pm)  # before anything heavy: a missing file fails fast
    journal = _open_journal(config, benchmarks)  # a journal of another configuration fails fast too
    todo = journal is None or len(journal.done) < sum(len(ps) for ps in benchmarks.values())
    with contextlib.ExitStack() as stack:
        if journal is not None:
            stack.callback(closing, "journal", journal.close)
        # executor: local (in-process) or ray (actors); it connects only when it builds something
        executor = stack.enter_context(open_executor(config))
        if reward is None:
            reward = executor.build_reward(config, pm)
            stack.callback(closing, "reward", reward.close)
        warm_up = getattr(reward, "warm_up", None)
        if callable(warm_up):
            warm_up()  # verification workers load sympy while the model loads
        runner = None
        owned_tools: list[Tool] = []
        handed: list[bool] = []  # non-empty once the rollout's event loop owns the tools
        if todo:  # nothing left to roll out (a finished run resumed): no engine, no tools
            if tools is None:
                tools = owned_tools = executor.build_tools(config, pm)
                # Until the rollout's loop owns them, a failure (the engine's start) closes them here.
                stack.callback(close_unused_tools, owned_tools, handed)
            if engine is None:
                engine = executor.build_engine(config)
                stack.callback(closing, "engine", engine.close)
            from simpletir.core.rollout import RolloutRunner

            runner = RolloutRunner(engine, tools, config)
        work = evaluate_async(config, benchmarks, reward, runner=runner, journal=journal)
        handed.append(True)
        result, by_benchmark = asyncio.run(with_tools_closed(work, owned_tools))
    result["timings"]["total_s"] = time.monotonic() - started
    if config.output_acc_to_file:
        logs = Path(config.logs_dir)
        run = config.run_name
        result["files"] = write_evaluation_files(
            result, by_benchmark, logs / f"{run}_accuracy.json", logs / f"{run}_generations.jsonl"
        )
    # People read the console (stderr, with the progress bars and step lines); stdout stays free
    # for `simpletir-run --json`. The run log keeps a copy of the table.
    table = summary_table(result)
    print(table, file=sys.stderr)
    log.info("%s", table, extra={"file_only": True})
    if "files" in result:
        print(f"wrote {result['files']['accuracy']} and {result['files']['generations']}", file=sys.stderr)
        if config.run_dir is not None:
            from simpletir.viewer import view_hint

            print(f"browse the trajectories: {view_hint(config.run_dir, logs, run)}", file=sys.stderr)
    return result
