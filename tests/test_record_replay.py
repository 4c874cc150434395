"""Recorded rollouts (``trainer.record_rollouts``) and ``simpletir replay``.

A tiny real training run (tiny-qwen2, hf engine and backend) records two steps; a reward that
depends on the sampled text gives groups with mixed rewards, so the group filter drops some
groups and the advantages are not all zero. Replaying the steps on their recorded rollouts,
with no engine, must reproduce the filter decisions, advantages, metrics and parameters
exactly; a changed learning rate or a tampered record must be reported as a difference.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from _trainer_helpers import tiny_overrides

from simpletir import hookimpl
from simpletir.core.config_load import load_config
from simpletir.core.plugins import SimpletirPluginManager, make_plugin_manager
from simpletir.core.run import run_experiment
from simpletir.core.specs import RewardSpec
from simpletir.core.trainer.record import FOLDER, read_step, record_path
from simpletir.core.trainer.replay import ReplayError, replay
from simpletir.core.types import RewardResult

pytestmark = pytest.mark.slow  # real tiny training runs (about 45 s in all)


class ParityReward:
    """1.0 when the response has an even number of characters: mixed rewards from a random model."""

    name = "parity"

    def score_many(self, items: Sequence[tuple[str, str]]) -> list[RewardResult]:
        return [
            RewardResult(1.0, "correct") if len(r) % 2 == 0 else RewardResult(0.0, "wrong") for r, _ in items
        ]

    def close(self) -> None:
        pass


class ParityPlugin:
    @hookimpl
    def register_rewards(self) -> list[RewardSpec]:
        return [RewardSpec("parity", lambda options, experiment: ParityReward(), description="even length")]


def plugins() -> SimpletirPluginManager:
    pm = make_plugin_manager()
    pm.register(ParityPlugin(), name="parity-test")
    return pm


SETTINGS: dict[str, Any] = {
    "reward": "parity",
    "filters": "[group]",
    "plugin_config.group.drop_all_clipped": False,  # a random model never stops before the cap
    "max_response_length": 4,
    "train_batch_size": 2,
    "oversample": 2,  # 4 prompts drawn, the group filter keeps 2 of the mixed ones
    "rollout.n": 4,
    "trainer.record_rollouts": True,
    "save_freq": 1,
}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("record")
    config = load_config(None, tiny_overrides(tmp, "rec", **SETTINGS), environ={})
    result = run_experiment(config, plugins())
    return Path(result["run_dir"])


def test_each_step_is_recorded_losslessly(recorded: Path) -> None:
    for step in (1, 2):
        record = read_step(record_path(recorded / FOLDER, step))
        assert record.step == step and record.header["weight_version"] == step - 1
        assert [d.prompts for d in record.draws] == [4]
        groups = record.draws[0].groups
        assert len(groups) == 4 and all(len(g.trajectories) == 4 for g in groups)
        trajectory = groups[0].trajectories[0]
        assert trajectory.response_ids and len(trajectory.logprobs) == len(trajectory.response_ids)
        assert all(t.reward is not None for g in groups for t in g.trajectories)
        assert record.advantages is not None and len(record.advantages) == 4 * len(record.kept)
        assert any(a != 0.0 for a in record.advantages)  # mixed groups: there is something to learn
        assert len(record.params_sha256) == 64
    metrics = [json.loads(line) for line in (recorded / "metrics.jsonl").read_text().splitlines()]
    logged = {m["step"]: m["metrics"]["actor/loss"] for m in metrics if m["phase"] == "train"}
    assert read_step(record_path(recorded / FOLDER, 2)).metrics["actor/loss"] == logged[2]


def test_replay_reproduces_every_step_exactly(recorded: Path, tmp_path: Path) -> None:
    comparisons = replay(recorded, (1, 2), out_dir=tmp_path / "replay", pm=plugins())
    assert [c.step for c in comparisons] == [1, 2]
    assert all(c.same for c in comparisons), [c.differences for c in comparisons]
    assert comparisons[0].loss[0] == comparisons[0].loss[1] is not None


def test_replay_from_a_checkpoint(recorded: Path, tmp_path: Path) -> None:
    (comparison,) = replay(recorded, (2, 2), out_dir=tmp_path / "replay", pm=plugins())
    assert comparison.same, comparison.differences


def test_a_changed_update_is_reported(recorded: Path, tmp_path: Path) -> None:
    comparisons = replay(
        recorded, (1, 1), overrides=["algorithm.lr=0.01"], out_dir=tmp_path / "r", pm=plugins()
    )
    (comparison,) = comparisons
    assert not comparison.same
    assert "parameters after the update (sha256 differs)" in comparison.differences
    assert any(d.startswith("actor/lr:") for d in comparison.differences)


def test_a_tampered_record_is_reported(recorded: Path, tmp_path: Path) -> None:
    copy = tmp_path / "rec"
    (copy / FOLDER).mkdir(parents=True)
    (copy / "config.yaml").write_text((recorded / "config.yaml").read_text())
    lines = record_path(recorded / FOLDER, 1).read_text().splitlines()
    for i, line in enumerate(lines):
        record = json.loads(line)
        if "group" in record:  # flip every verdict of the first group
            for trajectory in record["group"]["trajectories"]:
                trajectory["reward"]["score"] = 1.0 - trajectory["reward"]["score"]
            lines[i] = json.dumps(record)
            break
    record_path(copy / FOLDER, 1).write_text("\n".join(lines) + "\n")
    (comparison,) = replay(copy, (1, 1), out_dir=tmp_path / "r", pm=plugins())
    assert not comparison.same


def test_missing_records_and_checkpoints_are_one_line_errors(recorded: Path, tmp_path: Path) -> None:
    with pytest.raises(ReplayError, match=r"no rollout record of step\(s\) \[3\]"):
        replay(recorded, (2, 3), out_dir=tmp_path, pm=plugins())
    bare = tmp_path / "bare"
    (bare / FOLDER).mkdir(parents=True)
    (bare / "config.yaml").write_text(
        (recorded / "config.yaml").read_text().replace("name: rec", "name: bare")
    )
    for step in (1, 2):
        record_path(bare / FOLDER, step).write_text(record_path(recorded / FOLDER, step).read_text())
    with pytest.raises(ReplayError, match="needs the checkpoint of step 1"):
        replay(bare, (2, 2), out_dir=tmp_path / "r", pm=plugins())


def test_recording_is_off_by_default(tmp_path: Path) -> None:
    config = load_config(
        None, tiny_overrides(tmp_path, "plain", total_training_steps=1, save_freq=-1), environ={}
    )
    result = run_experiment(config, make_plugin_manager())
    assert not (Path(result["run_dir"]) / FOLDER).exists()


def test_cli_says_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from simpletir.cli import main as cli_main

    assert cli_main(["replay", str(tmp_path), "--steps", "1:2"]) == 2
    assert "no rollout record of step(s) [1, 2]" in capsys.readouterr().err
