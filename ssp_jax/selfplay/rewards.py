"""Answer matching and the two rewards of SSP (SSP.md section 3), as pure functions.

Gold answers arrive as a string or as a list of aliases depending on the dataset; every function
here takes either (the reference implementation silently rejected every question because one
gold was a list: PITFALLS). Proposer rewards are never negative: a -0.1 penalty for invalid
questions collapsed training to a zero valid rate.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable

import numpy as np

from ssp_jax.agent.tags import count_tags, last_tag
from ssp_jax.data.gold import Gold, as_answer_list
from ssp_jax.registry import Registry

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)
_INFORMATION_OPEN, _INFORMATION_CLOSE = "<information>", "</information>"


def normalize_answer(s: str) -> str:
    """SQuAD / Search-R1 normalisation: lowercase, drop punctuation, drop a/an/the, collapse spaces."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def generated_text(response_text: str) -> str:
    """The response without its `<information>` blocks, so retrieved passages that happen to
    contain `<answer>` or `<question>` tags can neither be parsed as the model's output nor
    count towards the answer-spam cap.

    Each block runs from an opening tag to the first closing tag after it, and an opening tag with
    no closing tag after it stays, as does everything after it. One left-to-right scan with
    `str.find`, so it is linear: the regex it replaces (`<information>.*?</information>`, DOTALL,
    same result) rescanned to the end from every unclosed opening tag, which made a degenerate
    response with thousands of them quadratic (17 s on 284k characters, over 600 s on 1M).
    """
    pieces, pos = [], 0
    while (start := response_text.find(_INFORMATION_OPEN, pos)) >= 0:
        end = response_text.find(_INFORMATION_CLOSE, start + len(_INFORMATION_OPEN))
        if end < 0:
            break  # no closing tag after this opening tag, so none after any later one either
        pieces.append(response_text[pos:start])
        pos = end + len(_INFORMATION_CLOSE)
    pieces.append(response_text[pos:])
    return "".join(pieces)


def exact_match(prediction: str | None, gold: Gold) -> bool:
    """True if the normalised prediction equals any normalised gold answer."""
    if prediction is None:
        return False
    normalized = normalize_answer(prediction)
    return any(normalized == normalize_answer(answer) for answer in as_answer_list(gold))


def _token_f1(prediction_tokens: list[str], gold_tokens: list[str]) -> float:
    if not prediction_tokens or not gold_tokens:
        return float(prediction_tokens == gold_tokens)
    common = sum((Counter(prediction_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(prediction_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str | None, gold: Gold) -> float:
    """Token-level F1 of the normalised strings, the best over the gold answers (for eval)."""
    if prediction is None:
        return 0.0
    tokens = normalize_answer(prediction).split()
    return max(_token_f1(tokens, normalize_answer(answer).split()) for answer in as_answer_list(gold))


def final_answer(response_text: str) -> str | None:
    """The solver's answer: the last complete `<answer>` span of what it generated, or None."""
    return last_tag(generated_text(response_text), "answer").content


def solver_reward(response_text: str, gold: Gold, *, max_answer_tags: int = 10, spam_reward: float = 0.25,
                  judged: bool = False) -> float:
    """1 if the final answer is correct, else 0; no format reward. Correct: an exact match with a
    gold, or `judged` (an LLM judge accepted the answer that exact match rejected).

    A correct answer in a response with more than `max_answer_tags` opening or more than
    `max_answer_tags` closing `<answer>` tags earns only `spam_reward`, so enumerating guesses does
    not pay (the reference's rule; its count also covers retrieved text, ours the generated text only).
    """
    text = generated_text(response_text)
    if not (judged or exact_match(last_tag(text, "answer").content, gold)):
        return 0.0
    return spam_reward if max(count_tags(text, "answer")) > max_answer_tags else 1.0


PROPOSER_REWARD_SHAPES: Registry[Callable[[float], float]] = Registry("proposer_reward")


@PROPOSER_REWARD_SHAPES.register("one_minus_s")
def one_minus_s(solve_rate: float) -> float:
    """Hardest questions pay most: 1 - s."""
    return 1.0 - solve_rate


@PROPOSER_REWARD_SHAPES.register("four_s_one_minus_s")
def four_s_one_minus_s(solve_rate: float) -> float:
    """Questions solved half the time pay most: 4 s (1 - s), 0 when always or never solved."""
    return 4.0 * solve_rate * (1.0 - solve_rate)


SOLVE_RATES: Registry[Callable[[np.ndarray], np.ndarray]] = Registry("solve_rate")


@SOLVE_RATES.register("solved")
def share_solved(rewards: np.ndarray) -> np.ndarray:
    """The share of a question's solver rollouts with a reward above 0, as the reference counts them:
    a spammed correct answer (capped at `spam_reward`) counts as solved. rewards: [questions, samples]."""
    return (rewards > 0).mean(axis=-1)


@SOLVE_RATES.register("mean_reward")
def mean_reward(rewards: np.ndarray) -> np.ndarray:
    """The mean of a question's solver rewards: a spammed correct answer counts `spam_reward`."""
    return rewards.mean(axis=-1)


def proposer_reward(valid: bool, solve_rate: float, shape: str = "one_minus_s") -> float:
    """`shape(s)` for a valid question, where s is the fraction of its solver rollouts that
    succeeded; 0 for an invalid one, never negative (a negative penalty collapsed training)."""
    if shape not in PROPOSER_REWARD_SHAPES:
        raise ValueError(f"unknown proposer reward shape {shape!r}; known: {PROPOSER_REWARD_SHAPES.names()}")
    if not valid:
        return 0.0
    if math.isnan(solve_rate) or not 0.0 <= solve_rate <= 1.0:
        raise ValueError(f"solve_rate must be in [0, 1], got {solve_rate}")
    return PROPOSER_REWARD_SHAPES.get(shape)(solve_rate)
