"""``arith_train``: generated training problems that never repeat an ``arith`` (validation) question."""

from __future__ import annotations

import re
from typing import Any

import pytest

from simpletir.core.config import ExperimentConfig
from simpletir.core.errors import ConfigError
from simpletir.core.evaluate import load_benchmarks
from simpletir.core.plugins import make_plugin_manager
from simpletir.core.types import Problem
from simpletir.plugins.benchmarks.arith import ArithOptions, make_problems, make_train_problems


def expressions(problems: list[Problem]) -> list[str]:
    return [p.meta["expression"] for p in problems]


def load_train(plugin_config: dict[str, Any], **top: Any) -> list[Problem]:
    config = ExperimentConfig(train_dataset="arith_train", plugin_config=plugin_config, **top)
    return load_benchmarks(config, make_plugin_manager(), split="train")["arith_train"]


def test_registered_as_a_training_set() -> None:
    spec = make_plugin_manager().registry().benchmark("arith_train")
    assert spec.split == "train"
    problems = load_train({})
    assert len(problems) == 16 and {p.benchmark for p in problems} == {"arith_train"}
    assert len({p.id for p in problems}) == 16


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"operands": 2, "max_operand": 5},  # 48 possible questions: overlap is certain without care
        {"operands": 2, "max_operand": 9, "max_multiplier": 3, "generator_seed": 5},
    ],
)
def test_disjoint_from_arith_with_the_same_options(options: dict[str, Any]) -> None:
    valid = ArithOptions(size=20, **options)
    train = make_train_problems(ArithOptions(size=20, **options), held_out=valid)
    held_out = set(expressions(make_problems(valid)))
    assert len(train) == 20
    assert not held_out & set(expressions(train))
    assert len(set(expressions(train))) == 20  # distinct questions


def test_through_the_registry_it_avoids_plugin_config_arith() -> None:
    """The held-out set is whatever plugin_config.arith says (not arith_train's options)."""
    small = {"operands": 2, "max_operand": 5}
    valid = expressions(make_problems(ArithOptions(size=24, **small)))
    train = load_train({"arith": {"size": 24, **small}, "arith_train": {"size": 20, **small}})
    assert len(train) == 20 and not set(valid) & set(expressions(train))
    # with arith left at its defaults, the same small training set may repeat those questions:
    # the exclusion above is not an accident of the generator streams
    unguarded = load_train({"arith_train": {"size": 24, **small}})
    assert set(valid) & set(expressions(unguarded))


def test_deterministic_and_size_honoured() -> None:
    first = load_train({"arith_train": {"size": 40}})
    again = load_train({"arith_train": {"size": 40}})
    assert [(p.id, p.messages, p.ground_truth) for p in first] == [
        (p.id, p.messages, p.ground_truth) for p in again
    ]
    assert len(first) == 40
    assert len(load_train({"arith_train": {"size": 3}})) == 3
    other_seed = load_train({"arith_train": {"size": 40, "generator_seed": 1}})
    assert expressions(other_seed) != expressions(first)
    # the experiment seed does not change the training set (it orders it, in the sampler)
    assert expressions(load_train({"arith_train": {"size": 40}}, seed=9)) == expressions(first)


def test_operands_two_and_answers() -> None:
    options = {"size": 30, "operands": 2, "max_operand": 20, "max_multiplier": 4}
    problems = load_train({"arith_train": options})
    for p in problems:
        match = re.fullmatch(r"(\d+) ([+\-*]) (\d+)", p.meta["expression"])
        assert match, p.meta["expression"]
        a, op, b = int(match[1]), match[2], int(match[3])
        assert 2 <= a <= 20 and 2 <= b <= (4 if op == "*" else 20)
        assert p.ground_truth == str({"+": a + b, "-": a - b, "*": a * b}[op])
        assert f"${p.meta['expression']}$" in p.question
    three = load_train({})
    assert all(len(p.meta["expression"].split()) == 5 for p in three)  # default: a op b op c


def test_too_small_a_question_space_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"plugin_config\.arith_train: only \d+ distinct questions"):
        load_train({"arith_train": {"size": 60, "operands": 2, "max_operand": 5}})
    with pytest.raises(ConfigError, match="operands"):
        ArithOptions(operands=4)
