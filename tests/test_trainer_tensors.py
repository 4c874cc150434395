"""TrainBatch layout: right padding, response-aligned per-token tensors, row trimming and the splits."""

from __future__ import annotations

import pytest
import torch

from simpletir.core.trainer.tensors import (
    build_train_batch,
    micro_batches,
    mini_batches,
    response_positions,
)
from simpletir.core.types import FinishReason, Trajectory, TrajectoryGroup
from simpletir.testing import make_group, make_problem

PAD = 0


def traj(prompt: list[int], response: list[int], mask: list[int] | None = None, index: int = 0) -> Trajectory:
    mask = [1] * len(response) if mask is None else mask
    return Trajectory(
        problem_id="p",
        sample_index=index,
        prompt_ids=tuple(prompt),
        response_ids=tuple(response),
        loss_mask=tuple(mask),
        logprobs=tuple(-0.1 * (i + 1) if m else 0.0 for i, m in enumerate(mask)),
        turns=(),
        finish_reason=FinishReason.ANSWER,
    )


def group(pid: str, *trajectories: Trajectory) -> TrajectoryGroup:
    return TrajectoryGroup(make_problem(pid), tuple(trajectories))


def three_groups() -> list[TrajectoryGroup]:
    return [
        group("a", traj([11, 12, 13], [21, 22], [1, 1]), traj([11, 12, 13], [31, 32, 33, 34], [1, 0, 0, 1])),
        group("b", traj([41], [51, 52, 53, 54, 55], [1, 1, 1, 0, 0])),
        group("c", traj([61, 62], [71], [1]), traj([61, 62], [], []), traj([61, 62], [81, 82], [0, 0])),
    ]


