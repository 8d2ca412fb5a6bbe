"""QA benchmark and answer-list TFDS builders: build from tiny files, read back without TensorFlow,
and name the file, line, field and expectation when an input is missing or malformed."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow_datasets as tfds

from ssp_jax.agent.prompts import NO_EXAMPLES, proposer_prompt
from ssp_jax.data.answers import (
    load_answer_list,
    load_answers,
    parse_answer,
    prepare_answer_list,
    read_answer_file,
    with_search_turns,
)
from ssp_jax.data.gold import AnswerRecord, QAItem
from ssp_jax.data.qa_benchmarks import BENCHMARKS, load_benchmark, parse_question, prepare_benchmark


def write_jsonl(path: Path, lines: list[object]) -> Path:
    """Objects as JSON lines; bytes and str lines are written verbatim (malformed on purpose)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join((line if isinstance(line, bytes) else
                               (line if isinstance(line, str) else json.dumps(line)).encode()) + b"\n"
                              for line in lines))
    return path


def test_parse_question_and_answer() -> None:
    assert parse_question({"id": 7, "question": "Who?", "golden_answers": "Ann", "extra": 1}) == \
        {"id": "7", "question": "Who?", "golden_answers": ["Ann"]}
    assert parse_question({"id": "a", "question": "Q", "golden_answers": ["X", " ", "Y"]})["golden_answers"] == \
        ["X", "Y"]
    for record, reason in [({"question": "Q", "golden_answers": "A"}, "missing field 'id'"),
                           ({"id": "a", "question": 3, "golden_answers": "A"},
                            "field 'question' must be a string, got int"),
                           ({"id": "a", "question": "  ", "golden_answers": "A"}, "'question' must be a non-blank"),
                           ({"id": "a", "question": "Q", "golden_answers": []},
                            "field 'golden_answers' must be a string or a list"),
                           ({"id": "a", "question": "Q", "golden_answers": [1]}, "field 'golden_answers' must be"),
                           ({"id": None, "question": "Q", "golden_answers": "A"},
                            "'id' must be a string or an integer")]:
        with pytest.raises(ValueError, match=reason):
            parse_question(record)

    assert parse_answer({"ground_truth": "Paris"}) == AnswerRecord("Paris", 1, ())
    assert parse_answer({"ground_truth": ["NYC", "New York"], "search_turns": 3, "examples": ["e?"]}) == \
        AnswerRecord(("NYC", "New York"), 3, ("e?",))
    for record, reason in [({"search_turns": 2}, "missing field 'ground_truth'"),
                           ({"ground_truth": ""}, "field 'ground_truth' must be"),
                           ({"ground_truth": "x", "search_turns": 0},
                            "'search_turns' must be a positive integer, got 0"),
                           ({"ground_truth": "x", "search_turns": True}, "'search_turns' must be a positive integer"),
                           ({"ground_truth": "x", "examples": "e"}, "'examples' must be a list of strings")]:
        with pytest.raises(ValueError, match=reason):
            parse_answer(record)


def test_benchmarks_round_trip(tmp_path: Path) -> None:
    manual, data = tmp_path / "manual", tmp_path / "tfds"
    write_jsonl(manual / "nq" / "test.jsonl", [
        {"id": "test_0", "question": "who wrote ünïcode?", "golden_answers": ["Ann", "Anne"]},
        "",  # blank lines are ignored
        {"id": 1, "question": "where is it?", "golden_answers": "Paris", "metadata": {"x": 1}},
    ])
    write_jsonl(manual / "nq" / "dev.jsonl", [{"id": "dev_0", "question": "dev q?", "golden_answers": ["D"]}])
    write_jsonl(manual / "hotpotqa" / "dev.jsonl", [{"id": "h0", "question": "two hops?", "golden_answers": ["B"]}])
    for name in ("nq", "hotpotqa"):
        prepare_benchmark(name, manual, data)

    assert load_benchmark("nq", data) == [QAItem("who wrote ünïcode?", ["Ann", "Anne"]),
                                          QAItem("where is it?", ["Paris"])]
    assert load_benchmark("nq", data, split="dev") == [QAItem("dev q?", ["D"])]
    assert load_benchmark("hotpotqa", data) == [QAItem("two hops?", ["B"])]  # no test split: dev
    with pytest.raises(ValueError, match=r"has splits \['dev'\], not 'test'"):
        load_benchmark("hotpotqa", data, split="test")

    source = tfds.data_source("ssp_qa/nq", data_dir=str(data), split="test", download=False)
    assert len(source) == 2
    assert source[1] == {"id": b"1", "question": b"where is it?", "golden_answers": [b"Paris"]}


