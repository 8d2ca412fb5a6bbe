"""Rule filters on a proposed question (SSP.md section 2.1), before the RAG check.

Every failing rule is recorded, not just the first, so metrics can break the valid rate down by
filter and show which habit of the proposer is costing it reward.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from ssp_jax.agent.tags import first_tag
from ssp_jax.data.gold import Gold, as_answer_list
from ssp_jax.selfplay.rewards import generated_text, normalize_answer

NO_QUESTION = "no_question"  # no complete, non-blank <question> span
TOO_SHORT = "too_short"  # fewer than min_words words
TOO_LONG = "too_long"  # more than max_chars characters (the reference's cap: 1,000)
LEAKS_ANSWER = "leaks_answer"  # a gold answer occurs in the question as whole words, any case
TOO_FEW_SEARCHES = "too_few_searches"  # fewer than min_searches searches made
REPEATED_QUERY = "repeated_query"  # two queries are equal after normalisation
FAILURES = (NO_QUESTION, TOO_SHORT, TOO_LONG, LEAKS_ANSWER, TOO_FEW_SEARCHES, REPEATED_QUERY)


@dataclasses.dataclass(frozen=True)
class ProposalCheck:
    """The verdict on one proposal: the question (when one was found) and every failed rule."""

    question: str | None
    failures: tuple[str, ...]

    @property
    def valid(self) -> bool:
        return not self.failures


def mentions(text: str, answer: str) -> bool:
    """Whether `answer` occurs in `text` as whole words, ignoring case: a gold alias "US" is not in
    "famous", "C++" is in "written in C++". (The reference's substring test rejects any question
    holding a short alias inside a word.)"""
    answer = answer.strip()
    return bool(answer) and re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", text, re.IGNORECASE) is not None


def check_proposal(response_text: str, queries: Sequence[str], gold: Gold, *,
                   min_words: int = 10, min_searches: int = 2, max_chars: int = 1000) -> ProposalCheck:
    """Apply every rule to a proposer trajectory's response text and issued queries.

    The question is the first `<question>` span of the model's own text (retrieved passages are
    ignored). Without one, the question rules cannot run, so only the search rules are added to
    NO_QUESTION. Queries are compared after answer normalisation (case, punctuation, articles,
    spacing), so "The Vantor bridge?" repeats "vantor  bridge".
    """
    question = first_tag(generated_text(response_text), "question").content
    failures = []
    if question is None:
        failures.append(NO_QUESTION)
    else:
        if len(question.split()) < min_words:
            failures.append(TOO_SHORT)
        if len(question) > max_chars:
            failures.append(TOO_LONG)
        if any(mentions(question, answer) for answer in as_answer_list(gold)):
            failures.append(LEAKS_ANSWER)
    if len(queries) < min_searches:
        failures.append(TOO_FEW_SEARCHES)
    normalized = [normalize_answer(query) for query in queries]
    if len(set(normalized)) < len(normalized):
        failures.append(REPEATED_QUERY)
    return ProposalCheck(question, tuple(failures))
