"""Every parser of model text is correct on random tag soups and linear on adversarial ones (issue 20).

A degenerate policy writes 8k-token responses of unclosed, repeated or nested tags. The regex that
stripped `<information>` blocks rescanned to the end from every unclosed opening tag: 17 s on a
284k-character response, over 600 s on 1M. Time here is a ratio to a linear Python scan of the same
string, measured in the same test, so a loaded machine slows both sides alike; the sizes grow by 4x
from small, so quadratic code fails on the first, cheap size instead of running for minutes.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable

import pytest

from ssp_jax.agent.tags import (
    EMPTY,
    MISSING,
    OK,
    UNCLOSED,
    TagResult,
    all_tags,
    count_tags,
    first_tag,
    last_tag,
    search_query,
)
from ssp_jax.selfplay.filters import check_proposal
from ssp_jax.selfplay.judge import parse_verdict
from ssp_jax.selfplay.rewards import (
    exact_match,
    f1_score,
    final_answer,
    generated_text,
    normalize_answer,
    solver_reward,
)
from ssp_jax.selfplay.step import reader_answer

TAGS = ("think", "search", "information", "answer", "question")
PIECES = (*(f"<{t}>" for t in TAGS), *(f"</{t}>" for t in TAGS),
          "<informa", "</informat", "<answer", "answer>", "</answe", "<search", "</", "<", ">", "<<", ">>",
          "<answer><answer>", "</answer></answer>", "<information>\n", "\n</information>\n",
          "paris", "The Paris.", "Yes", "no", "Answer:", "x", " ", "  ", "\n", "\t", "?!")
GOLD = "Paris"
QUERIES = ("bridge", "the Bridge!")


def soup(rng: random.Random) -> str:
    """A random mix of whole and partial tags, words and whitespace; one in ten is long, to reach
    the answer-spam cap."""
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 200 if rng.random() < 0.1 else 40)))


# --- References: the specification, written for clarity; quadratic is fine on short strings. ---

_OLD_INFORMATION = re.compile(r"<information>.*?</information>", re.DOTALL)


def ref_generated_text(text: str) -> str:
    """The regex `generated_text` used before issue 20: its semantics are the specification."""
    return _OLD_INFORMATION.sub("", text)


def ref_spans(text: str, tag: str) -> list[str]:
    """Raw contents of the complete spans in order: an opening tag, the first closing tag after it,
    and no other opening tag in between (the innermost span)."""
    open_, close = f"<{tag}>", f"</{tag}>"
    spans, i = [], text.find(open_)
    while i >= 0:
        j = text.find(close, i + len(open_))
        if j >= 0 and open_ not in text[i + len(open_):j]:
            spans.append(text[i + len(open_):j])
        i = text.find(open_, i + 1)
    return spans


def ref_tag(text: str, tag: str, index: int) -> TagResult:
    spans = ref_spans(text, tag)
    if not spans:
        return TagResult(None, UNCLOSED if f"<{tag}>" in text else MISSING)
    content = spans[index].strip()
    return TagResult(content, OK) if content else TagResult(None, EMPTY)


def ref_count(text: str, marker: str) -> int:
    return len(re.findall(re.escape(marker), text))  # tag markers cannot overlap themselves


def ref_verdict(text: str) -> bool | None:
    word, lowered = "", text.lower()
    for ch in lowered:
        if "a" <= ch <= "z":
            word += ch
        elif word:
            break
    return True if word in ("yes", "correct", "true") else False if word in ("no", "incorrect", "false") else None


def test_fuzz_random_tag_soups_match_references():
    rng = random.Random(20)
    for _ in range(10_000):
        text = soup(rng)
        generated = generated_text(text)
        assert generated == ref_generated_text(text), text
        for tag in TAGS:
            assert last_tag(text, tag) == ref_tag(text, tag, -1), (tag, text)
            assert first_tag(text, tag) == ref_tag(text, tag, 0), (tag, text)
            assert all_tags(text, tag) == [s.strip() for s in ref_spans(text, tag) if s.strip()], (tag, text)
            assert count_tags(text, tag) == (ref_count(text, f"<{tag}>"), ref_count(text, f"</{tag}>")), (tag, text)
        assert search_query(text) == ref_tag(text, "search", -1), text

        prediction = ref_tag(generated, "answer", -1).content
        correct = exact_match(prediction, GOLD)
        spammed = max(count_tags(generated, "answer")) > 10
        assert solver_reward(text, GOLD) == (0.0 if not correct else 0.25 if spammed else 1.0), text
        assert final_answer(text) == prediction
        assert 0.0 <= f1_score(prediction, GOLD) <= 1.0
        assert isinstance(normalize_answer(text), str)
        check = check_proposal(text, QUERIES, GOLD, min_words=2)
        assert check.question == ref_tag(generated, "question", 0).content, text
        assert parse_verdict(text) == ref_verdict(text), text
        answer, tagged = reader_answer(text), ref_tag(text, "answer", -1)
        assert isinstance(answer, str) and (answer == tagged.content or not tagged.ok), text


# --- Time: every public parser, on worst-case shapes, as a ratio to a linear scan. ---

def _repeat(piece: str, n: int) -> str:
    return piece * max(1, n // len(piece))


def _random_soup(n: int) -> str:
    rng, parts, size = random.Random(n), [], 0
    while size < n:
        parts.append(rng.choice(PIECES))
        size += len(parts[-1])
    return "".join(parts)


SHAPES: dict[str, Callable[[int], str]] = {
    "unclosed_information": lambda n: _repeat("<information>", n),
    "unclosed_information_words": lambda n: _repeat("<information> a retrieved passage ", n),
    "information_closed_once_at_end": lambda n: _repeat("<information>", n) + "</information>",
    "opened_answers": lambda n: _repeat("<answer>", n),
    "closed_answers": lambda n: _repeat("</answer>", n),
    "opened_questions": lambda n: _repeat("<question> a question", n),
    "opened_searches": lambda n: _repeat("<search>", n),
    "nested_answers": lambda n: _repeat("<answer>", n // 2) + "paris" + _repeat("</answer>", n // 2),
    "nested_searches": lambda n: _repeat("<search>", n // 2) + "q" + _repeat("</search>", n // 2),
    "partial_tags": lambda n: _repeat("<informatio</answe<search", n),
    "less_thans": lambda n: "<" * n,
    "newlines": lambda n: "\n" * n,
    "soup": _random_soup,
}

PARSERS: dict[str, Callable[[str], object]] = {
    "generated_text": generated_text,
    "last_tag": lambda s: last_tag(s, "answer"),
    "first_tag": lambda s: first_tag(s, "question"),
    "all_tags": lambda s: all_tags(s, "search"),
    "count_tags": lambda s: count_tags(s, "answer"),
    "search_query": search_query,
    "solver_reward": lambda s: solver_reward(s, GOLD),
    "eval_prediction": lambda s: last_tag(generated_text(s), "answer"),  # selfplay/evaluate.py
    "check_proposal": lambda s: check_proposal(s, QUERIES, GOLD),
    "normalize_answer": normalize_answer,
    "f1_score": lambda s: f1_score(s, GOLD),
    "parse_verdict": parse_verdict,
    "reader_answer": reader_answer,
}

SIZES = (2 ** 14, 2 ** 16, 2 ** 18)  # the last is about the 284k characters
# Parser time over linear-scan time. Linear parsers measure at most ~2 (normalize_answer on a run of
# newlines); the old regex measured 135 on 16k characters of unclosed tags, and 4x more per size up.
BOUND = 25.0
GROWTH = 8.0  # time at 4n over time at n: 4 when linear, 16 when quadratic


def _linear_scan(s: str) -> int:
    """The baseline: one Python-level pass over every character."""
    return sum(ch == "<" for ch in s)


def _best(fn: Callable[[str], object], s: str, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(s)
        best = min(best, time.perf_counter() - start)
    return best


def _assert_linear(parsers: dict[str, Callable[[str], object]], shape: str, sizes: tuple[int, ...]) -> None:
    """Per size: the baseline once, then every parser on the same string, against it and against
    its own time at the previous (4x shorter) size."""
    previous: dict[str, float] = {}
    for n in sizes:
        s = SHAPES[shape](n)
        base = _best(_linear_scan, s)
        for name, fn in parsers.items():
            took = _best(fn, s)
            assert took < BOUND * base, (f"{name} on {shape} ({len(s)} chars): {took:.4f} s, "
                                         f"{took / base:.0f}x a linear scan ({base:.4f} s)")
            if name in previous:  # the scan's time absorbs timer noise on microsecond parsers
                assert took < GROWTH * previous[name] + base, (
                    f"{name} on {shape}: {previous[name]:.4f} s -> {took:.4f} s at 4x the length")
            previous[name] = took


@pytest.mark.parametrize("shape", SHAPES)
def test_parsers_are_linear_on_worst_cases(shape):
    _assert_linear(PARSERS, shape, SIZES)


@pytest.mark.parametrize("shape", ["unclosed_information", "unclosed_information_words", "soup"])
def test_generated_text_is_linear_up_to_a_million_characters(shape):
    _assert_linear({"generated_text": generated_text}, shape, (*SIZES, 2 ** 20))
