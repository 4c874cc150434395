"""Trajectory groups -> padded tensors, and the mini-/micro-batch splits of one update.

A :class:`TrainBatch` holds one row per trajectory. The full sequence (prompt + response) is
right-padded, so position ids are the plain ``0..L-1`` every model computes by itself. Every
per-token quantity of the objective (``loss_mask``, log-probs, advantages) is *response-aligned*:
``[B, T]`` with ``T`` the longest response, row ``i`` column ``j`` being response token ``j``
of trajectory ``i``. A backend turns its ``[B, L]`` model outputs into that layout with
:func:`response_positions`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from simpletir.core.types import TrajectoryGroup


@dataclass(frozen=True)
class TrainBatch:
    """Padded tensors of ``B`` trajectories.

    ``input_ids``/``attention_mask``: ``[B, L]``, prompt then response, right-padded.
    ``prompt_lens``/``response_lens``: ``[B]``.
    ``responses``, ``loss_mask``, ``engine_logprobs``: ``[B, T]`` response-aligned (0 past the end).
    ``advantages``, ``old_logprobs``, ``ref_logprobs``, ``tis_weights``: ``[B, T]``, filled in by the loop.
    ``group_index``: ``[B]`` the group (prompt) each row belongs to.
    """

    input_ids: Tensor
    attention_mask: Tensor
    prompt_lens: Tensor
    response_lens: Tensor
    responses: Tensor
    loss_mask: Tensor
    engine_logprobs: Tensor
    group_index: Tensor
    advantages: Tensor | None = None
    old_logprobs: Tensor | None = None
    ref_logprobs: Tensor | None = None
    tis_weights: Tensor | None = None

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_loss_tokens(self) -> int:
        return int(self.loss_mask.sum().item())

    def replace(self, **changes: Tensor | None) -> TrainBatch:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def rows(self, index: Sequence[int] | Tensor) -> TrainBatch:
        """The rows ``index``, with padding trimmed to the longest sequence and response kept."""
        idx = torch.as_tensor(index, dtype=torch.long)
        seq_width = int((self.prompt_lens[idx] + self.response_lens[idx]).max().item()) if len(idx) else 0
        resp_width = int(self.response_lens[idx].max().item()) if len(idx) else 0

        def take(tensor: Tensor | None, width: int | None) -> Tensor | None:
            if tensor is None:
                return None
            picked = tensor.index_select(0, idx)
            return picked[:, :width] if width is not None else picked

        fields = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("input_ids", "attention_mask"):
                fields[f.name] = take(value, max(seq_width, 1))
            elif f.name in ("prompt_lens", "response_lens", "group_index"):
                fields[f.name] = take(value, None)
            else:
                fields[f.name] = take(value, max(resp_width, 1))
        return TrainBatch(**fields)  # type: ignore[arg-type]


def build_train_batch(groups: Sequence[TrajectoryGroup], pad_token_id: int) -> TrainBatch:
    """One row per trajectory, in group-then-sample order (the order of :func:`algo.group_scores`).

    Every trajectory is kept, fully masked ones included: they still count in their group's
    baseline, and their rows simply carry no loss.
    """
    rows = [(g, t) for g, group in enumerate(groups) for t in group.trajectories]
    if not rows:
        raise ValueError("build_train_batch got no trajectories")
    seq_len = max(len(t.prompt_ids) + len(t.response_ids) for _, t in rows)
    resp_len = max(max(len(t.response_ids) for _, t in rows), 1)
    b = len(rows)
    input_ids = torch.full((b, seq_len), pad_token_id, dtype=torch.long)
    attention = torch.zeros((b, seq_len), dtype=torch.long)
    responses = torch.full((b, resp_len), pad_token_id, dtype=torch.long)
    loss_mask = torch.zeros((b, resp_len), dtype=torch.float32)
    engine_lp = torch.zeros((b, resp_len), dtype=torch.float32)
    for i, (_, t) in enumerate(rows):
        p, r = len(t.prompt_ids), len(t.response_ids)
        input_ids[i, : p + r] = torch.tensor(t.prompt_ids + t.response_ids, dtype=torch.long)
        attention[i, : p + r] = 1
        if r:
            responses[i, :r] = torch.tensor(t.response_ids, dtype=torch.long)
            loss_mask[i, :r] = torch.tensor(t.loss_mask, dtype=torch.float32)
            engine_lp[i, :r] = torch.tensor(t.logprobs, dtype=torch.float32)
    return TrainBatch(
        input_ids=input_ids,
        attention_mask=attention,
        prompt_lens=torch.tensor([len(t.prompt_ids) for _, t in rows], dtype=torch.long),
        response_lens=torch.tensor([len(t.response_ids) for _, t in rows], dtype=torch.long),
        responses=responses,
        loss_mask=loss_mask,
        engine_logprobs=engine_lp,
        group_index=torch.tensor([g for g, _ in rows], dtype=torch.long),
    )


def response_positions(batch: TrainBatch) -> Tensor:
    """``[B, T]`` positions in ``input_ids`` whose logits predict each response token.

    The logits at position ``p`` predict token ``p + 1``, so response token ``j`` of row ``i``
    is predicted at ``prompt_len_i - 1 + j``. Past a row's end the index is clamped (those
    columns are masked everywhere).
    """
    width = batch.responses.shape[1]
    offsets = torch.arange(width, dtype=torch.long).unsqueeze(0)
    positions = batch.prompt_lens.unsqueeze(1) - 1 + offsets
    return positions.clamp(min=0, max=batch.input_ids.shape[1] - 1)


def mini_batches(batch: TrainBatch, groups_per_mini_batch: int) -> Iterator[TrainBatch]:
    """Consecutive mini-batches of whole groups (``algorithm.ppo_mini_batch_size`` prompts each)."""
    num_groups = int(batch.group_index.max().item()) + 1
    for start in range(0, num_groups, groups_per_mini_batch):
        chosen = (batch.group_index >= start) & (batch.group_index < start + groups_per_mini_batch)
        if bool(chosen.any()):  # groups whose every row was masked (and dropped) leave no mini-batch
            yield batch.rows(torch.nonzero(chosen).flatten())


def micro_batches(batch: TrainBatch, max_rows: int, max_tokens: int = 0) -> list[TrainBatch]:
    """Split into micro-batches of at most ``max_rows`` rows and, when ``max_tokens`` > 0, at most
    ``max_tokens`` padded tokens (rows x longest sequence); a single row always fits."""
    lengths = (batch.prompt_lens + batch.response_lens).tolist()
    chunks: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i, length in enumerate(lengths):
        widest = max(longest, length)
        too_many_rows = len(current) >= max_rows
        too_many_tokens = max_tokens > 0 and current and widest * (len(current) + 1) > max_tokens
        if current and (too_many_rows or too_many_tokens):
            chunks.append(current)
            current, widest = [], length
        current.append(i)
        longest = widest
    if current:
        chunks.append(current)
    return [batch.rows(chunk) for chunk in chunks]


def logprobs_by_micro_batch(
    batch: TrainBatch,
    max_rows: int,
    max_tokens: int,
    forward: Callable[[TrainBatch], tuple[Tensor, Tensor | None]],
    with_entropy: bool,
) -> tuple[Tensor, Tensor | None]:
    """``[B, T]`` log-probs (and entropy) of ``batch``, ``forward`` run on each micro-batch without
    gradient; rows and response columns put back where they came from (on CPU)."""
    logprobs = torch.zeros(batch.responses.shape, dtype=torch.float32)
    entropy = torch.zeros(batch.responses.shape, dtype=torch.float32) if with_entropy else None
    start = 0
    with torch.no_grad():
        for micro in micro_batches(batch, max_rows, max_tokens):
            rows, width = micro.size, micro.responses.shape[1]
            lp, ent = forward(micro)
            logprobs[start : start + rows, :width] = lp.cpu()
            if entropy is not None and ent is not None:
                entropy[start : start + rows, :width] = ent.cpu()
            start += rows
    return logprobs, entropy
