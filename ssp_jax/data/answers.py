"""The proposer's answer list: jsonl records `{"ground_truth": str | [str], "search_turns": int,
"examples": [str]}`, or as the SSP release writes them (the original questions are thrown away).

The release's answer file names the example questions `sys_question_example`: one string of
newline-separated questions, pasted into its system prompt (often labelled "Question 1: ..."). Its
`search_turns` may be a digit string, and its preprocessed parquet wraps the gold in
`{"target": [...]}`. All of these are read; reading only `examples` would silently drop the
release's examples and show the proposer "(none given)".

Read directly with `load_answers`, or built once into the `ssp_answers` TFDS dataset (array_record,
read without TensorFlow) with `prepare_answer_list`. Both go through `read_answer_file`, so they
accept the same records: bad lines are skipped and reported as `file:line: reason`, like the corpus
builder does, so one malformed record does not stop a run; a file with no usable record is an error.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from ssp_jax.data.builders import prepare_once
from ssp_jax.data.gold import AnswerRecord, Gold, as_answer_list
from ssp_jax.data.records import as_str, json_object, required

BUILDER_NAME = "ssp_answers"
EXPECTED = ('jsonl, one {"ground_truth": str | [str], "search_turns": int, "examples": [str]} (or the SSP '
            'release\'s "sys_question_example": str) per line')
# A label the release puts before each example question ("Question 1:", "2.", "- ").
_EXAMPLE_LABEL = re.compile(r"^\s*(?:question\s*\d+\s*[:.)]|\d+\s*[:.)]|[-*\u2022])\s*", re.IGNORECASE)
MAX_REPORTED = 1000  # bad lines listed in the built dataset's metadata; all of them are counted
_MAX_LOGGED = 20


def answers_field(record: dict[str, Any], field: str) -> list[str]:
    """Gold answer(s) given as a string or a list of strings, normalised by `as_answer_list`
    (blank aliases dropped), so the answer list, the QA benchmarks and the rewards agree on which
    golds are usable."""
    value = required(record, field)
    if isinstance(value, (str, list, tuple)):
        try:
            return as_answer_list(value)
        except (TypeError, ValueError):
            pass  # reported below, naming the field
    raise ValueError(f"field {field!r} must be a string or a list of strings with at least one "
                     f"non-blank answer, got {value!r:.100}")


def parse_answer(record: dict[str, Any]) -> AnswerRecord:
    """One answer-list record; raises ValueError naming the bad field and what it must be."""
    if isinstance(record.get("ground_truth"), dict):  # the release's preprocessed {"target": [...]}
        record = {**record, "ground_truth": required(record["ground_truth"], "target")}
    gold = answers_field(record, "ground_truth")
    turns = record.get("search_turns", 1)
    if isinstance(turns, str) and turns.strip().isdigit():  # the release writes "2"
        turns = int(turns)
    if not isinstance(turns, int) or isinstance(turns, bool) or turns < 1:
        raise ValueError(f"field 'search_turns' must be a positive integer, got {turns!r:.100}")
    return AnswerRecord(gold=_gold(gold), search_turns=turns, examples=tuple(_examples(record)))


def _examples(record: dict[str, Any]) -> list[str]:
    """`examples` (a list of strings) or the release's `sys_question_example` (a string of one
    question per line, labels such as "Question 1:" removed, or a list); not both."""
    if "examples" in record and "sys_question_example" in record:
        raise ValueError("give the example questions in 'examples' or in 'sys_question_example', not both")
    field = "examples" if "examples" in record else "sys_question_example"
    value = record.get(field, [])
    if field == "sys_question_example" and isinstance(value, str):
        value = [_EXAMPLE_LABEL.sub("", line).strip() for line in value.splitlines()]
        return [line for line in value if line]
    if not isinstance(value, list) or not all(isinstance(e, str) for e in value):
        kind = "a list of strings" + (" or one string of lines" if field == "sys_question_example" else "")
        raise ValueError(f"field {field!r} must be {kind}, got {value!r:.100}")
    return value


def _gold(answers: Sequence[str]) -> Gold:
    """One alias as a plain string, several as a tuple (hashable, as AnswerRecord is frozen)."""
    return answers[0] if len(answers) == 1 else tuple(answers)


def read_answer_file(path: str | Path) -> tuple[list[tuple[int, AnswerRecord]], list[str]]:
    """(line number, record) of every good line and `path:line: reason` of every bad one.

    Blank lines are ignored. Raises if the file is missing or holds no usable record.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: answer list not found (expected {EXPECTED})")
    records, bad = [], []
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                records.append((number, parse_answer(json_object(raw))))
            except ValueError as e:
                bad.append(f"{path}:{number}: {e}")
    for message in bad[:_MAX_LOGGED]:
        logging.warning("skipping answer record %s", message)
    if not records:
        first = f"; first: {bad[0]}" if bad else ""
        raise ValueError(f"{path}: no usable answer record ({len(bad)} bad lines{first}; expected {EXPECTED})")
    return records, bad


