"""The math_verify reward: verdicts on hard equivalence cases, reasons, and bounded time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from simpletir.core.config import ExperimentConfig
from simpletir.core.errors import ConfigError
from simpletir.core.plugins import make_plugin_manager
from simpletir.plugins.rewards.judge import JudgeOptions
from simpletir.plugins.rewards.math_verify import MathVerifyOptions, MathVerifyReward
from simpletir.plugins.rewards.verify_pool import VerifierPool

TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def reward() -> Iterator[MathVerifyReward]:
    # cache_size=0: each test case really goes through the pool (or the in-process fast path).
    with MathVerifyReward(MathVerifyOptions(timeout_s=TIMEOUT_S, workers=2, cache_size=0)) as r:
        yield r


EQUIVALENT = [
    ("025", "25"),  # AIME leading zeros, both ways
    ("25", "025"),
    ("\\frac{1}{2}", "0.5"),
    ("0.5", "\\frac12"),
    ("\\dfrac{3}{4}", "3/4"),
    ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2"),
    ("\\sqrt{8}", "2\\sqrt{2}"),
    ("\\{3,2,1\\}", "\\{1,2,3\\}"),  # sets ignore order
    ("-2, 2", "2, -2"),
    ("[1, 2)", "[1,2)"),  # intervals
    ("(-\\infty,3]", "(-\\infty, 3]"),
    ("(3, -4)", "(3,-4)"),  # tuples / points
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
    ("50\\%", "0.5"),  # percent
    ("50", "50\\%"),
    ("1,000", "1000"),
    ("x = 3", "3"),
    ("10^\\circ", "10"),
    ("\\text{(C)}", "C"),
    ("\\frac{1}{3}", "0.333333"),
    ("e^{i\\pi}", "-1"),  # the imaginary unit (math-verify alone reads i as a variable)
    ("e^{2\\pi i}", "1"),
    ("i^2", "-1"),
    ("e^{i\\pi/2}", "i"),
]

NOT_EQUIVALENT = [
    ("24", "025"),
    ("(1,2)", "[1,2]"),  # open vs closed interval
    ("\\{1,2\\}", "2"),
    ("1,2", "1"),
    ("0.33", "\\frac{1}{3}"),
    ("\\sqrt{3}", "\\sqrt{2}"),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}2\\\\1\\end{pmatrix}"),
    ("-5", "5"),
    ("e^{i\\pi/2}", "-1"),
    ("2i", "2"),
    ("i + 1", "x + 1"),  # another variable: math-verify decides
]


@pytest.mark.parametrize(("answer", "gold"), EQUIVALENT)
def test_equivalent_answers_score_one(reward: MathVerifyReward, answer: str, gold: str) -> None:
    result = reward.score(f"Reasoning... so the answer is $\\boxed{{{answer}}}$.", gold)
    assert (result.score, result.reason, result.extracted) == (1.0, "correct", answer)


@pytest.mark.parametrize(("answer", "gold"), NOT_EQUIVALENT)
def test_different_answers_score_zero(reward: MathVerifyReward, answer: str, gold: str) -> None:
    result = reward.score(f"\\boxed{{{answer}}}", gold)
    assert (result.score, result.reason) == (0.0, "wrong")


def test_reasons(reward: MathVerifyReward) -> None:
    results = reward.score_many(
        [
            ("I could not finish.", "3"),
            ("\\boxed{\\frac{1}{", "3"),  # never closed: no answer
            ("\\boxed{@@@ ###}", "3"),
            ("\\boxed{3}", "\\frac{"),  # the ground truth itself does not parse
        ]
    )
    assert [r.reason for r in results] == ["no_answer", "no_answer", "parse_error", "parse_error"]
    assert all(r.score == 0.0 for r in results)
    assert results[0].extracted is None
    assert results[3].extra.get("gold_parse_error") is True
    assert results[2].extra.get("gold_parse_error") is None


def test_final_answer_in_code_execution_result(reward: MathVerifyReward) -> None:
    text = "```python\nfinal_answer(2**10)\n```\nCode execution result: \\boxed{1024}\n"
    assert reward.score(text, "1024").reason == "correct"


def test_score_many_keeps_order_and_duplicates(reward: MathVerifyReward) -> None:
    items = [(f"\\boxed{{\\frac{{{i}}}{{2}}}}", str(i / 2)) for i in range(1, 21)]
    items += [("\\boxed{7}", "8"), ("\\boxed{\\frac{1}{2}}", "0.5"), ("\\boxed{\\frac{1}{2}}", "0.5")]
    results = reward.score_many(items)
    assert [r.score for r in results] == [1.0] * 20 + [0.0, 1.0, 1.0]
    assert [r.extracted for r in results[:3]] == ["\\frac{1}{2}", "\\frac{2}{2}", "\\frac{3}{2}"]


def test_last_number_fallback_option() -> None:
    response = "After all that, the result is 42"
    with MathVerifyReward(MathVerifyOptions(workers=1)) as off:
        assert off.score(response, "42").reason == "no_answer"
    with MathVerifyReward(MathVerifyOptions(workers=1, last_number_fallback=True)) as on:
        result = on.score(response, "42")
        assert (result.score, result.extra["answer_source"]) == (1.0, "last_number")


PATHOLOGICAL = [
    "9^{9^{9^{9^{9}}}}",  # tower of exponents
    "10^{10^{10}}",
    "(" * 3000 + "1" + ")" * 3000,  # thousands of nested parentheses
    "(10^{7})!",
]


def test_pathological_answers_cost_at_most_the_timeout(reward: MathVerifyReward) -> None:
    reward.score("\\boxed{1}", "2")  # workers are up: the timing below is verdicts only
    items = [(f"\\boxed{{{p}}}", "5") for p in PATHOLOGICAL] + [("\\boxed{\\frac{1}{2}}", "0.5")]
    started = time.monotonic()
    results = reward.score_many(items)
    elapsed = time.monotonic() - started
    assert [r.reason for r in results[:-1]] == ["timeout"] * len(PATHOLOGICAL)
    assert results[-1].reason == "correct"  # the pool still works afterwards
    # 4 pathological items on 2 workers: 2 rounds of at most timeout + grace each.
    grace = reward.pool.grace_s
    # (+3 s of slack for a machine shared with other jobs; a stall would take minutes.)
    assert elapsed < 2 * (TIMEOUT_S + grace) + 3.0, f"took {elapsed:.1f} s"


def _worker_pids(pool: VerifierPool) -> list[int]:
    return [w.proc.pid for w in pool._workers]


def test_a_frozen_worker_is_killed_and_replaced() -> None:
    # SIGSTOP freezes the worker the way a stall inside C code does: no signal handler runs, so
    # only the parent's hard deadline can end the verdict.
    with VerifierPool(workers=1, timeout_s=0.5, grace_s=0.3, options=JudgeOptions()) as pool:
        assert pool.run([("\\frac{1}{2}", "0.5")]) == ["correct"]
        (pid,) = _worker_pids(pool)
        os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        assert pool.run([("\\frac{1}{2}", "0.5"), ("\\frac{3}{4}", "0.75")]) == ["timeout", "correct"]
        elapsed = time.monotonic() - started
        assert pool.stats.killed == 1
        assert _worker_pids(pool) != [pid]
        # 0.8 s hard limit for the frozen item, then a fresh worker starts and judges the other.
        assert elapsed < 0.8 + 15, f"took {elapsed:.1f} s"


def test_a_worker_that_dies_mid_item_gives_error_and_is_replaced() -> None:
    with VerifierPool(workers=1, timeout_s=10.0, options=JudgeOptions()) as pool:
        assert pool.run([("1", "1")]) == ["correct"]
        (pid,) = _worker_pids(pool)
        killer = subprocess.Popen(
            [sys.executable, "-c", f"import os,time; time.sleep(0.5); os.kill({pid}, 9)"]
        )
        try:
            results = pool.run([("9^{9^{9^{9^{9}}}}", "5"), ("\\frac{1}{2}", "0.5")])
        finally:
            killer.wait()
        assert results == ["error", "correct"]
        assert pool.stats.crashed == 1


def test_close_stops_every_worker() -> None:
    pool = VerifierPool(workers=2, timeout_s=1.0, options=JudgeOptions())
    pool.run([("1", "2")])
    procs = [w.proc for w in pool._workers]
    pool.close()
    assert all(p.poll() is not None for p in procs)
    pool.close()  # idempotent


def test_registered_through_the_plugin_manager_with_typed_options() -> None:
    pm = make_plugin_manager()
    config = ExperimentConfig(plugin_config={"math_verify": {"timeout_s": 2.5, "last_number_fallback": True}})
    built = pm.build("reward", "math_verify", config)
    try:
        assert isinstance(built, MathVerifyReward)
        assert built.options.timeout_s == 2.5 and built.options.last_number_fallback is True
    finally:
        built.close()
    with pytest.raises(ConfigError, match=r"plugin_config\.math_verify\.timeout_s"):
        pm.build("reward", "math_verify", ExperimentConfig(plugin_config={"math_verify": {"timeout_s": 0}}))


def test_score_cli_prints_the_verdict_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    from simpletir.plugins.rewards.cli import main

    assert main(["--response", "so \\boxed{\\dfrac{1}{2}}", "--answer", "0.5"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert (
        verdict["score"] == 1.0 and verdict["reason"] == "correct" and verdict["extracted"] == "\\dfrac{1}{2}"
    )
    assert main(["--response", "no box", "--answer", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["reason"] == "no_answer"
    assert main(["--response", "x", "--answer", "3", "--reward", "nope"]) == 2
    assert "unknown reward 'nope'" in capsys.readouterr().err
