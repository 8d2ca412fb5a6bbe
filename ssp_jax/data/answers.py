"""The proposer's answer list: jsonl records `{"ground_truth": str | [str], "search_turns": int,
"examples": [str]}` (SSP's answer files; the original questions are thrown away).

Bad lines are skipped and reported with file:line, like the corpus builder does, so one malformed
record does not stop a run; a file with no usable record is an error.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ssp_jax.selfplay.rewards import as_answer_list
from ssp_jax.selfplay.step import AnswerRecord


def _parse(record: object) -> AnswerRecord:
    if not isinstance(record, dict):
        raise ValueError("expected a JSON object")
    gold = as_answer_list(record["ground_truth"])  # raises on blank or non-string golds
    turns = record.get("search_turns", 1)
    if not isinstance(turns, int) or isinstance(turns, bool) or turns < 1:
        raise ValueError(f"search_turns must be a positive int, got {turns!r}")
    examples = record.get("examples", [])
    if not isinstance(examples, list) or not all(isinstance(e, str) for e in examples):
        raise ValueError("examples must be a list of strings")
    return AnswerRecord(gold=gold[0] if len(gold) == 1 else tuple(gold), search_turns=turns,
                        examples=tuple(examples))


def load_answers(path: str | Path) -> list[AnswerRecord]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: answer list not found (config.data.answers; expected jsonl with "
                                '"ground_truth" and "search_turns" per line)')
    records, bad = [], []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                records.append(_parse(json.loads(line)))
            except (ValueError, KeyError, TypeError) as e:
                bad.append(f"{path}:{number}: {type(e).__name__}: {e}")
    for message in bad[:20]:
        logging.warning("skipping answer record %s", message)
    if not records:
        raise ValueError(f"{path}: no usable answer record ({len(bad)} bad lines)")
    return records


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
