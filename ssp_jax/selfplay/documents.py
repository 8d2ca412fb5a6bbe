"""The documents the RAG check's reader sees (SSP.md section 2.2).

A question passes only if a reader without search can answer it from what the proposer actually
retrieved. Whole blocks from other proposer trajectories of the batch are mixed in as
distractors, so the reader has to find the supporting evidence among plausible but unrelated
text instead of being handed only relevant passages; the paper's ablation found 4 distractor
blocks best (0, 1 and 7 were worse). At paper settings (top-3 passages of ~100 words, 2-4
searches per block) five blocks come to ~9k tokens, so the reader has a prompt budget of its own,
and documents over it are shortened by a stated rule (`fit_passages`) and counted, never dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from ssp_jax.agent.trajectory import Trajectory
from ssp_jax.retrieval.base import Passage
from ssp_jax.tokenizer import Tokenizer, format_passages


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


@dataclasses.dataclass(frozen=True)
class Fitted:
    """The reader's documents after `fit_passages`, with what was cut (0 and 0 when they fit)."""

    passages: list[Passage]
    cut_passages: int  # passages shortened
    cut_tokens: int  # passage tokens removed


def fit_passages(passages: Sequence[Passage], prompt_ids: Callable[[Sequence[Passage]], list[int]], budget: int,
                 tokenizer: Tokenizer) -> Fitted:
    """`passages`, shortened so that `prompt_ids(passages)` is at most `budget` tokens.

    Rule: every passage keeps the same number of leading text tokens, the largest that fits (water
    filling: passages shorter than that stay whole); titles and order are kept and no passage is
    dropped. If not even empty passages fit (the question alone is too long), they come back empty
    and the reader's prompt is then counted as too long.
    """
    if len(prompt_ids(passages)) <= budget:
        return Fitted(list(passages), 0, 0)
    texts = [tokenizer.encode(p.text) for p in passages]
    room = budget - len(prompt_ids([_with_text(p, "") for p in passages]))
    lengths = sorted(len(t) for t in texts)
    cap, used = 0, 0
    for i, n in enumerate(lengths):  # the largest cap with sum(min(len, cap)) <= room
        if used + (n - cap) * (len(lengths) - i) > room:
            cap += max(room - used, 0) // (len(lengths) - i)
            break
        used, cap = used + (n - cap) * (len(lengths) - i), n
    while True:  # text re-tokenized in context can merge differently: shrink until it really fits
        cut = [_with_text(p, tokenizer.decode(t[:cap])) if len(t) > cap else p for p, t in zip(passages, texts)]
        if cap == 0 or len(prompt_ids(cut)) <= budget:
            long = [len(t) for t in texts if len(t) > cap]
            return Fitted(cut, len(long), sum(long) - cap * len(long))
        cap -= max(1, cap // 32)


def _with_text(passage: Passage, text: str) -> Passage:
    return dataclasses.replace(passage, contents=f'"{passage.title}"\n{text}')
