"""Random access to a prepared passage corpus: row id -> `Passage`.

Row ids are 0..n-1 over the corpus's good lines in file order; every index stores row ids and maps
them back through here. Storage is the `search_r1_corpus` TFDS builder (array_record), read with
no TensorFlow.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ssp_jax.data.builders import prepare_once
from ssp_jax.data.records import as_str
from ssp_jax.retrieval.base import Passage
from ssp_jax.retrieval.wiki_corpus import PART_BYTES, CorpusReport, SearchR1Corpus


class Corpus:
    """A read-only passage table over a TFDS data source (anything with `__len__`, `__getitems__`)."""

    def __init__(self, source: Any, report: CorpusReport) -> None:
        self._source = source
        self._len = len(source)
        self.report = report

    @classmethod
    def load(cls, data_dir: str | Path) -> Corpus:
        """Open a corpus prepared into TFDS `data_dir` (the directory holding `search_r1_corpus/`)."""
        builder = SearchR1Corpus(data_dir=str(data_dir))
        if not builder.is_prepared():
            raise FileNotFoundError(f"no prepared {builder.name} corpus under {data_dir}; "
                                    f"build one with Corpus.prepare(<jsonl>, {data_dir})")
        report = CorpusReport.from_json(dict(builder.info.metadata))
        return cls(builder.as_data_source(split="all"), report)

    @classmethod
    def prepare(cls, source: str | Path | Sequence[str | Path], data_dir: str | Path, *,
                part_bytes: int = PART_BYTES) -> Corpus:
        """Build the TFDS corpus from Search-R1 jsonl file(s) unless `data_dir` already holds it."""
        builder = SearchR1Corpus(source=source, part_bytes=part_bytes, data_dir=str(data_dir))
        prepare_once(builder, "sources", builder.sources, "a corpus")
        corpus = cls.load(data_dir)
        logging.info("corpus %s: %s", data_dir, corpus.report.summary())
        return corpus

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, row: int) -> Passage:
        return self.get_batch([row])[0]

    def get_batch(self, rows: Sequence[int] | np.ndarray) -> list[Passage]:
        """Passages for `rows` (any order, repeats allowed), with score 0."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)  # [m]
        if rows.size == 0:
            return []
        if rows.min() < 0 or rows.max() >= self._len:
            raise IndexError(f"row ids must be in [0, {self._len}), got {rows.min()}..{rows.max()}")
        records = self._source.__getitems__(rows.tolist())
        return [Passage(id=as_str(r["id"]), contents=as_str(r["contents"])) for r in records]

    def iter_chunks(self, chunk_size: int, start: int = 0) -> Iterator[tuple[int, list[Passage]]]:
        """(first row, passages) for consecutive row ranges of `chunk_size`, from row `start`."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        for first in range(start, self._len, chunk_size):
            yield first, self.get_batch(np.arange(first, min(first + chunk_size, self._len)))
