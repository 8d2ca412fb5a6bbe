"""Gold answers and the records that carry them: the data layer's types, read by selfplay and eval.

Gold answers arrive as a string or as a list of aliases depending on the dataset; everything that
grades takes either (the reference implementation silently rejected every question because one
gold was a list: PITFALLS).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

Gold = str | Sequence[str]


def as_answer_list(gold: Gold) -> list[str]:
    """Gold answer(s) as a list of strings; bytes (e.g. from TFDS) are decoded as UTF-8.

    Blank aliases are dropped, since they would match an empty prediction and are a substring of
    every question. A gold with no non-blank answer is a data error and raises, loudly, instead
    of silently failing every check.
    """
    items = [gold] if isinstance(gold, (str, bytes)) else list(gold)
    answers = []
    for item in items:
        if isinstance(item, bytes):
            item = item.decode("utf-8")
        if not isinstance(item, str):
            raise TypeError(f"gold answers must be strings, got {type(item).__name__} in {gold!r}")
        if item.strip():
            answers.append(item)
    if not answers:
        raise ValueError(f"gold has no non-blank answer: {gold!r}")
    return answers


@dataclasses.dataclass(frozen=True)
class AnswerRecord:
    """One entry of the proposer's answer list (the original questions are thrown away)."""

    gold: Gold
    search_turns: int
    examples: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class QAItem:
    """One benchmark question with its gold answers (`hops`: 0 when the dataset does not say)."""

    question: str
    golden_answers: Gold
    hops: int = 0  # 0 = unknown
