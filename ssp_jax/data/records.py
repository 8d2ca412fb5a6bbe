"""Validation of one input record (a jsonl line or a parquet row) with a reason a user can act on.

Every data file we read (corpus, QA benchmarks, answer lists) reports a bad record as
`path:line: reason`, and the reason names the field and what it must be. The generic checks live
here, importing nothing of ours, so that the corpus (under retrieval/) can use them too.
"""

from __future__ import annotations

import json
from typing import Any


def json_object(raw: bytes) -> dict[str, Any]:
    """The JSON object on one jsonl line; raises ValueError saying why the line is not one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 ({e.reason} at byte {e.start})") from None
    if not text.strip():
        raise ValueError("empty line")
    try:
        record = json.loads(text.rstrip("\r\n"))  # a cut line then reads "Unterminated string"
    except json.JSONDecodeError as e:
        raise ValueError(f"malformed JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    return record


def required(record: dict[str, Any], field: str) -> Any:
    """The value of `field`; a missing field is reported by name rather than as a bare KeyError."""
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


def as_str(value: bytes | str) -> str:
    """A Text feature read back from a TFDS data source (which returns UTF-8 bytes)."""
    return value.decode("utf-8") if isinstance(value, bytes) else value