def test_build_train_batch_layout() -> None:
    batch = build_train_batch(three_groups(), PAD)
    assert batch.size == 6
    # group-then-sample order, the group each row belongs to
    assert batch.group_index.tolist() == [0, 0, 1, 2, 2, 2]
    assert batch.prompt_lens.tolist() == [3, 3, 1, 2, 2, 2]
    assert batch.response_lens.tolist() == [2, 4, 5, 1, 0, 2]
    # full sequences: prompt then response, right-padded to the longest (3 + 4 = 7)
    assert batch.input_ids.tolist() == [
        [11, 12, 13, 21, 22, PAD, PAD],
        [11, 12, 13, 31, 32, 33, 34],
        [41, 51, 52, 53, 54, 55, PAD],
        [61, 62, 71, PAD, PAD, PAD, PAD],
        [61, 62, PAD, PAD, PAD, PAD, PAD],
        [61, 62, 81, 82, PAD, PAD, PAD],
    ]
    assert batch.attention_mask.tolist() == [
        [1, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
    ]
    # response-aligned: column j is response token j, width = the longest response (5)
    assert batch.responses.tolist() == [
        [21, 22, PAD, PAD, PAD],
        [31, 32, 33, 34, PAD],
        [51, 52, 53, 54, 55],
        [71, PAD, PAD, PAD, PAD],
        [PAD] * 5,
        [81, 82, PAD, PAD, PAD],
    ]
    assert batch.loss_mask.tolist() == [
        [1, 1, 0, 0, 0],
        [1, 0, 0, 1, 0],
        [1, 1, 1, 0, 0],
        [1, 0, 0, 0, 0],
        [0] * 5,
        [0] * 5,
    ]
    assert batch.num_loss_tokens == 2 + 2 + 3 + 1
    expected_lp = torch.tensor(
        [
            [-0.1, -0.2, 0, 0, 0],
            [-0.1, 0, 0, -0.4, 0],
            [-0.1, -0.2, -0.3, 0, 0],
            [-0.1, 0, 0, 0, 0],
            [0] * 5,
            [0] * 5,
        ]
    )
    assert torch.allclose(batch.engine_logprobs, expected_lp)
    assert batch.advantages is None and batch.old_logprobs is None
    # the logits that predict response token j of row i sit at prompt_len_i - 1 + j
    positions = response_positions(batch)
    for i in range(batch.size):
        for j in range(int(batch.response_lens[i])):
            assert batch.input_ids[i, int(positions[i, j]) + 1] == batch.responses[i, j]
    assert int(positions.max()) <= batch.input_ids.shape[1] - 1  # clamped past the ends


def test_build_train_batch_keeps_masked_trajectories_and_refuses_nothing() -> None:
    from simpletir.testing import make_trajectory

    kept = make_trajectory(score=1.0, turns=2, code_turns=1)
    void = make_trajectory(score=0.0, void=True).masked("void_turn")
    batch = build_train_batch([make_group([kept, void])], PAD)
    assert batch.size == 2  # the masked row stays (it counts in the group baseline)
    assert batch.loss_mask[1].sum() == 0
    assert batch.loss_mask[0].tolist() == [1, 1, 1, 1, 0, 0, 1, 1, 1, 1]  # observation ids are 0
    with pytest.raises(ValueError, match="no trajectories"):
        build_train_batch([], PAD)


def test_rows_trims_padding_to_the_chosen_rows() -> None:
    batch = build_train_batch(three_groups(), PAD)
    filled = batch.replace(advantages=torch.arange(30, dtype=torch.float32).reshape(6, 5))
    part = filled.rows([3, 5])
    assert part.size == 2
    assert part.input_ids.tolist() == [[61, 62, 71, PAD], [61, 62, 81, 82]]  # width 4 = 2 + 2
    assert part.attention_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert part.responses.tolist() == [[71, PAD], [81, 82]]  # width 2
    assert part.loss_mask.tolist() == [[1, 0], [0, 0]]
    assert part.advantages is not None and part.advantages.tolist() == [[15, 16], [25, 26]]
    assert part.old_logprobs is None  # absent fields stay absent
    assert part.group_index.tolist() == [2, 2]
    assert part.prompt_lens.tolist() == [2, 2] and part.response_lens.tolist() == [1, 2]
    # a row with an empty response keeps one (masked) response column
    empty = batch.rows([4])
    assert empty.responses.shape == (1, 1) and empty.loss_mask.tolist() == [[0]]
    assert empty.input_ids.tolist() == [[61, 62]]
    # picking rows never changes what a row holds (same tensors as the full batch, trimmed)
    for i in range(batch.size):
        row = batch.rows([i])
        width = row.responses.shape[1]
        assert torch.equal(row.responses[0], batch.responses[i, :width])
        assert torch.equal(row.engine_logprobs[0], batch.engine_logprobs[i, :width])


def test_micro_batches_respect_rows_and_token_budget() -> None:
    batch = build_train_batch(three_groups(), PAD)  # sequence lengths 5, 7, 6, 3, 2, 4
    by_rows = micro_batches(batch, max_rows=4)
    assert [m.size for m in by_rows] == [4, 2]
    assert torch.equal(torch.cat([m.group_index for m in by_rows]), batch.group_index)

    budget = 14
    by_tokens = micro_batches(batch, max_rows=10, max_tokens=budget)
    for micro in by_tokens:
        assert micro.size <= 10
        padded = micro.size * micro.input_ids.shape[1]
        assert padded <= budget or micro.size == 1, (micro.size, micro.input_ids.shape)
    # greedy, in order: [5, 7] -> 2 x 7 = 14; [6, 3] -> 12 (adding 2 would make 18); [2, 4] -> 8
    assert [m.size for m in by_tokens] == [2, 2, 2]
    assert sum(m.size for m in by_tokens) == batch.size
    rows = torch.cat([m.input_ids[:, :2] for m in by_tokens])
    assert torch.equal(rows, batch.input_ids[:, :2])  # every row once, in order

    # a single row always fits, even above the budget
    tiny = micro_batches(batch, max_rows=10, max_tokens=1)
    assert [m.size for m in tiny] == [1] * 6
    # the loss tokens of the micro-batches add up to the batch's
    assert sum(m.num_loss_tokens for m in tiny) == batch.num_loss_tokens


def test_mini_batches_keep_whole_groups() -> None:
    batch = build_train_batch(three_groups(), PAD)
    minis = list(mini_batches(batch, 2))
    assert [m.group_index.tolist() for m in minis] == [[0, 0, 1], [2, 2, 2]]
    # trimmed to their own widths: group c has sequences of at most 4 tokens, responses of 2
    assert minis[1].input_ids.shape == (3, 4) and minis[1].responses.shape == (3, 2)
    singles = list(mini_batches(batch, 1))
    assert [m.size for m in singles] == [2, 1, 3]
    everything = list(mini_batches(batch, 5))
    assert len(everything) == 1 and torch.equal(everything[0].input_ids, batch.input_ids)
