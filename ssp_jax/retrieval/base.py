"""The retrieval contract shared by every index and the remote client: `Passage` and `Retriever`.

Rollouts only see this interface, so ScaNN, exact, BM25 and a Search-R1-compatible HTTP service
are interchangeable (DESIGN.md, "Key contracts").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


def split_search_r1_contents(contents: str) -> tuple[str, str]:
    """Split a Search-R1 corpus `contents` (`"Title"\\ntext`) into (title, text); never raises.

    Without a newline there is no title line: the result is ("", contents). A title without the
    surrounding quotes is returned as it is.
    """
    title, newline, text = contents.partition("\n")
    if not newline:
        return "", contents
    title = title.strip()
    if len(title) >= 2 and title[0] == title[-1] == '"':
        title = title[1:-1]
    return title, text


@dataclasses.dataclass(frozen=True)
class Passage:
    """One retrieved passage. `contents` is the Search-R1 wire/corpus form."""

    id: str
    contents: str
    score: float = 0.0

    @property
    def title(self) -> str:
        return split_search_r1_contents(self.contents)[0]

    @property
    def text(self) -> str:
        return split_search_r1_contents(self.contents)[1]


class RetrieverError(RuntimeError):
    """A backend failed to answer (service down, timeout, bad response) after its own retries."""


@runtime_checkable
class Retriever(Protocol):
    """The one interface rollouts search through: exact, ScaNN, BM25 and the HTTP client all implement
    it, so the backend is a config choice, not a code path."""

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        """Top-`k` passages for each query, best first; one list per query, in order.

        Raises `RetrieverError` when the backend cannot answer.
        """
        ...


def check_vector_query(queries: np.ndarray, dim: int, k: int, num_rows: int) -> tuple[np.ndarray, int]:
    """Validate a [q, dim] query batch for a vector index; returns (contiguous float32 queries,
    k clipped to the index size). Shared by the exact and ScaNN indexes."""
    queries = np.ascontiguousarray(queries, np.float32)
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise ValueError(f"queries must be [q, {dim}], got {queries.shape}")
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    return queries, min(k, num_rows)
