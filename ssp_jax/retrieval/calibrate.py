"""ScaNN's search width, chosen at build time from the recall it gives on held-out queries.

A width sized from the corpus size alone loses recall on real text (at 10k Wikipedia passages, 8 of
100 leaves gave recall@10 0.846 against 0.953 exact). So the build measures it: it draws `sample`
passages, makes a query from each (a window of its words, encoded as a query), and widens the search
until ScaNN finds the source passage in its top-k nearly as often as exact search does. The gap must
fit `tolerance` with two standard errors to spare, so that it holds on unseen queries too: on the
wiki-offline paragraphs, the width whose gap just met 1 point on 1,000 queries lost 1.35 points on
4,000 others (docs/research-log/2026-12-05-hardening.md). The figures go to the build log and the manifest.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np

from ssp_jax.retrieval.base import Passage, split_search_r1_contents
from ssp_jax.retrieval.exact import ExactIndex
from ssp_jax.retrieval.index import QueryEncoder
from ssp_jax.retrieval.scann_index import ScannIndex


class PassageRows(Protocol):
    """Passages by row id, as `Corpus` serves them."""

    def __len__(self) -> int: ...

    def get_batch(self, rows: np.ndarray) -> list[Passage]: ...


@dataclasses.dataclass(frozen=True)
class RecallCheck:
    """How the held-out check is run: `sample` queries of `query_words` words, recall@`k`, and how far
    below exact search ScaNN may stay (`tolerance`, a share: 0.01 = 1 point)."""

    sample: int = 2000
    k: int = 10
    tolerance: float = 0.01
    query_words: int = 12
    seed: int = 0

    def __post_init__(self) -> None:
        if self.sample < 0 or self.k < 1 or self.query_words < 1 or not 0 <= self.tolerance < 1:
            raise ValueError(f"recall check needs sample >= 0, k >= 1, query_words >= 1, 0 <= tolerance < 1; "
                             f"got {self}")


@dataclasses.dataclass(frozen=True)
class RecallReport:
    """The check's result; `met` is False when even a full search stays below the target."""

    sample: int
    k: int
    tolerance: float
    exact_recall: float  # share of queries whose source passage is in exact search's top-k
    scann_recall: float  # the same for ScaNN at `leaves_to_search`
    gap_bound: float  # exact_recall - scann_recall plus two standard errors of the paired difference
    neighbour_overlap: float  # share of exact search's top-k that ScaNN returns too
    num_leaves: int
    leaves_to_search: int
    brute_force: bool  # a small corpus: ScaNN scores every row exactly, there is no width to choose
    met: bool  # gap_bound <= tolerance
    tried: dict[int, float]  # searched leaves -> recall@k

    def summary(self) -> str:
        width = "brute force" if self.brute_force else f"searching {self.leaves_to_search} of {self.num_leaves} leaves"
        return (f"recall@{self.k} on {self.sample} held-out queries: exact {self.exact_recall:.3f}, ScaNN "
                f"{self.scann_recall:.3f} {width} (gap + 2 SE = {self.gap_bound:.4f}, tolerance {self.tolerance}) "
                f"(top-{self.k} overlap with exact {self.neighbour_overlap:.3f}; tried "
                + ", ".join(f"{w}: {r:.3f}" for w, r in sorted(self.tried.items())) + ")")


def held_out_queries(corpus: PassageRows, check: RecallCheck) -> tuple[list[str], np.ndarray]:
    """(query texts, source rows [m]): a seeded window of `query_words` words from each of `sample`
    distinct passages with text (the title line is left out: a query rarely names its page)."""
    rng = np.random.default_rng(check.seed)
    rows = rng.permutation(len(corpus))[:check.sample]
    texts, kept = [], []
    for row, passage in zip(rows, corpus.get_batch(rows)):
        words = split_search_r1_contents(passage.contents)[1].split()
        if not words:
            continue
        start = int(rng.integers(0, max(1, len(words) - check.query_words + 1)))
        texts.append(" ".join(words[start:start + check.query_words]))
        kept.append(row)
    return texts, np.asarray(kept, np.int64)


def _hits(ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """[m] bool: each query's source row is among its results `ids` [m, k]."""
    return (ids == rows[:, None]).any(axis=1)


def gap_bound(exact_hits: np.ndarray, scann_hits: np.ndarray, z: float = 2.0) -> float:
    """Upper confidence bound on exact's recall minus ScaNN's over unseen queries: the sample's gap
    plus `z` standard errors of a paired difference (only queries where the two disagree add variance)."""
    m = len(exact_hits)
    if not m:
        return 0.0
    difference = exact_hits.astype(np.float64) - scann_hits  # [m] in {-1, 0, 1}
    gap = float(difference.mean())
    return gap + z * float(np.sqrt(max(float((difference ** 2).mean()) - gap ** 2, 0.0) / m))


def calibrate_width(index: ScannIndex, vectors: np.ndarray, encoder: QueryEncoder, corpus: PassageRows,
                    check: RecallCheck = RecallCheck(), *, tune: bool = True) -> RecallReport:
    """The fewest searched leaves whose recall@k stays within `tolerance` of exact search over `vectors`
    [n, dim] (the index's rows) on unseen queries: the sample's gap plus two standard errors must fit.
    Widths double from the configured one, then a bisection finds the smallest that fits; `tune=False`
    only measures the configured width. A brute-force index searches everything and is reported so."""
    num_leaves = index.config.num_leaves or 1
    texts, rows = held_out_queries(corpus, check)
    queries = encoder.encode_queries(texts)  # [m, d]
    _, truth = ExactIndex(vectors).search(queries, check.k)  # [m, k]
    exact_hits = _hits(truth, rows)
    tried: dict[int, float] = {}
    bounds: dict[int, float] = {}
    results: dict[int, np.ndarray] = {}

    def fits(width: int) -> bool:
        _, ids = index.search(queries, check.k, leaves_to_search=width)
        hits = _hits(ids, rows)
        results[width], tried[width] = ids, float(hits.mean()) if len(rows) else 1.0
        bounds[width] = gap_bound(exact_hits, hits)
        return bounds[width] <= check.tolerance

    width = num_leaves if index.brute_force else index.config.leaves_to_search or num_leaves
    below = None
    while not fits(width) and width < num_leaves and tune and not index.brute_force:
        below, width = width, min(num_leaves, 2 * width)
    if below is not None and bounds[width] <= check.tolerance:
        low, high = below, width  # low misses, high fits
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if fits(middle) else (middle, high)
        width = high
    ids = results[width]
    overlap = float(np.mean([len(set(a) & set(b)) / check.k for a, b in zip(ids, truth)])) if len(rows) else 1.0
    return RecallReport(sample=len(rows), k=check.k, tolerance=check.tolerance,
                        exact_recall=float(exact_hits.mean()) if len(rows) else 1.0, scann_recall=tried[width],
                        gap_bound=bounds[width], neighbour_overlap=overlap, num_leaves=num_leaves,
                        leaves_to_search=width, brute_force=index.brute_force,
                        met=bounds[width] <= check.tolerance, tried=tried)
