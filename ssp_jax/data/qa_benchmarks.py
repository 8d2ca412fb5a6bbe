"""TFDS builder `ssp_qa`: the paper's seven QA benchmarks (SSP.md section 6), one config each.

Input, under TFDS's manual dir (`DownloadConfig(manual_dir=...)`, default
`<data_dir>/downloads/manual`), laid out as in FlashRAG_datasets (RUC-NLPIR/FlashRAG_datasets):

    <manual_dir>/<benchmark>/dev.jsonl   and/or  test.jsonl    one {"id", "question", "golden_answers"} per line
    <manual_dir>/<benchmark>/dev.parquet and/or  test.parquet  the same columns (SSP / Search-R1 eval parquet)

Each file present becomes the split of its name; a split comes from one file, jsonl or parquet.
`golden_answers` may be a string or a list and is stored as a list of strings. The paper evaluates
on `test` where FlashRAG has one and on `dev` otherwise (hotpotqa, 2wikimultihopqa, musique), which
is Search-R1's rule and `load_benchmark`'s default. Search-R1's and SSP's eval parquet is one file
for all seven benchmarks with a `data_source` column; rows are kept when it is `<benchmark>` or
`searchR1_<benchmark>`, so that one file can be linked in as every benchmark's `test.parquet`.

A benchmark is an evaluation set, so a malformed record is an error naming the file, the line (or
row), the field and what it must be, instead of a skipped line: dropping questions would silently
change the benchmark.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow_datasets as tfds

from ssp_jax.data.answers import answers_field
from ssp_jax.data.gold import QAItem
from ssp_jax.data.records import as_str, json_object, text_field

BUILDER_NAME = "ssp_qa"
BENCHMARKS = ("nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle")
SPLITS = ("dev", "test")
FIELDS = ("id", "question", "golden_answers")
EXPECTED = 'one {"id": str, "question": str, "golden_answers": str | [str]} per record'
_LAYOUT = ("<manual_dir>/<benchmark>/dev.jsonl or test.jsonl (FlashRAG jsonl), or dev.parquet or "
           f"test.parquet (same columns), {EXPECTED}; <benchmark> is one of {', '.join(BENCHMARKS)}")

Question = dict[str, Any]  # the features of one row: id, question, golden_answers


def parse_question(record: dict[str, Any]) -> Question:
    """The features of one benchmark record; raises ValueError naming the bad field."""
    qid, question = text_field(record, "id", allow_int=True), text_field(record, "question")
    if not question.strip():
        raise ValueError("field 'question' must be a non-blank string, got a blank one")
    return {"id": qid, "question": question, "golden_answers": answers_field(record, "golden_answers")}


def read_jsonl(path: Path) -> list[tuple[int, Question]]:
    """(line number, features) of every non-blank line; the first bad line raises."""
    rows = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                rows.append((number, parse_question(json_object(raw))))
            except ValueError as e:
                raise ValueError(f"{path}:{number}: {e} (expected {EXPECTED})") from None
    return rows


def read_parquet(path: Path, benchmark: str) -> list[tuple[int, Question]]:
    """(row index, features) of the rows of `benchmark`; the first bad row raises."""
    try:
        names = pq.read_schema(path).names
        table = pq.read_table(path, columns=[c for c in (*FIELDS, "data_source") if c in names])
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path}: not a readable parquet file ({e})") from None
    keep = {benchmark, f"searchR1_{benchmark}"}
    rows, sources = [], set()
    for index, record in enumerate(table.to_pylist()):
        if "data_source" in record:
            source = record.pop("data_source")
            sources.add(str(source))
            if source not in keep:
                continue
        try:
            rows.append((index, parse_question(record)))
        except ValueError as e:
            raise ValueError(f"{path}: row {index} (0-based): {e} (expected {EXPECTED})") from None
    if not rows and sources:
        raise ValueError(f"{path}: no row has data_source {' or '.join(sorted(keep))} "
                         f"(found {', '.join(sorted(sources))})")
    return rows


def split_files(manual_dir: Path, benchmark: str) -> dict[str, Path]:
    """The file of each split present for `benchmark`; raises if there is none, or two for one split."""
    found = {}
    for split in SPLITS:
        paths = [p for p in (manual_dir / benchmark / f"{split}.jsonl", manual_dir / benchmark / f"{split}.parquet")
                 if p.is_file()]
        if len(paths) > 1:
            raise ValueError(f"{BUILDER_NAME}/{benchmark}: both {paths[0]} and {paths[1]} exist; keep one")
        if paths:
            found[split] = paths[0]
    if not found:
        expected = ", ".join(str(manual_dir / benchmark / f"{s}.{ext}") for s in SPLITS for ext in ("jsonl", "parquet"))
        raise FileNotFoundError(f"{BUILDER_NAME}/{benchmark}: no question file; expected one of {expected} "
                                f"({EXPECTED})")
    return found


class SspQa(tfds.core.GeneratorBasedBuilder):
    """QA benchmark files -> array_record, one row per question, in file order.

    Build: `prepare_benchmark(name, manual_dir, data_dir)`. Read: `load_benchmark(name, data_dir)`,
    or `tfds.data_source("ssp_qa/<name>", data_dir=data_dir, split="test")`.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "FlashRAG jsonl or SSP eval parquet; golden_answers as a list of strings."}
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name, description=f"{name} questions with gold answers")
                       for name in BENCHMARKS]
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Place the question files as {_LAYOUT}."

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Open-domain QA benchmark questions with their gold answer aliases.",
            features=tfds.features.FeaturesDict({
                "id": tfds.features.Text(),
                "question": tfds.features.Text(),
                "golden_answers": tfds.features.Sequence(tfds.features.Text()),
            }),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator[Any]]:
        benchmark = self.builder_config.name
        generators = {}
        for split, path in split_files(Path(dl_manager.manual_dir), benchmark).items():
            # Read whole (benchmarks are small) so a bad record fails before TFDS writes anything.
            rows = read_jsonl(path) if path.suffix == ".jsonl" else read_parquet(path, benchmark)
            if not rows:  # TFDS refuses an empty split; say which file is empty instead
                raise ValueError(f"{path}: holds no question ({EXPECTED})")
            generators[split] = self._generate_examples(rows)
        return generators

    def _generate_examples(self, rows: list[tuple[int, Question]]) -> Iterator[tuple[int, Question]]:
        """Rows keyed by line number or row index (keys fix the row order)."""
        yield from rows


