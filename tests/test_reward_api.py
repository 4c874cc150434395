"""Reward v1 (issue 13, item 2): the whole picture through ``RewardInput``; a named answer format."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest

from simpletir.core.answers import ANSWER_FORMATS, answer_format, last_answer_tag
from simpletir.core.config_load import load_config
from simpletir.core.errors import ConfigError
from simpletir.core.evaluate import score_groups, scoring_text
from simpletir.core.types import (
    FinishReason,
    Message,
    Problem,
    RewardInput,
    RewardResult,
    ToolCall,
    ToolResult,
    Trajectory,
    TrajectoryGroup,
    Turn,
)
from simpletir.plugins.rewards.extract import extract_answer
from simpletir.plugins.rewards.math_verify import MathVerifyOptions, MathVerifyReward, build
from simpletir.testing import make_trajectory

PROBLEM = Problem(
    "p0",
    "unit",
    (Message("user", "What is 2 + 2?"),),
    "4",
    data_source="unit/source",
    meta={"also_accept": ["four"]},
)


def _trajectory(sample: int, text: str, *, tool_error: bool = False) -> Trajectory:
    base = make_trajectory(score=None, sample_index=sample, turns=1)
    result = (
        ToolResult(stderr="boom", exit_code=1, error="tool raised")
        if tool_error
        else ToolResult(stdout="4\n")
    )
    turn = Turn(
        index=0,
        gen_span=base.turns[0].gen_span,
        text=text,
        tool_call=ToolCall("python", "print(4)"),
        tool_result=result,
    )
    return dataclasses.replace(base, turns=(turn,), finish_reason=FinishReason.EOS)


GROUP = TrajectoryGroup(
    PROBLEM,
    (
        _trajectory(0, "it is \\boxed{4}"),
        _trajectory(1, "it is <answer>four</answer>", tool_error=True),
        _trajectory(2, "no idea"),
    ),
)


class WholePictureReward:
    """A v1 reward: reads the problem's metadata and the trajectory's tool results."""

    name = "whole_picture"

    def __init__(self) -> None:
        self.seen: list[RewardInput] = []
        self.simple_calls = 0

    def score(self, response: str, ground_truth: str) -> RewardResult:
        return self.score_many([(response, ground_truth)])[0]

    def score_many(self, items: Sequence[tuple[str, str]]) -> list[RewardResult]:
        self.simple_calls += 1
        return [RewardResult(0.0, "simple") for _ in items]

    def score_inputs(self, inputs: Sequence[RewardInput]) -> list[RewardResult]:
        self.seen.extend(inputs)
        out = []
        for item in inputs:
            accepted = {item.ground_truth, *item.problem.meta.get("also_accept", [])}
            errors = sum(1 for t in item.trajectory.turns if t.tool_result and t.tool_result.error)
            if item.final_answer is None:
                out.append(RewardResult(0.0, "no_answer"))
            elif item.final_answer in accepted:
                out.append(RewardResult(1.0 - 0.5 * errors, "correct", item.final_answer))
            else:
                out.append(RewardResult(0.0, "wrong", item.final_answer))
        return out

    def close(self) -> None:
        pass


def test_score_inputs_gets_problem_trajectory_text_and_answer() -> None:
    reward = WholePictureReward()
    [scored] = score_groups([GROUP], reward, progress=False, answer_format="answer_tag")
    assert reward.simple_calls == 0  # score_inputs is preferred over score_many
    assert [i.trajectory for i in reward.seen] == list(GROUP.trajectories)
    assert all(i.problem is PROBLEM and i.problem.data_source == "unit/source" for i in reward.seen)
    assert [i.response_text for i in reward.seen] == [scoring_text(t) for t in GROUP.trajectories]
    assert [i.final_answer for i in reward.seen] == [
        None,
        "four",
        None,
    ]  # answer_tag: the boxed one is no answer
    assert [t.reward for t in scored.trajectories] == [
        RewardResult(0.0, "no_answer"),
        RewardResult(0.5, "correct", "four"),  # accepted through meta, halved for the tool error
        RewardResult(0.0, "no_answer"),
    ]
    reward.seen.clear()
    score_groups([GROUP], reward, progress=False)  # boxed by default
    assert [i.final_answer for i in reward.seen] == ["4", None, None]
    assert reward.seen[0].ground_truth == "4"


def test_rewards_without_score_inputs_get_text_and_ground_truth() -> None:
    class Simple:
        name = "simple"

        def __init__(self) -> None:
            self.items: list[tuple[str, str]] = []

        def score(self, response: str, ground_truth: str) -> RewardResult:
            return self.score_many([(response, ground_truth)])[0]

        def score_many(self, items: Sequence[tuple[str, str]]) -> list[RewardResult]:
            self.items.extend(items)
            return [RewardResult(1.0, "correct") for _ in items]

        def close(self) -> None:
            pass

    reward = Simple()
    score_groups([GROUP], reward, progress=False)
    assert reward.items == [(scoring_text(t), "4") for t in GROUP.trajectories]


def test_answer_formats_are_named_and_checked() -> None:
    assert set(ANSWER_FORMATS) == {"boxed", "answer_tag"}
    assert answer_format("boxed").extract("so \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert answer_format("answer_tag").extract("a <answer>1</answer> then <answer> 2 </answer>") == "2"
    with pytest.raises(ConfigError, match=r"rollout.answer_format='boxd'.*did you mean 'boxed'"):
        answer_format("boxd")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<answer>5</answer>", "5"),
        ("<answer>\\boxed{\\frac{1}{2}}</answer>", "\\frac{1}{2}"),  # a lone box is unwrapped
        ("<answer>\\boxed{1} + \\boxed{2}</answer>", "\\boxed{1} + \\boxed{2}"),
        ("<answer>1</answer> and a cut-off <answer>2", "1"),  # an unclosed tag does not count
        ("<answer>  </answer>", None),
        ('```python\nprint("<answer>3</answer>")\n```', None),  # code is not an answer
        ("```python\nprint(3)\n```\nCode execution result: <answer>3</answer>", "3"),
    ],
)
def test_last_answer_tag(text: str, expected: str | None) -> None:
    assert last_answer_tag(text) == expected


def test_math_verify_reads_the_configured_answer_format() -> None:
    tagged = MathVerifyReward(answer_format="answer_tag")
    try:
        assert tagged.score("so <answer>025</answer>", "25").reason == "correct"
        verdict = tagged.score("so \\boxed{25}", "25")
        assert verdict.reason == "no_answer" and verdict.extracted is None
        assert tagged.score("<answer>7</answer>", "25").reason == "wrong"
        assert tagged.score("<answer>25</answer>", "25").extra["answer_source"] == "answer_tag"
    finally:
        tagged.close()
    assert extract_answer("\\boxed{3}").source == "boxed"  # type: ignore[union-attr]
    assert extract_answer("<answer>3</answer>", answer_format="answer_tag").answer == "3"  # type: ignore[union-attr]
    config = load_config(None, ["rollout.answer_format=answer_tag"], environ={})
    assert build(MathVerifyOptions(), config).answer_format == "answer_tag"
    assert build(MathVerifyOptions(), None).answer_format == "boxed"


def test_the_new_rollout_keys_are_checked_with_the_config() -> None:
    with pytest.raises(ConfigError, match="did you mean 'answer_tag'"):
        load_config(None, ["rollout.answer_format=answer_tags"], environ={})
    with pytest.raises(ConfigError, match=r"rollout\.tools_timeout_s"):
        load_config(None, ["rollout.tools_timeout_s=-1"], environ={})
    config = load_config(None, ["rollout.tools_timeout_s=2.5"], environ={})
    assert config.rollout.tools_timeout_s == 2.5 and config.rollout.prompt_template is None
