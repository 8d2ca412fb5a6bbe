"""The documents the RAG check's reader sees (SSP.md section 2.2).

A question passes only if a reader without search can answer it from what the proposer actually
retrieved. Whole blocks from other proposer trajectories of the batch are mixed in as
distractors, so the reader has to find the supporting evidence among plausible but unrelated
text instead of being handed only relevant passages; the paper's ablation found 4 distractor
blocks best (0, 1 and 7 were worse).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ssp_jax.agent.trajectory import Trajectory
from ssp_jax.retrieval.base import Passage
from ssp_jax.tokenizer import format_passages


def proposer_blocks(traj: Trajectory) -> list[Passage]:
    """Everything retrieved in one proposer trajectory, in retrieval order (duplicates kept)."""
    return [passage for passages in traj.passages for passage in passages]


def passages_text(passages: Sequence[Passage]) -> str:
    """Passages numbered Doc 1..N, as a reader prompt shows them."""
    return format_passages([(p.title, p.text) for p in passages])


def rag_passages(own: Sequence[Passage], others: Sequence[Sequence[Passage]], num_distractor_blocks: int,
                 rng: np.random.Generator) -> list[Passage]:
    """The reader's documents: `own` plus up to `num_distractor_blocks` random other blocks.

    Distractors are drawn without replacement from the non-empty blocks of `others` (the other
    trajectories of the batch; the caller leaves `own` out), fewer when not enough exist. The
    blocks are shuffled as units, each keeping its internal order, and concatenated (a reading
    reader sees them numbered Doc 1..N by `passages_text`). Deterministic given the state of `rng`.
    """
    if num_distractor_blocks < 0:
        raise ValueError(f"num_distractor_blocks must be >= 0, got {num_distractor_blocks}")
    candidates = [block for block in others if block]
    picked = rng.choice(len(candidates), min(num_distractor_blocks, len(candidates)), replace=False)
    blocks = [own, *(candidates[int(i)] for i in picked)]
    return [p for i in rng.permutation(len(blocks)) for p in blocks[int(i)]]
