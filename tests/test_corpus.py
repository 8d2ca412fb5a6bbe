"""The Search-R1 jsonl -> TFDS (array_record) corpus round trip, bad lines included."""

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ssp_jax.retrieval.base import Passage
from ssp_jax.retrieval.corpus import Corpus
from ssp_jax.retrieval.wiki_corpus import parse_line, plan_parts

# line number (1-based) -> bad line and the start of its reported reason
BAD = {
    4: (b'{"id": "3", "contents": "unterminated', "malformed JSON"),
    9: (json.dumps({"contents": '"T"\nno id'}).encode(), "missing field 'id'"),
    15: (json.dumps({"id": "x", "contents": 7}).encode(), "field 'contents' must be a string"),
    22: (json.dumps({"id": True, "contents": "t"}).encode(), "field 'id' must be a string or an integer"),
    30: (json.dumps(["id", "contents"]).encode(), "expected a JSON object"),
    31: (b'{"id": "9", "contents": "caf\xe9"}', "not UTF-8"),
    40: (b"   ", "empty line"),
}


def write_corpus(path: Path, num_lines: int = 60) -> list[Passage]:
    """A jsonl of `num_lines` lines with BAD at their line numbers; returns the good passages in order."""
    good, lines = [], []
    for line_no in range(1, num_lines + 1):
        if line_no in BAD:
            lines.append(BAD[line_no][0])
            continue
        pid = line_no * 10 if line_no % 7 == 0 else f"doc-{line_no}"  # some integer ids
        passage = Passage(id=str(pid), contents=f'"Title {line_no}"\nPassage {line_no}: "quoted" text, ünïcode.')
        good.append(passage)
        lines.append(json.dumps({"id": pid, "contents": passage.contents, "extra": [1, 2]}).encode())
    path.write_bytes(b"\n".join(lines) + b"\n")
    return good


def test_parse_line() -> None:
    assert parse_line(b'{"id": "1", "contents": "\\"A\\"\\nb"}\r\n') == ("1", '"A"\nb')
    assert parse_line(b'{"id": 5, "contents": ""}') == ("5", "")
    for raw, reason in BAD.values():
        with pytest.raises(ValueError, match=reason):
            parse_line(raw)


def test_plan_parts_cover_every_line_once(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    write_corpus(path)
    data = path.read_bytes()
    parts = plan_parts([path], part_bytes=300)
    assert len(parts) > 5
    assert parts[0].start == 0 and parts[-1].end == len(data)
    for prev, part in zip(parts, parts[1:]):
        assert prev.end == part.start and data[part.start - 1:part.start] == b"\n"
        assert part.first_line == data[:part.start].count(b"\n") + 1


def test_round_trip_with_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "wiki.jsonl"
    good = write_corpus(path)
    corpus = Corpus.prepare(path, tmp_path / "tfds", part_bytes=1000)  # several TFDS splits

    report = corpus.report
    assert (report.num_lines, report.num_passages, report.num_bad_lines) == (60, 60 - len(BAD), len(BAD))
    assert len(report.bad_lines) == len(BAD)
    for entry, (line_no, (_, reason)) in zip(report.bad_lines, sorted(BAD.items())):
        assert entry.startswith(f"{path.resolve()}:{line_no}: {reason}"), entry

    assert len(corpus) == len(good)
    assert [corpus[i] for i in range(len(corpus))] == good  # file order, ids as strings
    assert (corpus[0].title, corpus[0].text) == ("Title 1", 'Passage 1: "quoted" text, ünïcode.')
    rows = np.array([17, 0, 17, len(good) - 1])
    assert corpus.get_batch(rows) == [good[r] for r in rows]
    chunks = list(corpus.iter_chunks(7, start=3))
    assert [start for start, _ in chunks] == list(range(3, len(good), 7))
    assert [p for _, batch in chunks for p in batch] == good[3:]
    with pytest.raises(IndexError):
        corpus.get_batch([len(good)])

    # Reopened from disk; plain tfds.data_source reads the same rows without TensorFlow.
    reopened = Corpus.load(tmp_path / "tfds")
    assert reopened.report == report and reopened.get_batch(rows) == corpus.get_batch(rows)
    source = tfds.data_source("search_r1_corpus", data_dir=str(tmp_path / "tfds"), split="all", download=False)
    assert len(source) == len(good)
    assert source[5]["contents"].decode() == good[5].contents

    # Preparing again reuses the data; a different source for the same directory is refused.
    assert len(Corpus.prepare(path, tmp_path / "tfds")) == len(good)
    other = tmp_path / "other.jsonl"
    write_corpus(other, num_lines=3)
    with pytest.raises(ValueError, match="already holds a corpus"):
        Corpus.prepare(other, tmp_path / "tfds")


def test_load_missing_corpus(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no prepared"):
        Corpus.load(tmp_path)


def test_no_valid_line_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(raw for raw, _ in BAD.values()) + b"\n")
    with pytest.raises(ValueError, match="hold no valid passage"):
        Corpus.prepare(path, tmp_path / "tfds")
