"""The refill pool: sampling without replacement, periodic clearing, dummies, checkpoint state."""

import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssp_jax.selfplay.pool import DUMMY_QUESTION, PoolQuestion, QuestionPool, is_dummy

RECORDS = [PoolQuestion(f"question {i}?", [f"answer {i}", f"alias {i}"] if i % 2 else f"answer {i}")
           for i in range(5)]


def test_pool_question_normalises_gold():
    assert PoolQuestion("q", "Paris").gold == ("Paris",)
    assert PoolQuestion("q", ["Paris", b"Lutetia"]).gold == ("Paris", "Lutetia")
    assert PoolQuestion("q", ("Paris",)) == PoolQuestion("q", ["Paris"])
    assert not is_dummy(PoolQuestion("q", "Paris"))
    with pytest.raises(ValueError):
        PoolQuestion("q", [])


def test_empty_pool_yields_dummies():
    pool = QuestionPool()
    assert len(pool) == 0
    picked = pool.sample(3, np.random.default_rng(0))
    assert picked == [DUMMY_QUESTION] * 3 and all(is_dummy(q) for q in picked)
    assert DUMMY_QUESTION.question and DUMMY_QUESTION.gold


def test_sampling_is_without_replacement_when_possible():
    pool = QuestionPool(records=RECORDS)
    rng = np.random.default_rng(0)
    assert pool.sample(0, rng) == []
    three = pool.sample(3, rng)
    assert len(set(three)) == 3 and set(three) <= set(RECORDS)
    assert sorted(pool.sample(5, rng), key=RECORDS.index) == RECORDS
    twelve = pool.sample(12, rng)  # two full passes, then 2 distinct
    assert sorted(twelve[:5], key=RECORDS.index) == RECORDS
    assert sorted(twelve[5:10], key=RECORDS.index) == RECORDS
    assert len(set(twelve[10:])) == 2
    assert sorted(Counter(twelve).values()) == [2, 2, 2, 3, 3]
    assert not any(is_dummy(q) for q in twelve)


def test_sampling_is_deterministic_under_a_seed():
    pool = QuestionPool(records=RECORDS)
    assert pool.sample(7, np.random.default_rng(3)) == pool.sample(7, np.random.default_rng(3))
    draws = {tuple(pool.sample(3, np.random.default_rng(seed))) for seed in range(10)}
    assert len(draws) > 1


@settings(max_examples=50, deadline=None)
@given(size=st.integers(1, 8), n=st.integers(0, 30), seed=st.integers(0, 2**32 - 1))
def test_sample_counts_are_balanced(size, n, seed):
    pool = QuestionPool(records=[PoolQuestion(f"question {i}?", "x") for i in range(size)])
    counts = Counter(pool.sample(n, np.random.default_rng(seed)))
    assert sum(counts.values()) == n
    if n:
        assert max(counts.values()) - min(counts.values()) <= 1 and (n < size or len(counts) == size)


def test_max_repeats_caps_each_question_and_fills_with_dummies():
    pool = QuestionPool(records=RECORDS[:2])
    drawn = pool.sample(7, np.random.default_rng(0), max_repeats=2)
    counts = Counter(drawn)
    assert len(drawn) == 7 and counts[RECORDS[0]] == counts[RECORDS[1]] == 2 and counts[DUMMY_QUESTION] == 3
    assert drawn[4:] == [DUMMY_QUESTION] * 3  # real questions first
    assert Counter(pool.sample(3, np.random.default_rng(0), max_repeats=2)).keys() <= set(RECORDS[:2])
    assert QuestionPool().sample(2, np.random.default_rng(0), max_repeats=1) == [DUMMY_QUESTION] * 2
    with pytest.raises(ValueError, match="max_repeats=-1"):
        pool.sample(1, np.random.default_rng(0), max_repeats=-1)


def test_add_and_refuse_the_dummy():
    pool = QuestionPool()
    pool.add(RECORDS[:2])
    pool.add(iter(RECORDS[2:]))
    assert len(pool) == 5
    with pytest.raises(ValueError, match="dummy"):
        pool.add([RECORDS[0], DUMMY_QUESTION])
    assert len(pool) == 5


def test_clearing_every_ten_steps():
    pool = QuestionPool()
    assert pool.maybe_clear(0)
    for step in range(1, 10):
        pool.add([RECORDS[step % 5]])
        assert not pool.maybe_clear(step)
    assert len(pool) == 9
    assert pool.maybe_clear(10) and len(pool) == 0
    pool.add(RECORDS)
    assert not pool.maybe_clear(15) and pool.maybe_clear(20) and len(pool) == 0


def test_clear_every_is_configurable_and_validated():
    pool = QuestionPool(clear_every=3, records=RECORDS)
    assert [pool.maybe_clear(step) for step in range(1, 7)] == [False, False, True, False, False, True]
    with pytest.raises(ValueError, match="clear_every"):
        QuestionPool(clear_every=0)
    with pytest.raises(ValueError):
        pool.sample(-1, np.random.default_rng(0))


def test_state_dict_round_trips_through_json():
    pool = QuestionPool(clear_every=4, records=RECORDS)
    state = json.loads(json.dumps(pool.state_dict()))
    assert state["clear_every"] == 4
    assert state["records"][1] == {"question": "question 1?", "gold": ["answer 1", "alias 1"]}
    restored = QuestionPool.from_state_dict(state)
    assert len(restored) == 5 and restored.clear_every == 4
    assert restored.sample(5, np.random.default_rng(1)) == pool.sample(5, np.random.default_rng(1))
    assert QuestionPool.from_state_dict(QuestionPool().state_dict()).sample(1, np.random.default_rng(0)) == [
        DUMMY_QUESTION]
