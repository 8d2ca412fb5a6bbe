"""Rule filters on proposed questions: every rule, their combinations, list golds (SSP.md 2.1)."""

import pytest

from ssp_jax.selfplay.filters import (
    FAILURES,
    LEAKS_ANSWER,
    NO_QUESTION,
    REPEATED_QUERY,
    TOO_FEW_SEARCHES,
    TOO_LONG,
    TOO_SHORT,
    ProposalCheck,
    check_proposal,
)

QUESTION = "Which engineer founded the company that built the longest bridge in Vantor?"  # 12 words
QUERIES = ["longest bridge Vantor", "Acme founder"]
GOLD = "Ada Lovelace"


def response(question=QUESTION, info=""):
    return (f"<think>Start from Ada.</think><search>{QUERIES[0]}</search>\n<information>\nDoc 1 (Title: Acme)\n"
            f"Acme built it.{info}</information>\n\n<think>Done.</think><question>{question}</question>")


def failures(question=QUESTION, queries=QUERIES, gold=GOLD, **kw):
    return check_proposal(response(question), queries, gold, **kw).failures


def test_a_good_proposal_passes():
    check = check_proposal(response(), QUERIES, GOLD)
    assert check == ProposalCheck(QUESTION, ()) and check.valid


@pytest.mark.parametrize("text", [
    "<think>I could not find a chain.</think>",
    "<question>Which engineer founded the company that built the bridge",  # never closed
    "<question>   </question>",
])
def test_no_question(text):
    check = check_proposal(text, QUERIES, GOLD)
    assert check.question is None and check.failures == (NO_QUESTION,) and not check.valid


def test_the_first_question_is_taken():
    text = response() + "<question>Who?</question>"
    assert check_proposal(text, QUERIES, GOLD).question == QUESTION
    assert check_proposal("<question>Who?</question>" + response(), QUERIES, GOLD).failures == (TOO_SHORT,)


def test_a_question_inside_retrieved_text_is_ignored():
    text = response(info=f"<question>{QUESTION}</question>").rsplit("<question>", 1)[0]
    assert check_proposal(text, QUERIES, GOLD).failures == (NO_QUESTION,)


@pytest.mark.parametrize("question, expected", [
    ("one two three four five six seven eight nine ten", ()),
    ("one two three four five six seven eight nine", (TOO_SHORT,)),
    ("  one\ntwo\tthree four five six seven eight nine ten  ", ()),
])
def test_word_count(question, expected):
    assert failures(question) == expected


def test_min_words_is_configurable():
    assert failures("Who founded the company that built it?", min_words=7) == ()
    assert failures("Who founded the company that built it?", min_words=8) == (TOO_SHORT,)


@pytest.mark.parametrize("question, gold", [
    ("Which engineer, later called ADA LOVELACE, founded the company that built the bridge?", GOLD),
    ("Which engineer, later called Ada Lovelace, founded the company that built the bridge?",
     ["Augusta Ada King", "Ada Lovelace"]),  # any alias of a list gold
    ("Which engineer in the US founded the company that built the longest bridge there?", ["United States", "US"]),
    ("Which compiler for C++ did the engineer who built the longest bridge there write?", "C++"),
])
def test_leaked_answers(question, gold):
    assert failures(question, gold=gold) == (LEAKS_ANSWER,)


@pytest.mark.parametrize("question, gold", [
    ("Which engineer in Canada founded the company that built the longest bridge there?", "Ada"),
    ("Which famous engineer founded the company that built the longest bridge in Vantor?", ["United States", "US"]),
])
def test_an_alias_inside_a_word_is_no_leak(question, gold):
    """Aliases match on word boundaries: the reference's substring test rejected these."""
    assert failures(question, gold=gold) == ()


def test_questions_over_the_length_cap_fail():
    long = QUESTION + " " + "And which of its bridges is older than the rest?" * 20  # > 1,000 characters
    assert failures(long) == (TOO_LONG,)
    assert failures(QUESTION, max_chars=len(QUESTION)) == () and failures(QUESTION, max_chars=20) == (TOO_LONG,)


def test_list_gold_without_a_leak_passes():
    assert failures(gold=["Augusta Ada King", "Ada Lovelace", b"Countess of Lovelace"]) == ()


@pytest.mark.parametrize("queries, min_searches, expected", [
    ([], 2, (TOO_FEW_SEARCHES,)),
    (["longest bridge Vantor"], 2, (TOO_FEW_SEARCHES,)),
    (QUERIES, 3, (TOO_FEW_SEARCHES,)),
    (QUERIES + ["Ada engineer"], 3, ()),
    (["longest bridge Vantor"], 1, ()),
])
def test_search_count(queries, min_searches, expected):
    assert failures(queries=queries, min_searches=min_searches) == expected


@pytest.mark.parametrize("queries, repeated", [
    (["Vantor bridge", "Acme founder", "Vantor bridge"], True),
    (["Vantor bridge", "vantor   BRIDGE?"], True),  # case, punctuation, spacing
    (["the Vantor bridge", "Vantor bridge"], True),  # articles
    (["Vantor bridge", "Vantor bridges"], False),
    (["Vantor bridge", "bridge Vantor"], False),
])
def test_repeated_queries_are_compared_normalised(queries, repeated):
    assert failures(queries=queries) == ((REPEATED_QUERY,) if repeated else ())


def test_every_failure_is_recorded():
    assert failures("Ada Lovelace founded what?", queries=["x", "X"], min_searches=3) == (
        TOO_SHORT, LEAKS_ANSWER, TOO_FEW_SEARCHES, REPEATED_QUERY)
    check = check_proposal("no question here", ["Vantor", "vantor."], ["Ada", "Lovelace"], min_searches=3)
    assert check.failures == (NO_QUESTION, TOO_FEW_SEARCHES, REPEATED_QUERY) and check.question is None
    assert failures("Ada Lovelace?", queries=[]) == (TOO_SHORT, LEAKS_ANSWER, TOO_FEW_SEARCHES)


def test_failure_names_are_distinct_metric_keys():
    assert len(set(FAILURES)) == 6
    assert FAILURES == ("no_question", "too_short", "too_long", "leaks_answer", "too_few_searches", "repeated_query")