def test_benchmark_from_merged_parquet(tmp_path: Path) -> None:
    """Search-R1 / SSP eval parquet: one file for all benchmarks, rows told apart by data_source."""
    merged = tmp_path / "test.parquet"
    pq.write_table(pa.table({
        "id": ["test_0", "test_0", "test_1", "test_2"],
        "question": ["nq q?", "bam q1?", "bam q2?", "hot q?"],
        "golden_answers": [["N"], ["B1", "b one"], ["B2"], ["H"]],
        "data_source": ["nq", "searchR1_bamboogle", "bamboogle", "hotpotqa"],
        "ability": ["fact-reasoning"] * 4,
    }), merged)
    manual, data = tmp_path / "manual", tmp_path / "tfds"
    for name in ("bamboogle", "musique"):
        (manual / name).mkdir(parents=True)
        (manual / name / "test.parquet").symlink_to(merged)

    prepare_benchmark("bamboogle", manual, data)
    assert load_benchmark("bamboogle", data) == [QAItem("bam q1?", ["B1", "b one"]), QAItem("bam q2?", ["B2"])]
    with pytest.raises(ValueError, match="no row has data_source musique or searchR1_musique "
                                         r"\(found bamboogle, hotpotqa, nq, searchR1_bamboogle\)"):
        prepare_benchmark("musique", manual, data)

    # A bad row is named by file, 0-based row and field.
    bad = manual / "popqa" / "test.parquet"
    bad.parent.mkdir()
    pq.write_table(pa.table({"id": ["a", "b"], "question": ["q?", "q2?"], "golden_answers": [["A"], []]}), bad)
    with pytest.raises(ValueError, match=rf"{bad}: row 1 \(0-based\): field 'golden_answers' must be"):
        prepare_benchmark("popqa", manual, data)


