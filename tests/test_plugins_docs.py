"""The plugin examples of docs/plugins.md run (issue 13, item 6).

Every ```python block right after a ``<!-- test: NAME -->`` comment is a complete plugin module:
it is executed, registered with a fresh plugin manager, and must provide at least one
component. The tool and reward examples are then used as a run would use them: built from a
config by name, driven through the rollout loop or the scoring stage.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from simpletir.core.config import ExperimentConfig
from simpletir.core.errors import ConfigError
from simpletir.core.evaluate import score_groups
from simpletir.core.plugins import make_plugin_manager
from simpletir.core.rollout import RolloutRunner
from simpletir.core.rollout.models import qwen_tokenizer_dir
from simpletir.core.rollout.testing import ScriptedEngine
from simpletir.core.specs import ComponentKind
from simpletir.core.types import FinishReason, Message, Problem, ToolCall, ToolResult, TrajectoryGroup, Turn
from simpletir.testing import make_trajectory

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
MARKED = re.compile(r"<!--\s*test:\s*([\w-]+)\s*-->\s*\n```python\n(.*?)\n```", re.DOTALL)
IM_END = 151645


def blocks() -> dict[str, tuple[int, str]]:
    """``{name: (line, code)}`` of every marked block."""
    text = DOC.read_text(encoding="utf-8")
    found: dict[str, tuple[int, str]] = {}
    for match in MARKED.finditer(text):
        assert match.group(1) not in found, f"docs/plugins.md marks two blocks '{match.group(1)}'"
        line = text.count("\n", 0, match.start(2)) + 1
        found[match.group(1)] = (line, match.group(2))
    return found


def load(name: str) -> types.ModuleType:
    """The marked block ``name`` executed as a module (named in tracebacks by its docs line)."""
    line, code = blocks()[name]
    module = types.ModuleType(f"simpletir_docs_{name.replace('-', '_')}")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    try:
        exec(compile("\n" * (line - 1) + code, str(DOC), "exec"), module.__dict__)
    except BaseException:
        del sys.modules[module.__name__]
        raise
    return module


def test_the_tool_and_reward_examples_are_marked() -> None:
    assert {"tool", "reward"} <= set(blocks())


@pytest.mark.parametrize("name", sorted(blocks()))
def test_every_marked_block_is_a_working_plugin(name: str) -> None:
    module = load(name)
    pm = make_plugin_manager(load_entry_points=False, plugins=[(f"docs_{name}", module)])
    registry = pm.registry()
    provided = [f"{kind}:{n}" for kind in typing.get_args(ComponentKind) for n in registry.names(kind)]
    hooks = [h for h in vars(module) if h.startswith(("register_", "configure", "on_"))]
    assert provided or hooks, f"the '{name}' example of docs/plugins.md registers nothing"


@pytest.fixture(scope="module")
def tok() -> Any:
    return AutoTokenizer.from_pretrained(qwen_tokenizer_dir())


def _config(**top: Any) -> ExperimentConfig:
    rollout = {"progress": False, **top.pop("rollout", {})}
    config = ExperimentConfig(**{"model_name": "scripted", "max_turns": 4, **top})
    config.rollout = dataclasses.replace(config.rollout, **rollout)
    return config


def test_the_tool_example_runs_in_a_rollout(tok: Any) -> None:
    pm = make_plugin_manager(load_entry_points=False, plugins=[("calc_tool", load("tool"))])
    config = _config(tools=["calc"], plugin_config={"calc": {"max_exponent": 10}})
    tool = pm.build("tool", "calc", config)
    script = ["Six sevens: <calc>6 * 7</calc>", "Plus one: <calc>ans + 1</calc>", "So \\boxed{43}.<|im_end|>"]
    engine = ScriptedEngine(tok, script, eos_token_ids=[IM_END])
    runner = RolloutRunner(engine, [tool], config)
    assert "<calc>expression</calc>" in runner.prompt_template  # its instructions are in the prompt
    problem = Problem("p0", "unit", (Message("user", "What is 6 * 7 + 1?"),), "43")
    [group] = runner.run([problem], n=2)
    for trajectory in group.trajectories:  # each trajectory has its own memory
        assert [t.observation for t in trajectory.turns[:2]] == [" = 42\n", " = 43\n"]
        assert trajectory.finish_reason is FinishReason.ANSWER and trajectory.final_answer == "43"
    result = runner.run([problem], n=1)[0].trajectories[0].turns[0].tool_result
    assert result is not None and result.ok and result.stdout == "42"

    bad = asyncio.run(tool.run(ToolCall("calc", "2 ** 99")))
    assert bad.exit_code == 1 and "too large" in bad.stderr
    with pytest.raises(ConfigError, match=r"plugin_config\.calc\.max_exponent"):
        pm.build("tool", "calc", _config(tools=["calc"], plugin_config={"calc": {"max_exponent": 0}}))


def test_the_reward_example_scores_with_the_whole_picture() -> None:
    pm = make_plugin_manager(load_entry_points=False, plugins=[("lenient_reward", load("reward"))])
    reward = pm.build("reward", "lenient", _config(reward="lenient"))
    problem = Problem("p0", "unit", (Message("user", "2 + 2?"),), "4", meta={"also_accept": ["four"]})

    def trajectory(sample: int, text: str, failed: bool = False) -> Any:
        base = make_trajectory(score=None, sample_index=sample)
        result = ToolResult(stderr="NameError", exit_code=1) if failed else ToolResult(stdout="4\n")
        turn = Turn(0, base.turns[0].gen_span, text, tool_call=ToolCall("calc", "x"), tool_result=result)
        return dataclasses.replace(base, turns=(turn,))

    group = TrajectoryGroup(
        problem,
        (
            trajectory(0, "\\boxed{4}"),
            trajectory(1, "\\boxed{four}", failed=True),
            trajectory(2, "\\boxed{5}"),
            trajectory(3, "no idea"),
        ),
    )
    [scored] = score_groups([group], reward, progress=False)
    assert [(t.reward.score, t.reward.reason) for t in scored.trajectories if t.reward] == [
        (1.0, "correct"),
        (0.75, "correct"),
        (0.0, "wrong"),
        (0.0, "no_answer"),
    ]
    assert reward.score("so \\boxed{4}", "4").score == 1.0  # the simple form still works
    tagged = pm.build("reward", "lenient", _config(reward="lenient", rollout={"answer_format": "answer_tag"}))
    assert tagged.score("<answer>4</answer>", "4").reason == "correct"
