"""Exactness of the agent loop: token ids, masks, logprobs, turn logic and caps.

The engine is a test double that replays fixed token ids (honouring stop strings, EOS and
max_tokens as vLLM does); the tokenizer is the real Qwen one. Every expected id list below is
computed independently from the script, never read back from the loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest
from transformers import AutoTokenizer

from simpletir.core.config import ExperimentConfig
from simpletir.core.errors import ConfigError
from simpletir.core.rollout import RolloutRunner
from simpletir.core.rollout.models import qwen_tokenizer_dir
from simpletir.core.rollout.testing import ScriptedEngine, ScriptedTool
from simpletir.core.types import FinishReason, Message, Problem, ToolResult

IM_END = 151645


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(qwen_tokenizer_dir())


def cfg(**top: object) -> ExperimentConfig:
    rollout = {"progress": False, "val_temperature": 0.5, "val_top_p": 0.9, "val_top_k": 20}
    rollout.update(top.pop("rollout", {}))  # type: ignore[arg-type]
    top = {"model_name": "scripted", "max_turns": 5, **top}
    config = ExperimentConfig(**top)  # type: ignore[arg-type]
    config.rollout = dataclasses.replace(config.rollout, **rollout)
    return config


PROBLEM = Problem("p0", "unit", (Message("user", "What is 1+1?"),), "2")


def enc(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def stop_cut(tok, ids: list[int], stop: str) -> list[int]:
    """The ids up to and including the first token whose text completes ``stop``."""
    for i in range(1, len(ids) + 1):
        if stop in tok.decode(ids[:i]):
            return ids[:i]
    raise AssertionError("stop string never completes")


def run_one(engine, tools, config, training=False):
    [group] = RolloutRunner(engine, tools, config).run([PROBLEM], n=1, training=training)
    return group.trajectories[0]


def test_two_turns_exact_ids_masks_and_logprobs(tok):
    turn0 = enc(tok, "Let me compute.\n```python\nprint(1+1)\n```\n\nignored tail")
    turn1 = [*enc(tok, "So the answer is \\boxed{2}."), IM_END, *enc(tok, "never sent")]
    engine = ScriptedEngine(tok, [turn0, turn1], eos_token_ids=[IM_END])
    tool = ScriptedTool(lambda code: ToolResult(stdout="2\n"))
    traj = run_one(engine, [tool], cfg())

    gen0 = stop_cut(tok, turn0, "```\n")
    assert tok.decode(gen0[-1:]) == "`\n\n"  # the stop completes inside a token; the token is kept
    obs = enc(tok, "\nCode execution result: 2\n\n")
    gen1 = turn1[: turn1.index(IM_END) + 1]
    runner = RolloutRunner(engine, [tool], cfg())
    prompt_ids, _ = runner.build_prompt(PROBLEM)

    assert traj.prompt_ids == tuple(prompt_ids)
    assert traj.response_ids == tuple(gen0 + obs + gen1)
    assert traj.loss_mask == tuple([1] * len(gen0) + [0] * len(obs) + [1] * len(gen1))
    expected_lp = [-(i + 1) / 100 for i in range(len(gen0))] + [0.0] * len(obs)
    expected_lp += [-(i + 1) / 100 for i in range(len(gen1))]
    assert traj.logprobs == pytest.approx(expected_lp)
    # The second request continued from exact ids: no decode / re-encode round trip.
    assert engine.requests[1].prompt_ids == tuple(prompt_ids + gen0 + obs)
    assert traj.response_ids != tuple(enc(tok, tok.decode(list(traj.response_ids))))

    t0, t1 = traj.turns
    assert t0.gen_span == (0, len(gen0)) and t0.obs_span == (len(gen0), len(gen0) + len(obs))
    assert t0.code == "print(1+1)" and t0.tool_result == ToolResult(stdout="2\n") and t0.ran_code
    assert t0.observation == "\nCode execution result: 2\n\n" and not t0.is_void
    assert t1.gen_span == (len(gen0) + len(obs), len(traj.response_ids)) and t1.obs_span is None
    assert t1.final_answer == "2" and t1.stop_reason == "eos"
    assert traj.finish_reason is FinishReason.ANSWER and not traj.truncated
    assert [c.code for c in tool.calls] == ["print(1+1)"]


def test_tool_tokens_never_carry_loss(tok):
    turns = [f"Step {i}\n```python\nprint({i})\n```\n" for i in range(3)] + ["\\boxed{9}<|im_end|>"]
    engine = ScriptedEngine(tok, turns, eos_token_ids=[IM_END])
    traj = run_one(engine, [ScriptedTool(lambda c: ToolResult(stdout="x" * 50))], cfg())
    assert traj.num_turns == 4 and traj.num_tool_calls == 3
    for turn in traj.turns:
        a, b = turn.gen_span
        assert all(traj.loss_mask[a:b])
        if turn.obs_span:
            a, b = turn.obs_span
            assert not any(traj.loss_mask[a:b]) and not any(traj.logprobs[a:b])
    assert sum(traj.loss_mask) == sum(b - a for a, b in (t.gen_span for t in traj.turns))


def test_stop_on_opening_fence_continues_the_turn(tok):
    # A bare opening fence "```\n" fires the stop, as does the closing fence of a non-python
    # block: neither is a complete python call, so the same turn keeps generating.
    text = "Try:\n```\nnote\n```\nthen\n```python\nprint(3)\n```\n"
    engine = ScriptedEngine(tok, [text, "\\boxed{3}<|im_end|>"], eos_token_ids=[IM_END])
    traj = run_one(engine, [ScriptedTool(lambda c: ToolResult(stdout="3\n"))], cfg())
    ids = enc(tok, text)
    first = stop_cut(tok, ids, "```\n")
    assert len(engine.requests) == 4  # three segments in turn 0, one in turn 1
    prompt = engine.requests[0].prompt_ids
    assert engine.requests[1].prompt_ids == prompt + tuple(first)
    t0 = traj.turns[0]
    assert t0.code == "print(3)" and t0.gen_span == (0, len(ids)) and t0.text == text
    assert traj.response_ids[: len(ids)] == tuple(ids) and all(traj.loss_mask[: len(ids)])
    assert traj.finish_reason is FinishReason.ANSWER and traj.num_turns == 2


def test_void_turn_flagged(tok):
    engine = ScriptedEngine(tok, ["I think it is about five.<|im_end|>"], eos_token_ids=[IM_END])
    traj = run_one(engine, [ScriptedTool()], cfg())
    assert traj.finish_reason is FinishReason.VOID_TURN
    assert traj.turns[0].is_void and traj.has_void_turn and not traj.truncated
    assert traj.response_ids[-1] == IM_END and traj.loss_mask[-1] == 1


def test_void_after_a_tool_turn(tok):
    engine = ScriptedEngine(tok, ["```python\nprint(1)\n```\n", "Hmm.<|im_end|>"], eos_token_ids=[IM_END])
    traj = run_one(engine, [ScriptedTool()], cfg())
    assert [t.is_void for t in traj.turns] == [False, True]
    assert traj.finish_reason is FinishReason.VOID_TURN


def test_single_turn_mode_has_no_tools_or_void(tok):
    text = "I think it is five.\n```python\nprint(5)\n```\nDone<|im_end|>"
    engine = ScriptedEngine(tok, [text], eos_token_ids=[IM_END])
    tool = ScriptedTool()
    traj = run_one(engine, [tool], cfg(tool_use=False))
    assert engine.requests[0].params.stop == ()
    assert traj.response_ids == tuple(enc(tok, text)) and all(traj.loss_mask)
    assert traj.finish_reason is FinishReason.EOS and not traj.turns[0].is_void
    assert traj.turns[0].tool_result is None and tool.calls == []


def test_max_turns_last_code_runs_but_output_not_appended(tok):
    turns = ["A\n```python\nprint(1)\n```\n", "B\n```python\nprint(2)\n```\n", "\\boxed{2}<|im_end|>"]
    engine = ScriptedEngine(tok, turns, eos_token_ids=[IM_END])
    tool = ScriptedTool(lambda c: ToolResult(stdout=c[-2] + "\n"))
    traj = run_one(engine, [tool], cfg(max_turns=2))
    gen0, gen1 = enc(tok, turns[0]), enc(tok, turns[1])
    obs0 = enc(tok, "\nCode execution result: 1\n\n")
    assert traj.response_ids == tuple(gen0 + obs0 + gen1)
    assert traj.loss_mask == tuple([1] * len(gen0) + [0] * len(obs0) + [1] * len(gen1))
    assert [c.code for c in tool.calls] == ["print(1)", "print(2)"]
    last = traj.turns[-1]
    assert last.tool_result == ToolResult(stdout="2\n") and last.obs_span is None
    assert traj.finish_reason is FinishReason.MAX_TURNS and not traj.truncated


def test_answer_with_code_in_the_same_turn_ends_trajectory(tok):
    text = "\\boxed{4}\n```python\nprint(4)\n```\n"
    engine = ScriptedEngine(tok, [text], eos_token_ids=[IM_END])
    tool = ScriptedTool()
    traj = run_one(engine, [tool], cfg())
    assert traj.finish_reason is FinishReason.ANSWER and traj.final_answer == "4"
    assert len(tool.calls) == 1 and traj.turns[0].obs_span is None
    assert traj.response_ids == tuple(enc(tok, text))


def test_response_length_cap_marks_truncated(tok):
    turns = ["```python\nprint(1)\n```\n", "word " * 100 + "<|im_end|>"]
    engine = ScriptedEngine(tok, turns, eos_token_ids=[IM_END])
    traj = run_one(engine, [ScriptedTool(lambda c: ToolResult(stdout="1"))], cfg(max_response_length=40))
    assert len(traj.response_ids) == 40 == len(traj.loss_mask)
    assert traj.truncated and traj.truncation_cause == "response_length"
    assert traj.finish_reason is FinishReason.LENGTH
    assert traj.turns[-1].truncated and traj.turns[-1].is_void and traj.turns[-1].stop_reason == "length"
    gen0 = enc(tok, turns[0])
    obs = enc(tok, "\nCode execution result: 1\n")
    budget = 40 - len(gen0) - len(obs)
    assert engine.requests[1].params.max_tokens == budget
    assert traj.response_ids[len(gen0) + len(obs) :] == tuple(enc(tok, turns[1])[:budget])


def test_observation_cap_cuts_and_marks(tok):
    turns = ["```python\nprint(1)\n```\n", "\\boxed{1}<|im_end|>"]
    engine = ScriptedEngine(tok, turns, eos_token_ids=[IM_END])
    long = " ".join(str(i) for i in range(200))
    tool = ScriptedTool(lambda c: ToolResult(stdout=long))
    traj = run_one(engine, [tool], cfg(rollout={"max_obs_tokens": 7}))
    gen0 = enc(tok, turns[0])
    obs = enc(tok, f"\nCode execution result: {long}\n")[:7]
    t0 = traj.turns[0]
    assert t0.obs_span == (len(gen0), len(gen0) + 7) and t0.truncated
    assert traj.response_ids[len(gen0) : len(gen0) + 7] == tuple(obs)
    assert t0.observation == tok.decode(obs)
    assert traj.truncated and traj.truncation_cause == "observation_length"
    assert traj.finish_reason is FinishReason.ANSWER


def test_observation_that_does_not_fit_ends_trajectory(tok):
    turns = ["```python\nprint(1)\n```\n", "\\boxed{1}<|im_end|>"]
    engine = ScriptedEngine(tok, turns, eos_token_ids=[IM_END])
    gen0 = enc(tok, turns[0])
    tool = ScriptedTool(lambda c: ToolResult(stdout="1 2 3 4 5 6 7 8 9"))
    traj = run_one(engine, [tool], cfg(max_response_length=len(gen0) + 5))
    assert traj.response_ids == tuple(gen0) and len(engine.requests) == 1
    assert traj.finish_reason is FinishReason.LENGTH and traj.truncation_cause == "response_length"
    assert traj.turns[0].observation is not None and traj.turns[0].obs_span is None


def test_context_window_cap(tok):
    engine = ScriptedEngine(tok, ["word " * 100 + "<|im_end|>"], eos_token_ids=[IM_END])
    runner = RolloutRunner(engine, [ScriptedTool()], cfg())
    prompt_len = len(runner.build_prompt(PROBLEM)[0])
    engine.max_model_len = prompt_len + 12
    traj = run_one(engine, [ScriptedTool()], cfg())
    assert len(traj.response_ids) == 12 and traj.truncation_cause == "context_window"
    assert traj.finish_reason is FinishReason.LENGTH


def test_prompt_too_long_is_not_cut(tok):
    engine = ScriptedEngine(tok, ["x<|im_end|>"], eos_token_ids=[IM_END])
    traj = run_one(engine, [ScriptedTool()], cfg(max_prompt_length=5))
    assert engine.requests == [] and traj.response_ids == () and len(traj.prompt_ids) > 5
    assert traj.finish_reason is FinishReason.PROMPT_TOO_LONG
    assert traj.truncated and traj.truncation_cause == "prompt_length"


def test_sampling_params_val_vs_train_and_seeds(tok):
    def go(training: bool, seed: int = 0):
        engine = ScriptedEngine(
            tok, ["```python\nprint(1)\n```\n", "\\boxed{1}<|im_end|>"], eos_token_ids=[IM_END]
        )
        config = cfg(seed=seed, rollout={"temperature": 0.9, "top_p": 0.8, "top_k": 50})
        RolloutRunner(engine, [ScriptedTool()], config).run([PROBLEM], n=2, training=training)
        return [r.params for r in engine.requests]

    val, train = go(False), go(True)
    assert {(p.temperature, p.top_p, p.top_k) for p in val} == {(0.5, 0.9, 20)}
    assert {(p.temperature, p.top_p, p.top_k) for p in train} == {(0.9, 0.8, 50)}
    assert all(p.stop == ("```\n",) for p in val)
    assert len({p.seed for p in val}) == len(val)  # every request its own seed
    assert [p.seed for p in go(False)] == [p.seed for p in val]  # reproducible
    assert [p.seed for p in go(False, seed=1)] != [p.seed for p in val]


def test_n_samples_and_groups(tok):
    engine = ScriptedEngine(
        tok, ["```python\nprint(1)\n```\n", "\\boxed{1}<|im_end|>"], eos_token_ids=[IM_END]
    )
    problems = [PROBLEM, dataclasses.replace(PROBLEM, id="p1")]
    groups = RolloutRunner(engine, [ScriptedTool()], cfg()).run(problems, n=3)
    assert [g.problem.id for g in groups] == ["p0", "p1"]
    assert [[t.sample_index for t in g.trajectories] for g in groups] == [[0, 1, 2]] * 2
    assert all(t.finish_reason is FinishReason.ANSWER for g in groups for t in g.trajectories)
    assert all(t.reward is None for g in groups for t in g.trajectories)


def test_chat_template_on_and_off(tok):
    template = "Q: {question}\nA (use {{braces}}):"
    engine = ScriptedEngine(tok, ["x<|im_end|>"], eos_token_ids=[IM_END])
    on = RolloutRunner(engine, [ScriptedTool()], cfg(rollout={"prompt_template": template}))
    off = RolloutRunner(
        engine, [ScriptedTool()], cfg(rollout={"prompt_template": template, "chat_template": False})
    )
    content = "Q: What is 1+1?\nA (use {braces}):"
    msgs = [{"role": "user", "content": content}]
    expected = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert on.build_prompt(PROBLEM) == (enc(tok, expected), expected)
    assert off.build_prompt(PROBLEM) == (enc(tok, content), content)
    with pytest.raises(ConfigError, match="prompt_template"):
        RolloutRunner(engine, [ScriptedTool()], cfg(rollout={"prompt_template": "no placeholder"}))
    with pytest.raises(ConfigError, match="tool_use=True"):
        RolloutRunner(engine, [], cfg())


def test_tools_overlap_generation(tok):
    turns = ["```python\nprint(1)\n```\n", "```python\nprint(2)\n```\n", "\\boxed{2}<|im_end|>"]
    engine = ScriptedEngine(tok, turns, eos_token_ids=[IM_END], delay_s=0.01)
    seen: dict[str, int] = {}
    tool = ScriptedTool(delay_s=lambda i: 1.0 if i == 0 else 0.1)
    original = tool.run

    async def run(call, *, timeout_s=None):
        first = not tool.calls
        result = await original(call)
        if first:
            seen["requests_during_slow_call"] = len(engine.requests)
        return result

    tool.run = run  # type: ignore[method-assign]
    start = time.perf_counter()
    [group] = RolloutRunner(engine, [tool], cfg()).run([PROBLEM], n=6)
    wall = time.perf_counter() - start
    assert all(t.finish_reason is FinishReason.ANSWER and t.num_turns == 3 for t in group.trajectories)
    # While one trajectory waited 1 s on its tool, the five others ran all three turns.
    assert seen["requests_during_slow_call"] >= 6 + 5 * 2
    # Serial tools would take 1.0 + 11 x 0.1 s; overlapped, about 1.0 + 0.1.
    assert wall < 1.8


def test_boxed_inside_code_is_a_call_not_an_answer(tok):
    # The source of a print of \\boxed is code to run; only its output may answer. The loop and
    # the reward share one extraction (simpletir.core.answers), so they agree on this.
    code_turn = "Compute:\n```python\nprint(f'\\\\boxed{{{1+1}}}')\n```\n"
    engine = ScriptedEngine(tok, [code_turn, "So \\boxed{2}<|im_end|>"], eos_token_ids=[IM_END])
    tool = ScriptedTool(lambda c: ToolResult(stdout="\\boxed{2}\n"))
    traj = run_one(engine, [tool], cfg())
    t0, t1 = traj.turns
    assert t0.final_answer is None and t0.ran_code and t0.obs_span is not None
    assert t1.final_answer == "2" and traj.finish_reason is FinishReason.ANSWER


def test_run_inside_event_loop_is_refused(tok):
    engine = ScriptedEngine(tok, ["x<|im_end|>"], eos_token_ids=[IM_END])
    runner = RolloutRunner(engine, [ScriptedTool()], cfg())

    async def inside():
        with pytest.raises(RuntimeError, match="arun"):
            runner.run([PROBLEM])
        return await runner.arun([PROBLEM], n=1)

    [group] = asyncio.run(inside())
    assert group.trajectories[0].finish_reason is FinishReason.VOID_TURN


def test_observation_that_overflows_the_context_window_is_not_appended(tok):
    # The model's context window (max_position_embeddings) can be smaller than
    # max_prompt_length + max_response_length: an observation that fits the response budget but
    # not the window must not be appended (prompt + response would exceed what the engine, and
    # the trainer, can process).
    turns = ["```python\nprint(1)\n```\n", "\\boxed{1}<|im_end|>"]
    engine = ScriptedEngine(tok, turns, eos_token_ids=[IM_END])
    gen0 = enc(tok, turns[0])
    prompt_len = len(RolloutRunner(engine, [ScriptedTool()], cfg()).build_prompt(PROBLEM)[0])
    engine.max_model_len = prompt_len + len(gen0) + 5
    tool = ScriptedTool(lambda c: ToolResult(stdout="1 2 3 4 5 6 7 8 9"))
    traj = run_one(engine, [tool], cfg())
    assert len(traj.prompt_ids) + len(traj.response_ids) <= engine.max_model_len
    assert traj.response_ids == tuple(gen0) and len(engine.requests) == 1
    assert traj.finish_reason is FinishReason.LENGTH and traj.truncation_cause == "context_window"
    assert traj.turns[0].observation is not None and traj.turns[0].obs_span is None