def load_answers(path: str | Path) -> list[AnswerRecord]:
    """The good records of an answer-list jsonl, in file order."""
    return [record for _, record in read_answer_file(path)[0]]


def with_search_turns(answers: Sequence[AnswerRecord], turns: Sequence[int]) -> list[AnswerRecord]:
    """The answers whose `search_turns` is one of `turns`, in order; all of them when `turns` is
    empty. Dropping the 1-search answers keeps a weak proposer from filling the solver's batch with
    single-hop questions, which teach no depth (config.data.search_turns)."""
    if not turns:
        return list(answers)
    wanted = set(turns)
    kept = [a for a in answers if a.search_turns in wanted]
    if not kept:
        found = sorted({a.search_turns for a in answers})
        raise ValueError(f"config.data.search_turns={tuple(turns)} keeps none of the {len(answers)} answers "
                         f"(their search_turns are {found})")
    return kept


class SspAnswers(tfds.core.GeneratorBasedBuilder):
    """Answer-list jsonl -> array_record, one row per good record, in file order.

    Build: `SspAnswers(source=path, data_dir=d).download_and_prepare()`, or `prepare_answer_list`.
    Read: `load_answer_list(d)`, or `tfds.data_source("ssp_answers", data_dir=d, split="train")`.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "SSP proposer answer list; golds normalised to lists of strings."}

    def __init__(self, *, source: str | Path | None = None, **kwargs: Any) -> None:
        self._source = str(Path(source).resolve()) if source is not None else None
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    @property
    def source(self) -> str | None:
        """Absolute path of the jsonl this builder reads (None when only reading)."""
        return self._source

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="The proposer's answer list: gold answer aliases, search turns, example questions.",
            features=tfds.features.FeaturesDict({
                "ground_truth": tfds.features.Sequence(tfds.features.Text()),
                "search_turns": tfds.features.Scalar(dtype=np.int32),
                "examples": tfds.features.Sequence(tfds.features.Text()),
            }),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator[Any]]:
        del dl_manager  # the answer list is local: `source`
        if self._source is None:
            raise ValueError(f"{BUILDER_NAME}: pass source=<answer-list jsonl> to build it ({EXPECTED})")
        records, bad = read_answer_file(self._source)  # raises before TFDS starts writing
        self.info.metadata.update({"source": self._source, "num_records": len(records),
                                   "num_bad_lines": len(bad), "bad_lines": bad[:MAX_REPORTED]})
        return {"train": self._generate_examples(records)}

    def _generate_examples(self, records: list[tuple[int, AnswerRecord]]) -> Iterator[tuple[int, dict[str, Any]]]:
        """Rows keyed by line number (keys fix the row order)."""
        for number, record in records:
            gold = [record.gold] if isinstance(record.gold, str) else list(record.gold)
            yield number, {"ground_truth": gold, "search_turns": record.search_turns,
                           "examples": list(record.examples)}


def load_answer_list(data_dir: str | Path) -> list[AnswerRecord]:
    """The records of the `ssp_answers` dataset prepared under TFDS `data_dir`, in file order."""
    builder = SspAnswers(data_dir=str(data_dir))
    if not builder.is_prepared():
        raise FileNotFoundError(f"no prepared {BUILDER_NAME} dataset under {data_dir}; build it with "
                                f"prepare_answer_list(<answers jsonl>, {data_dir})")
    source = builder.as_data_source(split="train")
    return [AnswerRecord(gold=_gold([as_str(a) for a in row["ground_truth"]]),
                         search_turns=int(row["search_turns"]),
                         examples=tuple(as_str(e) for e in row["examples"]))
            for row in source.__getitems__(list(range(len(source))))]


def prepare_answer_list(source: str | Path, data_dir: str | Path) -> list[AnswerRecord]:
    """Build `ssp_answers` from the jsonl `source` unless `data_dir` already holds it; its records."""
    builder = SspAnswers(source=source, data_dir=str(data_dir))
    if prepare_once(builder, "source", builder.source, "an answer list"):
        logging.info("%s: %d answers from %s (%d bad lines skipped)", BUILDER_NAME,
                     builder.info.metadata["num_records"], builder.source, builder.info.metadata["num_bad_lines"])
    return load_answer_list(data_dir)


def answers_for_step(answers: Sequence[AnswerRecord], step: int, batch_size: int, seed: int) -> list[AnswerRecord]:
    """The answers of step `step` (0-based): consecutive slices of per-epoch seeded permutations.

    The position is a function of the step, so a resumed run reads exactly the answers an
    uninterrupted one would.
    """
    n, out = len(answers), []
    orders: dict[int, np.ndarray] = {}
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, index = divmod(position, n)
        if epoch not in orders:
            orders[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
        out.append(answers[int(orders[epoch][index])])
    return out
