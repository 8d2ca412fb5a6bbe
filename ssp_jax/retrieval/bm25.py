"""Lexical retrieval with bm25s: a baseline needing no encoder, and the backend of the service tests.

The corpus is tokenized chunk by chunk with one growing vocabulary, so the raw texts are never all in
memory at once (only their token ids are). Queries are tokenized the same way (lowercase, English
stopwords, no stemming); words the corpus never saw are dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from ssp_jax.retrieval.base import Passage
from ssp_jax.retrieval.corpus import Corpus

if TYPE_CHECKING:
    import bm25s

STOPWORDS = "en"


def _bm25s() -> ModuleType:
    """bm25s, imported on first use: importing it runs a JAX op, which would start the XLA backend
    before a multi-host run's `jax.distributed.initialize` (ssp_jax/distributed.py)."""
    import bm25s
    import bm25s.tokenization

    return bm25s


class BM25Retriever:
    """`Retriever` over a `Corpus` with a bm25s index of its `contents` (title line included)."""

    def __init__(self, index: bm25s.BM25, corpus: Corpus) -> None:
        if index.scores["num_docs"] != len(corpus):
            raise ValueError(f"BM25 index has {index.scores['num_docs']} documents, corpus {len(corpus)}")
        self._index = index
        self.corpus = corpus

    @classmethod
    def build(cls, corpus: Corpus, *, chunk_size: int = 65536, progress: bool = False) -> BM25Retriever:
        bm25s = _bm25s()
        tokenizer = bm25s.tokenization.Tokenizer(stopwords=STOPWORDS)
        ids: list[list[int]] = []
        with tqdm(total=len(corpus), desc="bm25 tokenize", unit="passage", disable=not progress) as bar:
            for _, passages in corpus.iter_chunks(chunk_size):
                ids += tokenizer.tokenize([p.contents for p in passages], update_vocab=True, return_as="ids",
                                          show_progress=False)
                bar.update(len(passages))
        index = bm25s.BM25()
        index.index(bm25s.tokenization.Tokenized(ids=ids, vocab=tokenizer.get_vocab_dict()), show_progress=progress)
        return cls(index, corpus)

    def save(self, directory: str | Path) -> None:
        self._index.save(str(directory), show_progress=False)

    @classmethod
    def load(cls, directory: str | Path, corpus: Corpus) -> BM25Retriever:
        return cls(_bm25s().BM25.load(str(directory), show_progress=False), corpus)

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        if not queries:
            return []
        k = min(k, len(self.corpus))
        tokens = _bm25s().tokenize(list(queries), stopwords=STOPWORDS, return_ids=False, show_progress=False)
        rows, scores = self._index.retrieve(tokens, k=k, show_progress=False)  # [q, k] each
        passages = self.corpus.get_batch(np.asarray(rows).reshape(-1))
        return [[dataclasses.replace(passages[i * k + j], score=float(scores[i, j])) for j in range(k)]
                for i in range(len(queries))]
