"""TFDS builder for a Search-R1 passage corpus: jsonl lines `{"id", "contents": "\\"Title\\"\\ntext"}`.

Stored as array_record so it is read back without TensorFlow (`tfds.data_source` /
`builder.as_data_source`) with random access by row id. Rows keep the file order of the good lines
(`disable_shuffling`); bad lines (not UTF-8, malformed JSON, missing or wrong-typed fields) are
skipped, counted and reported as `file:line: reason` in the dataset's `metadata.json`.

The source is streamed and cut into splits `part00000`, `part00001`, ... of at most `part_bytes`
each, read back together as split `"all"`. The reason: TFDS's generator writer buffers a split in
memory up to 1 GB and then spills it to disk through `tf.io.gfile`, which needs TensorFlow
(PITFALLS.md: no TF here). Parts below that limit never spill, so a 14 GB Wikipedia dump is
written part by part and never held in memory.

This is also the Wikipedia-2018 ("wiki18") corpus builder: wiki-18.jsonl is a Search-R1 corpus.
There is deliberately no `wiki18_corpus` alias: TFDS stores a dataset under its builder's name,
so an alias would be a second directory that `retrieval.corpus.Corpus.load` does not read.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from ssp_jax.data.records import json_object, text_field

BUILDER_NAME = "search_r1_corpus"
PART_BYTES = 512 << 20  # well under TFDS's 1 GB in-memory buffer (shuffle.MAX_MEM_BUFFER_SIZE)
MAX_REPORTED = 1000  # bad lines listed individually in the report; all of them are counted
_MAX_LOGGED = 20


def parse_line(raw: bytes) -> tuple[str, str]:
    """(id, contents) of one jsonl line; raises ValueError with the reason for a bad line.

    Integer ids (some Search-R1-format corpora use them) are accepted and kept as strings.
    """
    record = json_object(raw)
    return text_field(record, "id", allow_int=True), text_field(record, "contents")


@dataclasses.dataclass(frozen=True)
class Part:
    """A run of whole lines of one source file: bytes [start, end), starting at line `first_line`."""

    path: str
    start: int
    end: int
    first_line: int


def plan_parts(paths: Sequence[str | Path], part_bytes: int = PART_BYTES) -> list[Part]:
    """Cut each file at line boundaries into parts of about `part_bytes` (one streaming pass)."""
    if part_bytes < 1:
        raise ValueError(f"part_bytes must be positive, got {part_bytes}")
    parts = []
    for path in paths:
        start, first_line, offset = 0, 1, 0
        with open(path, "rb") as f:
            for line_no, line in enumerate(f, 1):
                if offset - start >= part_bytes:
                    parts.append(Part(str(path), start, offset, first_line))
                    start, first_line = offset, line_no
                offset += len(line)
        if offset > start:
            parts.append(Part(str(path), start, offset, first_line))
    return parts


@dataclasses.dataclass
class CorpusReport:
    """What the builder read: line counts and the first `MAX_REPORTED` bad lines as `file:line: reason`."""

    sources: list[str]
    num_lines: int = 0
    num_passages: int = 0
    num_bad_lines: int = 0
    bad_lines: list[str] = dataclasses.field(default_factory=list)

    def add_bad(self, path: str, line: int, reason: str) -> None:
        self.num_bad_lines += 1
        if len(self.bad_lines) < MAX_REPORTED:
            self.bad_lines.append(f"{path}:{line}: {reason}")
        if self.num_bad_lines <= _MAX_LOGGED:
            logging.warning("skipping bad corpus line %s:%d: %s", path, line, reason)

    def summary(self) -> str:
        shown = f" (first {len(self.bad_lines)} listed in metadata.json)" if self.num_bad_lines else ""
        return (f"{self.num_passages} passages from {self.num_lines} lines of {len(self.sources)} file(s); "
                f"{self.num_bad_lines} bad lines skipped{shown}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CorpusReport:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


class SearchR1Corpus(tfds.core.GeneratorBasedBuilder):
    """Search-R1 jsonl corpus -> array_record, one row per good line, in file order.

    Build: `SearchR1Corpus(source=paths, data_dir=d).download_and_prepare()`.
    Read: `tfds.data_source("search_r1_corpus", data_dir=d, split="all")` (no `source` needed).
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Search-R1 jsonl corpus, split into parts under TFDS's 1 GB buffer."}

    def __init__(self, *, source: str | Path | Sequence[str | Path] | None = None,
                 part_bytes: int = PART_BYTES, **kwargs: Any) -> None:
        if isinstance(source, (str, Path)):
            source = [source]
        self._sources = [str(Path(p).resolve()) for p in source or ()]
        self._part_bytes = part_bytes
        self._report = CorpusReport(sources=self._sources)
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    @property
    def sources(self) -> list[str]:
        """Absolute paths of the jsonl files this builder reads (empty when only reading)."""
        return list(self._sources)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Search-R1 retrieval corpus: passages {id, contents='\"Title\"\\ntext'} in file order.",
            features=tfds.features.FeaturesDict({"id": tfds.features.Text(), "contents": tfds.features.Text()}),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator[Any]]:
        del dl_manager  # the corpus is local: `source` paths
        if not self._sources:
            raise ValueError(f"{BUILDER_NAME}: pass source=<jsonl path(s)> to build the corpus")
        parts = plan_parts(self._sources, self._part_bytes)
        if not parts:
            raise ValueError(f"{BUILDER_NAME}: {self._sources} hold no lines")
        return {f"part{i:05d}": self._generate_examples(part) for i, part in enumerate(parts)}

    def _generate_examples(self, part: Part) -> Iterator[tuple[int, dict[str, str]]]:
        """Good lines of one part, keyed by line number (keys fix the row order)."""
        report = self._report
        line_no, good = part.first_line, 0
        with open(part.path, "rb") as f:
            f.seek(part.start)
            offset = part.start
            while offset < part.end:
                raw = f.readline()
                offset += len(raw)
                report.num_lines += 1
                try:
                    pid, contents = parse_line(raw)
                except ValueError as e:
                    report.add_bad(part.path, line_no, str(e))
                else:
                    report.num_passages += 1
                    good += 1
                    yield line_no, {"id": pid, "contents": contents}
                line_no += 1
        if not good:  # TFDS refuses an empty split; say why instead of its bare AssertionError
            raise ValueError(f"{part.path}: lines {part.first_line}-{line_no - 1} hold no valid passage "
                             f"({report.bad_lines[-1] if report.bad_lines else 'all bad'})")
        # Written to metadata.json once every part is done.
        self.info.metadata.update(report.to_json())