def prepare_benchmark(name: str, manual_dir: str | Path, data_dir: str | Path) -> None:
    """Build `ssp_qa/<name>` into TFDS `data_dir` from the files under `manual_dir`, unless built."""
    builder = SspQa(config=_check_name(name), data_dir=str(data_dir))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))


def load_benchmark(name: str, data_dir: str | Path, split: str | None = None) -> list[QAItem]:
    """The questions of a built benchmark, in file order; `split=None` means `test` if it was
    built, else `dev` (the paper's evaluation split)."""
    builder = SspQa(config=_check_name(name), data_dir=str(data_dir))
    if not builder.is_prepared():
        raise FileNotFoundError(f"no prepared {BUILDER_NAME}/{name} under {data_dir}; build it with "
                                f"prepare_benchmark({name!r}, <manual_dir>, {str(data_dir)!r}) from {_LAYOUT}")
    built = list(builder.info.splits)
    split = split or ("test" if "test" in built else "dev")
    if split not in built:
        raise ValueError(f"{BUILDER_NAME}/{name} under {data_dir} has splits {sorted(built)}, not {split!r}")
    source = builder.as_data_source(split=split)
    return [QAItem(question=as_str(row["question"]), golden_answers=[as_str(a) for a in row["golden_answers"]])
            for row in source.__getitems__(list(range(len(source))))]


def _check_name(name: str) -> str:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)}")
    return name
