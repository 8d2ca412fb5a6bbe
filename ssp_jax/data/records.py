"""Validation of one input record (a jsonl line or a parquet row) with a reason a user can act on.

Every data file we read (corpus, QA benchmarks, answer lists) reports a bad record as
`path:line: reason`, and the reason names the field and what it must be. The checks live here so
that the builders and the plain loaders accept exactly the same records.
"""

from __future__ import annotations

import json
from typing import Any

from ssp_jax.selfplay.rewards import as_answer_list


def json_object(raw: bytes) -> dict[str, Any]:
    """The JSON object on one jsonl line; raises ValueError saying why the line is not one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 ({e.reason} at byte {e.start})") from None
    if not text.strip():
        raise ValueError("empty line")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    return record


def required(record: dict[str, Any], field: str) -> Any:
    if field not in record:
        raise ValueError(f"missing field {field!r}")
    return record[field]


def text_field(record: dict[str, Any], field: str, *, allow_int: bool = False) -> str:
    """A string field; with `allow_int`, integer values (ids in some dumps) are kept as strings."""
    value = required(record, field)
    if isinstance(value, str):
        return value
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    expected = "a string or an integer" if allow_int else "a string"
    raise ValueError(f"field {field!r} must be {expected}, got {type(value).__name__}")


def answers_field(record: dict[str, Any], field: str) -> list[str]:
    """Gold answer(s) given as a string or a list of strings, normalised by `as_answer_list`
    (blank aliases dropped), so every reader agrees on which golds are usable."""
    value = required(record, field)
    try:
        if isinstance(value, (str, list, tuple)):
            return as_answer_list(value)
    except (TypeError, ValueError):
        pass
    raise ValueError(f"field {field!r} must be a string or a list of strings with at least one "
                     f"non-blank answer, got {value!r:.100}")
