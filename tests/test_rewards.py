"""Answer matching and rewards against hand-computed values (SSP.md section 3)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssp_jax.data.gold import as_answer_list
from ssp_jax.selfplay.rewards import (
    PROPOSER_REWARD_SHAPES,
    SOLVE_RATES,
    exact_match,
    f1_score,
    final_answer,
    generated_text,
    normalize_answer,
    proposer_reward,
    solver_reward,
)
from ssp_jax.selfplay.step import SelfPlayConfig, reader_answer


@pytest.mark.parametrize("raw, normalized", [
    ("The  Eiffel-Tower!", "eiffeltower"),
    ("An apple a day", "apple day"),
    ("Theatre and Anthem", "theatre and anthem"),  # articles only as whole words
    ("A.B.C.", "abc"),
    ("  Hello\n\tWorld ", "hello world"),
    ("the", ""),
    ("", ""),
])
def test_normalize_answer(raw, normalized):
    assert normalize_answer(raw) == normalized


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_normalize_answer_is_idempotent(s):
    assert normalize_answer(normalize_answer(s)) == normalize_answer(s)


@pytest.mark.parametrize("gold, expected", [
    ("Paris", ["Paris"]),
    (["Paris", "City of Light"], ["Paris", "City of Light"]),
    (("Paris",), ["Paris"]),
    ([b"Paris", "Lutetia"], ["Paris", "Lutetia"]),
    (b"Paris", ["Paris"]),
    (np.array(["Paris", "Lutetia"]), ["Paris", "Lutetia"]),
    (["", "  ", "Paris"], ["Paris"]),
])
def test_as_answer_list(gold, expected):
    assert as_answer_list(gold) == expected


@pytest.mark.parametrize("gold, error", [([], ValueError), ("  ", ValueError), ([""], ValueError),
                                         ([1], TypeError), (["Paris", None], TypeError), (7, TypeError)])
def test_as_answer_list_rejects_bad_golds(gold, error):
    with pytest.raises(error):
        as_answer_list(gold)


@pytest.mark.parametrize("prediction, gold, expected", [
    ("the Paris.", "paris", True),
    ("Paris", ["Lutetia", "PARIS!"], True),
    ("Pari", ["Lutetia", "Paris"], False),
    ("Paris France", "Paris", False),
    (None, "Paris", False),
    ("", "Paris", False),
])
def test_exact_match(prediction, gold, expected):
    assert exact_match(prediction, gold) is expected


@pytest.mark.parametrize("prediction, gold, expected", [
    ("Barack Obama", "Obama", 2 / 3),  # P = 1/2, R = 1
    ("Barack Obama", ["Michelle Obama", "Barack Hussein Obama"], 0.8),  # max(0.5, 2*1*(2/3)/(5/3))
    ("paris paris", "Paris", 2 / 3),  # the overlap counts a repeated token once
    ("The Paris", "paris", 1.0),
    ("London", "Paris", 0.0),
    ("the", "a", 1.0),  # both empty after normalisation
    ("", "Paris", 0.0),
    (None, ["Paris"], 0.0),
])
def test_f1_score(prediction, gold, expected):
    assert f1_score(prediction, gold) == pytest.approx(expected)


@settings(max_examples=200, deadline=None)
@given(st.text().filter(str.strip), st.text())
def test_matching_properties(gold, prediction):
    assert exact_match(gold, gold) and f1_score(gold, gold) == 1.0
    assert exact_match(f"The {gold}!", [gold])
    assert 0.0 <= f1_score(prediction, gold) <= 1.0
    if exact_match(prediction, gold):
        assert f1_score(prediction, gold) == 1.0


def answers(n, final="Paris"):
    """A response with n answer tags, the last one holding `final`."""
    return "<think>guessing</think>" + "<answer>London</answer>" * (n - 1) + f"<answer>{final}</answer>"


@pytest.mark.parametrize("response, gold, reward", [
    ("<think>easy</think><answer> the Paris </answer>", "paris", 1.0),
    ("<answer>Paris</answer>", ["Lutetia", "Paris"], 1.0),
    ("<answer>London</answer>", ["Lutetia", "Paris"], 0.0),
    ("<answer>Paris</answer><answer>London</answer>", "Paris", 0.0),  # only the last answer counts
    ("<answer>Paris", "Paris", 0.0),
    ("I think it is Paris.", "Paris", 0.0),
    ("<answer> </answer>", "Paris", 0.0),
    (answers(10), "Paris", 1.0),  # exactly at the cap: full reward
    (answers(11), "Paris", 0.25),  # over the cap: spam reward
    (answers(11, final="Rome"), "Paris", 0.0),
    ("<answer>Paris" + "</answer>" * 11, "Paris", 0.25),  # closing tags count too, as in the reference
    ("<answer>Paris" + "</answer>" * 10, "Paris", 1.0),
])
def test_solver_reward(response, gold, reward):
    assert solver_reward(response, gold) == reward


def test_solver_reward_spam_settings():
    assert solver_reward(answers(3), "Paris", max_answer_tags=2, spam_reward=0.5) == 0.5
    assert solver_reward(answers(2), "Paris", max_answer_tags=2, spam_reward=0.5) == 1.0


INFO = "<search>capital</search>\n<information>\nDoc 1 (Title: X)\nquiz: <answer>Paris</answer>\n</information>\n\n"


def test_retrieved_answer_tags_are_neither_parsed_nor_counted():
    # the newlines around the block stay; only <information>...</information> goes
    assert generated_text("<think>a</think>" + INFO + "<answer>b</answer>") == (
        "<think>a</think><search>capital</search>\n\n\n<answer>b</answer>")
    assert solver_reward(INFO, "Paris") == 0.0  # the only <answer> was retrieved, not generated
    assert solver_reward(INFO + "<answer>Rome</answer>", "Paris") == 0.0
    assert solver_reward(INFO * 3 + answers(10), "Paris") == 1.0  # 13 tags in all, 10 generated


def test_a_judged_answer_earns_what_a_matching_one_would():
    assert final_answer("<answer>Rome</answer> <answer> the French capital </answer>") == "the French capital"
    assert final_answer(INFO) is None and final_answer("no answer") is None
    response = "<answer>the French capital</answer>"
    assert solver_reward(response, "Paris") == 0.0 and solver_reward(response, "Paris", judged=True) == 1.0
    assert solver_reward("<answer>Paris</answer>", "Paris", judged=False) == 1.0  # EM needs no verdict
    assert solver_reward(answers(11, final="the French capital"), "Paris", judged=True) == 0.25  # still spam


@pytest.mark.parametrize("shape, solve_rate, reward", [
    ("one_minus_s", 0.0, 1.0), ("one_minus_s", 0.2, 0.8), ("one_minus_s", 0.6, 0.4), ("one_minus_s", 1.0, 0.0),
    ("four_s_one_minus_s", 0.0, 0.0), ("four_s_one_minus_s", 0.2, 0.64), ("four_s_one_minus_s", 0.5, 1.0),
    ("four_s_one_minus_s", 1.0, 0.0),
])
def test_proposer_reward_valid(shape, solve_rate, reward):
    assert proposer_reward(True, solve_rate, shape) == pytest.approx(reward)


@pytest.mark.parametrize("shape", PROPOSER_REWARD_SHAPES.names())
@pytest.mark.parametrize("solve_rate", [0.0, 0.2, 1.0, math.nan])
def test_invalid_question_earns_zero_never_negative(shape, solve_rate):
    reward = proposer_reward(False, solve_rate, shape)
    assert reward == 0.0 and not math.copysign(1.0, reward) < 0


def test_default_proposer_shape_is_one_minus_s():
    assert proposer_reward(True, 0.2) == pytest.approx(0.8)


def test_proposer_reward_errors():
    with pytest.raises(ValueError, match="unknown proposer reward shape 'linear'.*four_s_one_minus_s"):
        proposer_reward(False, 0.5, "linear")
    for bad in (-0.1, 1.2, math.nan):
        with pytest.raises(ValueError, match="solve_rate"):
            proposer_reward(True, bad)


@settings(max_examples=200, deadline=None)
@given(st.booleans(), st.floats(0.0, 1.0), st.sampled_from(PROPOSER_REWARD_SHAPES.names()))
def test_proposer_reward_is_in_unit_interval(valid, solve_rate, shape):
    assert 0.0 <= proposer_reward(valid, solve_rate, shape) <= 1.0


@pytest.mark.parametrize("response, answer", [
    ("Rokgru\nmore text", "Rokgru"),  # a bare answer: the first non-empty line
    ("\n Answer: Rokgru \n", "Rokgru"),  # a repeated label is dropped
    ("<think>The capital of Gilvel is Rokgru.</think><answer>Rokgru</answer>", "Rokgru"),  # thoughts, then the answer
    ("<answer>Xanbur</answer> <answer> Rokgru </answer>", "Rokgru"),  # the last answer span
    ("<think>The capital of Gilvel is", "<think>The capital of Gilvel is"),  # cut off: no span, so the raw line
    # The reference's reader reasons first, then labels its answer (full-width colon too).
    ("Gilvel's capital is named in Doc 2.\nAnswer: Rokgru\n", "Rokgru"),
    ("Doc 1 says Answer: Xanbur, Doc 2 corrects it.\nAnswer：Rokgru", "Rokgru"),
    ("Answer:\n", "Answer:"),  # an empty label: the raw line
    ("", ""),
])
def test_reader_answer(response, answer):
    assert reader_answer(response) == answer


def test_solve_rate_counts_as_the_reference_or_as_the_mean():
    """Four solver rollouts: correct, a spammed correct answer (0.25), wrong, wrong. The reference
    counts the spammed one as solved (s = 2/4); the mean reward counts a quarter (s = 1.25/4)."""
    rewards = np.array([[1.0, 0.25, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    np.testing.assert_allclose(SOLVE_RATES.get("solved")(rewards), [0.5, 0.0])
    np.testing.assert_allclose(SOLVE_RATES.get("mean_reward")(rewards), [0.3125, 0.0])
    assert SelfPlayConfig().solve_rate == "solved"
    with pytest.raises(ValueError, match="selfplay.solve_rate='share'"):
        SelfPlayConfig(solve_rate="share")