def test_benchmark_errors(tmp_path: Path) -> None:
    manual, data = tmp_path / "manual", tmp_path / "tfds"
    write_jsonl(manual / "nq" / "test.jsonl", [{"id": "a", "question": "q?", "golden_answers": "A"}])

    with pytest.raises(FileNotFoundError, match=rf"ssp_qa/musique: no question file; expected one of "
                                                rf"{manual}/musique/dev.jsonl, {manual}/musique/dev.parquet"):
        prepare_benchmark("musique", manual, data)
    with pytest.raises(AssertionError, match=r"(?s)Manual directory .*empty does not exist.*dev.jsonl or test.jsonl"):
        prepare_benchmark("nq", tmp_path / "empty", data)

    path = write_jsonl(manual / "triviaqa" / "test.jsonl", [
        {"id": "a", "question": "q?", "golden_answers": "A"}, "", b'{"id": "b", "question": "q2?"}'])
    with pytest.raises(ValueError, match=rf"{path}:3: missing field 'golden_answers' \(expected one {{\"id\""):
        prepare_benchmark("triviaqa", manual, data)
    path.write_bytes(b'{"id": "a", "question": "q?", "golden_answers": "A"}\n{"id": "b", "question": \n')
    with pytest.raises(ValueError, match=rf"{path}:2: malformed JSON"):
        prepare_benchmark("triviaqa", manual, data)

    write_jsonl(manual / "popqa" / "test.jsonl", [""])
    with pytest.raises(ValueError, match="test.jsonl: holds no question"):
        prepare_benchmark("popqa", manual, data)
    write_jsonl(manual / "nq" / "dev.jsonl", [{"id": "d", "question": "q?", "golden_answers": "A"}])
    (manual / "nq" / "dev.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match="dev.jsonl and .*dev.parquet exist; keep one"):
        prepare_benchmark("nq", manual, data)

    with pytest.raises(ValueError, match="unknown benchmark 'nq_open'; expected one of nq, triviaqa"):
        load_benchmark("nq_open", data)
    with pytest.raises(FileNotFoundError, match=r"no prepared ssp_qa/nq under .*prepare_benchmark\('nq'"):
        load_benchmark("nq", data)
    assert len(BENCHMARKS) == 7


def test_answer_list_round_trip(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "answers.jsonl", [
        {"ground_truth": "Paris", "search_turns": 2, "examples": ["Which city?", "Où?"]},
        b'{"ground_truth": "cut',
        {"ground_truth": ["NYC", "New York City", ""], "search_turns": 1},
        "",
        {"ground_truth": "x", "search_turns": "three"},
        {"ground_truth": "Oslo"},
    ])
    expected = [AnswerRecord("Paris", 2, ("Which city?", "Où?")),
                AnswerRecord(("NYC", "New York City"), 1, ()), AnswerRecord("Oslo", 1, ())]
    assert load_answers(path) == expected

    data = tmp_path / "tfds"
    assert prepare_answer_list(path, data) == expected
    assert load_answer_list(data) == expected
    metadata = tfds.builder("ssp_answers", data_dir=str(data)).info.metadata
    assert metadata["num_records"] == 3 and metadata["num_bad_lines"] == 2
    assert metadata["bad_lines"] == [f"{path}:2: malformed JSON: Unterminated string starting at (column 18)",
                                     f"{path}:5: field 'search_turns' must be a positive integer, got 'three'"]
    source = tfds.data_source("ssp_answers", data_dir=str(data), split="train", download=False)
    assert source[1] == {"ground_truth": [b"NYC", b"New York City"], "search_turns": 1, "examples": []}

    assert prepare_answer_list(path, data) == expected  # reused
    other = write_jsonl(tmp_path / "other.jsonl", [{"ground_truth": "y"}])
    with pytest.raises(ValueError, match=f"already holds an answer list built from {path}"):
        prepare_answer_list(other, data)


def test_answer_list_in_the_ssp_release_format(tmp_path: Path) -> None:
    """The release names its example questions `sys_question_example` (one string of lines),
    writes `search_turns` as a digit string and may wrap the gold as {"target": [...]}: all are
    read, and the examples reach the proposer prompt instead of "(none given)"."""
    path = write_jsonl(tmp_path / "release.jsonl", [
        {"sys_question_example": "Question 1: Who wrote the novel that the 1968 film was based on?\n"
                                 "Question 2: Which river flows through the capital of the country?\n\n"
                                 "Question 3: In what year was the founder of the company born?",
         "ground_truth": "Arthur C. Clarke", "search_turns": "2"},
        {"sys_question_example": ["Who?", "Where?"], "ground_truth": ["NYC", "New York"], "search_turns": 3},
        {"ground_truth": {"target": ["Oslo"]}, "search_turns": 1, "examples": ["Which capital?"]},
        {"ground_truth": "x", "examples": ["a"], "sys_question_example": "b"},
        {"ground_truth": "x", "sys_question_example": 7},
    ])
    records, bad = read_answer_file(path)
    assert [r for _, r in records] == [
        AnswerRecord("Arthur C. Clarke", 2, ("Who wrote the novel that the 1968 film was based on?",
                                             "Which river flows through the capital of the country?",
                                             "In what year was the founder of the company born?")),
        AnswerRecord(("NYC", "New York"), 3, ("Who?", "Where?")),
        AnswerRecord("Oslo", 1, ("Which capital?",))]
    assert bad == [f"{path}:4: give the example questions in 'examples' or in 'sys_question_example', not both",
                   f"{path}:5: field 'sys_question_example' must be a list of strings or one string of lines, got 7"]
    prompt = proposer_prompt(records[0][1].gold, records[0][1].search_turns, records[0][1].examples)
    assert "- Which river flows through the capital of the country?" in prompt and NO_EXAMPLES not in prompt


def test_answer_list_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    for load in (load_answers, lambda p: prepare_answer_list(p, tmp_path / "tfds")):
        with pytest.raises(FileNotFoundError, match=rf"{missing}: answer list not found \(expected jsonl, one "
                                                    r"\{\"ground_truth\""):
            load(missing)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"ground_truth": []}, [1, 2]])
    with pytest.raises(ValueError, match=rf"{bad}: no usable answer record \(2 bad lines; first: {bad}:1: "
                                         r"field 'ground_truth' must be a string or a list"):
        prepare_answer_list(bad, tmp_path / "tfds")
    with pytest.raises(FileNotFoundError, match="no prepared ssp_answers dataset under"):
        load_answer_list(tmp_path / "tfds")


def test_with_search_turns_keeps_the_named_turns_in_order() -> None:
    answers = [AnswerRecord("a", 1), AnswerRecord("b", 2), AnswerRecord("c", 3), AnswerRecord("d", 2)]
    assert with_search_turns(answers, ()) == answers
    assert [a.gold for a in with_search_turns(answers, (2, 3))] == ["b", "c", "d"]
    with pytest.raises(ValueError, match=r"config\.data\.search_turns=\(4,\) keeps none .*\[1, 2, 3\]"):
        with_search_turns(answers, (4,))
