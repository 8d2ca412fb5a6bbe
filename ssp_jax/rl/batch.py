"""The RL training batch and its host-side packer.

Every per-token array is aligned with `tokens`: the value at t belongs to token t (its log-prob is
log p(tokens[t] | tokens[:t])). Position 0 has no context, so it is never trained. Rows are
right-padded and shapes come from fixed buckets, so the compiled update sees few distinct shapes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from ssp_jax.models.shapes import bucket_for


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class RLBatch:
    """One padded batch for the learner: tokens, masks, behaviour and reference log-probs and one
    advantage per row. Shapes come from length buckets, so the update compiles only a few times."""

    tokens: np.ndarray | jax.Array  # [B, T] int32
    attention_mask: np.ndarray | jax.Array  # [B, T] int32: 1 = real token (right-padded)
    loss_mask: np.ndarray | jax.Array  # [B, T] float32: 1 = policy-generated token to train
    old_logprobs: np.ndarray | jax.Array  # [B, T] float32: behaviour policy log p(token t)
    ref_logprobs: np.ndarray | jax.Array  # [B, T] float32: frozen reference policy log p(token t)
    advantages: np.ndarray | jax.Array  # [B] float32: one per sequence


def pack_batch(sequences: Sequence[Sequence[int]], loss_masks: Sequence[Sequence[float]],
               old_logprobs: Sequence[Sequence[float]] | None, advantages: Sequence[float] | np.ndarray,
               length_buckets: Sequence[int], batch_multiple: int = 1) -> RLBatch:
    """Right-pad rows to one length bucket and the row count to a multiple of `batch_multiple`.

    `old_logprobs=None` leaves zeros, for the caller to fill with `Learner.logprobs` (recomputing
    behaviour log-probs under the training forward is what PPO's ratio needs). `ref_logprobs` is
    always left zero for the same reason. Padding rows are fully masked with advantage 0, so they
    change neither the loss nor its token count.
    """
    rows = len(sequences)
    if not rows:
        raise ValueError("pack_batch needs at least one sequence")
    if len(loss_masks) != rows or len(advantages) != rows or (old_logprobs is not None and len(old_logprobs) != rows):
        raise ValueError(f"pack_batch: {rows} sequences but {len(loss_masks)} loss_masks, "
                         f"{len(advantages)} advantages"
                         + ("" if old_logprobs is None else f", {len(old_logprobs)} old_logprobs"))
    if batch_multiple < 1:
        raise ValueError(f"batch_multiple must be >= 1, got {batch_multiple}")
    width = bucket_for(max(len(s) for s in sequences), length_buckets)
    height = -(-rows // batch_multiple) * batch_multiple
    tokens = np.zeros((height, width), np.int32)
    attention = np.zeros((height, width), np.int32)
    loss_mask = np.zeros((height, width), np.float32)
    old = np.zeros((height, width), np.float32)
    adv = np.zeros((height,), np.float32)
    for i, seq in enumerate(sequences):
        n = len(seq)
        if len(loss_masks[i]) != n or (old_logprobs is not None and len(old_logprobs[i]) != n):
            raise ValueError(f"pack_batch row {i}: {n} tokens but {len(loss_masks[i])} loss_mask values"
                             + ("" if old_logprobs is None else f" and {len(old_logprobs[i])} old_logprobs"))
        if n and loss_masks[i][0]:
            raise ValueError(f"pack_batch row {i}: loss_mask[0] must be 0 (the first token has no context)")
        tokens[i, :n], attention[i, :n], loss_mask[i, :n] = seq, 1, loss_masks[i]
        if old_logprobs is not None:
            old[i, :n] = old_logprobs[i]
        adv[i] = advantages[i]
    return RLBatch(tokens=tokens, attention_mask=attention, loss_mask=loss_mask, old_logprobs=old,
                   ref_logprobs=np.zeros_like(old), advantages=adv)


@dataclasses.dataclass(frozen=True)
class MicroBatch:
    """Rows of a batch that run together, and the width they pad to: the smallest length bucket that
    holds the longest of them, not the batch's."""

    rows: np.ndarray  # [micro] int: indices into the batch
    width: int


def plan_micro_batches(lengths: np.ndarray, blocks: int, micro: int, length_buckets: Sequence[int],
                       max_width: int) -> list[list[MicroBatch]]:
    """Split rows into `blocks` contiguous blocks (mini-batches: GRPO groups stay together), and each
    block into micro-batches of `micro` rows, longest rows first, each with its own width.

    Sorting by length inside a block puts rows of similar length together, so few micro-batches
    pad to the longest row; it cannot change a mini-batch's loss, which divides every micro-batch
    by the whole mini-batch's token count. A block that is one micro-batch keeps its row order.
    Widths are `length_buckets` capped at `max_width` (the batch's own padded width).
    lengths: [rows] real tokens per row.
    """
    rows = len(lengths)
    if blocks < 1 or rows % blocks or micro < 1 or (rows // blocks) % micro:
        raise ValueError(f"{rows} rows do not split into {blocks} blocks of micro-batches of {micro} rows")
    widths = sorted({b for b in length_buckets if b < max_width} | {max_width})
    size = rows // blocks
    plan = []
    for start in range(0, rows, size):
        block = np.arange(start, start + size)
        if size > micro:
            block = block[np.argsort(-lengths[block], kind="stable")]
        plan.append([MicroBatch(rows=part, width=bucket_for(max(int(lengths[part].max()), 1), widths))
                     for part in np.split(block, size // micro)])
    return plan


def take_rows(batch: RLBatch, micro: MicroBatch) -> RLBatch:
    """The micro-batch's rows of a host batch, cut to its width (only padding lies beyond it)."""
    def take(x: np.ndarray | jax.Array) -> np.ndarray:
        rows = np.asarray(x)[micro.rows]
        return rows[:, :micro.width] if rows.ndim == 2 else rows

    return jax.tree.map(take, batch)
