"""Parse `<tag>...</tag>` spans out of model text, robustly.

During RL the policy's output is routinely malformed: unclosed, nested, empty or repeated tags
and arbitrary garbage. Rewards, the validity gate and the rollout loop must still get a decision
for every trajectory, so nothing here raises on model text; a failed parse is a `TagResult` whose
`reason` says what went wrong, which callers can count and log.

A complete span is always the *innermost* one: an opening tag, then the first closing tag after
it, with no other opening tag in between. So `<answer><answer>x</answer></answer>` yields `x`,
and parsed content never contains the tag's own markers.
"""

from __future__ import annotations

from dataclasses import dataclass

OK = "ok"  # a complete span with non-blank content
MISSING = "missing"  # no opening tag at all
UNCLOSED = "unclosed"  # an opening tag, but no closing tag after any opening tag
EMPTY = "empty"  # the chosen complete span holds only whitespace
REASONS = (OK, MISSING, UNCLOSED, EMPTY)


@dataclass(frozen=True)
class TagResult:
    """Content of one span (stripped), or None with the reason it could not be taken."""

    content: str | None
    reason: str

    @property
    def ok(self) -> bool:
        return self.content is not None


def _markers(tag: str) -> tuple[str, str]:
    """The literal opening and closing markers. A bad tag name is a caller bug, not model
    output, so it is the one thing that raises."""
    if not tag.isidentifier():
        raise ValueError(f"tag name must be a simple identifier, got {tag!r}")
    return f"<{tag}>", f"</{tag}>"


def _result(text: str, start: int, end: int) -> TagResult:
    """The stripped content of text[start:end], or EMPTY if it is blank."""
    content = text[start:end].strip()
    return TagResult(content, OK) if content else TagResult(None, EMPTY)


def _no_span(text: str, open_: str) -> TagResult:
    """Why there is no complete span: no opening tag, or none of them is ever closed."""
    return TagResult(None, UNCLOSED if open_ in text else MISSING)


def last_tag(text: str, tag: str) -> TagResult:
    """The last complete span: what the solver's reward scores (its final `<answer>`).

    Take the last closing tag, the last opening tag before it, then the first closing tag after
    that opening tag (which differs from the last one only when spans nest or close twice).
    """
    open_, close = _markers(tag)
    last_close = text.rfind(close)
    start = text.rfind(open_, 0, last_close) if last_close >= 0 else -1
    if start < 0:
        return _no_span(text, open_)
    start += len(open_)
    return _result(text, start, text.find(close, start))


def first_tag(text: str, tag: str) -> TagResult:
    """The first complete span: the proposer's question is its first `<question>`.

    Take the first opening tag, the first closing tag after it, then the last opening tag
    before that closing tag (so a re-opened tag yields the inner, complete span).
    """
    open_, close = _markers(tag)
    first_open = text.find(open_)
    end = text.find(close, first_open + len(open_)) if first_open >= 0 else -1
    if end < 0:
        return _no_span(text, open_)
    return _result(text, text.rfind(open_, 0, end) + len(open_), end)


def count_tags(text: str, tag: str) -> tuple[int, int]:
    """(opening, closing) tag counts: the solver reward caps an answer spammed in more than 10 of
    either, as the reference does (a run of `</answer>` alone counts too)."""
    open_, close = _markers(tag)
    return text.count(open_), text.count(close)


def search_query(segment: str) -> TagResult:
    """The query of a generation segment that stopped at (and includes) `</search>`.

    A failed parse keeps its reason so the rollout can record "no query" instead of searching
    for garbage.
    """
    return last_tag(segment, "search")


def all_tags(text: str, tag: str) -> list[str]:
    """Contents of every complete span in order, blank ones dropped: e.g. all queries issued,
    for the proposer's ">= 2 searches, none repeated" rule."""
    open_, close = _markers(tag)
    contents, pos = [], 0
    while (end := text.find(close, pos)) >= 0:
        start = text.rfind(open_, pos, end)
        if start >= 0 and (content := text[start + len(open_):end].strip()):
            contents.append(content)
        pos = end + len(close)
    return contents
