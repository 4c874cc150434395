"""Evaluation metrics against hand-computed values."""

from __future__ import annotations

import dataclasses
import math

import pytest

from simpletir.core.metrics import default_ks, evaluation_metrics, pass_at_k, summarize
from simpletir.core.types import FinishReason, RewardResult, ToolResult, Trajectory
from simpletir.testing import make_group, make_scored_group, make_trajectory


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (4, 1, 2, 1 - 3 / 6),  # 1 - C(3,2)/C(4,2)
        (4, 2, 2, 1 - 1 / 6),  # 1 - C(2,2)/C(4,2)
        (5, 1, 5, 1.0),
        (5, 0, 3, 0.0),
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5) = 11/12
        (32, 1, 1, 1 / 32),
        (32, 32, 32, 1.0),
        (1000, 1, 1, 0.001),
        (200, 10, 100, 1 - math.comb(190, 100) / math.comb(200, 100)),
    ],
)
def test_pass_at_k_unbiased_estimator(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_pass_at_k_matches_brute_force_enumeration() -> None:
    # The estimator is the exact probability over all k-subsets: enumerate them for n=6.
    import itertools

    for c in range(7):
        samples = [1] * c + [0] * (6 - c)
        for k in range(1, 7):
            subsets = list(itertools.combinations(samples, k))
            brute = sum(1 for s in subsets if any(s)) / len(subsets)
            assert pass_at_k(6, c, k) == pytest.approx(brute)


@pytest.mark.parametrize(("n", "c", "k"), [(4, 5, 1), (4, -1, 1), (4, 1, 0), (4, 1, 5)])
def test_pass_at_k_rejects_impossible_arguments(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_default_ks() -> None:
    assert default_ks(1) == [1]
    assert default_ks(4) == [1, 2, 4]
    assert default_ks(5) == [1, 2, 4, 5]
    assert default_ks(32) == [1, 2, 4, 5, 8, 16, 32]
    assert default_ks(12) == [1, 2, 4, 5, 8, 12]
    assert default_ks(0) == []


def _scored(t: Trajectory, score: float, extracted: str | None) -> Trajectory:
    reason = "correct" if score else ("no_answer" if extracted is None else "wrong")
    return t.with_reward(RewardResult(score=score, reason=reason, extracted=extracted))


def test_summarize_hand_computed() -> None:
    # Problem a: 1 of 5 correct; problem b: 2 of 5 correct.
    a = make_scored_group([1, 0, 0, 0, 0], problem_id="a")
    b = make_scored_group([1, 1, 0, 0, 0], problem_id="b")
    m = summarize([a, b])
    assert m["n_problems"] == 2 and m["n_samples"] == 10
    assert m["pass@1"] == pytest.approx((1 / 5 + 2 / 5) / 2)  # 0.3
    assert m["pass@2"] == pytest.approx(((1 - 6 / 10) + (1 - 3 / 10)) / 2)  # 0.55
    assert m["pass@4"] == pytest.approx(((1 - 1 / 5) + 1.0) / 2)  # 0.9
    assert m["pass@5"] == pytest.approx(1.0)
    assert m["avg@5"] == pytest.approx(0.3)
    assert sorted(k for k in m if k.startswith("pass@")) == ["pass@1", "pass@2", "pass@4", "pass@5"]


def test_summarize_turn_and_tool_metrics() -> None:
    failed = ToolResult(stdout="", stderr="boom", exit_code=1)
    t1 = _scored(make_trajectory(turns=3, code_turns=2), 1.0, "4")  # 2 calls, both ok
    t2 = make_trajectory(turns=2, code_turns=1)  # 1 call, failed; then void
    turns = list(t2.turns)
    turns[0] = dataclasses.replace(turns[0], tool_result=failed)
    turns[1] = dataclasses.replace(turns[1], is_void=True)
    t2 = _scored(dataclasses.replace(t2, turns=tuple(turns), finish_reason=FinishReason.VOID_TURN), 0.0, None)
    t3 = _scored(make_trajectory(turns=1, truncated=True), 0.0, "7")  # no tool, truncated
    t4 = _scored(make_trajectory(turns=2), 0.0, "5")
    m = summarize([make_group([t1, t2], "p"), make_group([t3, t4], "q")])
    assert m["avg_turns"] == pytest.approx((3 + 2 + 1 + 2) / 4)
    assert m["avg_tool_calls"] == pytest.approx((2 + 1 + 0 + 0) / 4)
    assert m["tool_usage_rate"] == pytest.approx(2 / 4)
    assert m["code_success_rate"] == pytest.approx(2 / 3)  # of executed calls
    assert m["void_turn_ratio"] == pytest.approx(1 / 4)
    assert m["truncation_ratio"] == pytest.approx(1 / 4)
    assert m["answer_rate"] == pytest.approx(3 / 4)
    assert m["reasons"] == {"correct": 1, "no_answer": 1, "wrong": 2}
    assert m["finish_reasons"] == {"answer": 2, "length": 1, "void_turn": 1}
    assert m["pass@1"] == pytest.approx((1 / 2 + 0) / 2)
    assert m["pass@2"] == pytest.approx((1.0 + 0) / 2)


def test_code_success_rate_is_none_without_tool_calls() -> None:
    m = summarize([make_scored_group([0, 1])])
    assert m["code_success_rate"] is None and m["tool_usage_rate"] == 0.0


def test_evaluation_metrics_overall_pools_problems() -> None:
    aime = [make_scored_group([1, 1], problem_id="x"), make_scored_group([0, 0], problem_id="y")]
    math = [make_scored_group([1, 0], problem_id="z")]
    result = evaluation_metrics({"aime24": aime, "math500": math})
    assert result["benchmarks"]["aime24"]["pass@1"] == pytest.approx(0.5)
    assert result["benchmarks"]["math500"]["pass@1"] == pytest.approx(0.5)
    assert result["benchmarks"]["math500"]["pass@2"] == pytest.approx(1.0)
    # overall: micro-average over the 3 problems, not the mean of the two benchmarks
    assert result["overall"]["pass@2"] == pytest.approx((1 + 0 + 1) / 3)
    assert result["overall"]["n_problems"] == 3


def test_explicit_k_larger_than_samples_is_an_error() -> None:
    with pytest.raises(ValueError, match="pass@8"):
        summarize([make_scored_group([1, 0])], ks=[1, 8])


def test_empty_input() -> None:
    assert summarize([]) == {"n_problems": 0, "n_samples": 0}
