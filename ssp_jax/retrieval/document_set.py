"""A `Retriever` over a handful of passages held in memory: the RAG check's searching reader.

With `selfplay.rag_reader="search"` the reader plays the solver, but each of its searches is answered
only from the documents the proposer retrieved plus the distractor blocks, so "answerable from those
documents" still holds while the reader may follow a chain one hop per search. A set this small
needs no encoder: passages are ranked by idf-weighted overlap of lowercase words with the query, a
word found in the title counting twice, ties kept in the given order.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from ssp_jax.retrieval.base import Passage

_WORD = re.compile(r"\w+")


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


class DocumentSet:
    """`Retriever` whose corpus is `passages` (duplicates by id are dropped, first kept)."""

    def __init__(self, passages: Sequence[Passage]) -> None:
        self.passages = list({p.id: p for p in passages}.values())  # first-seen order
        self._words = [(_words(p.text), _words(p.title)) for p in self.passages]
        n = len(self.passages)
        counts: dict[str, int] = {}
        for text, title in self._words:
            for word in text | title:
                counts[word] = counts.get(word, 0) + 1
        self._idf = {word: math.log(1 + n / c) for word, c in counts.items()}

    def score(self, query: str, index: int) -> float:
        return self._score(_words(query), index)

    def _score(self, query_words: set[str], index: int) -> float:
        text, title = self._words[index]
        return sum(self._idf[w] * ((w in text) + 2 * (w in title)) for w in query_words if w in self._idf)

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        results = []
        for query in queries:
            words = _words(query)  # once per query, not per passage
            ranked = sorted(range(len(self.passages)), key=lambda i: -self._score(words, i))  # stable: ties keep order
            results.append([self.passages[i] for i in ranked[:k]])
        return results
