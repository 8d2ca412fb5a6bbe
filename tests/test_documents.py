"""RAG-check documents: the proposer's own block plus whole distractor blocks, shuffled as units."""

import itertools
import re

import numpy as np
import pytest

from ssp_jax.agent.trajectory import Trajectory
from ssp_jax.retrieval.base import Passage
from ssp_jax.selfplay.documents import passages_text, proposer_blocks, rag_passages


def block(name, n):
    """n passages titled `name` with texts name1..name<n>."""
    return [Passage(f"{name}{i}", f'"{name}"\n{name}{i}') for i in range(1, n + 1)]


OWN = block("Own", 2)
OTHERS = [block(name, n) for name, n in zip("ABCDEFG", (1, 2, 3, 1, 2, 3, 1))]  # 7 blocks


def rag_documents(*args):
    """The reading reader's view of `rag_passages`: numbered across the shuffled blocks."""
    return passages_text(rag_passages(*args))


def docs(text):
    """[(number, title, text)] parsed back out of the formatted documents."""
    return [(int(n), title, body) for n, title, body in re.findall(r"Doc (\d+) \(Title: (\w+)\)\n(\w+)", text)]


def blocks_in_order(text):
    """The titles of the blocks in order; asserts numbering and that each block is whole and contiguous."""
    parsed = docs(text)
    assert [n for n, _, _ in parsed] == list(range(1, len(parsed) + 1))
    runs = [(title, [body for _, _, body in group])
            for title, group in itertools.groupby(parsed, key=lambda d: d[1])]
    titles = [title for title, _ in runs]
    assert len(set(titles)) == len(titles)  # no block split in two
    for title, bodies in runs:
        assert bodies == [f"{title}{i}" for i in range(1, len(bodies) + 1)]
        assert len(bodies) == (2 if title == "Own" else len(OTHERS["ABCDEFG".index(title)]))
    return titles


def test_proposer_blocks_flatten_in_retrieval_order():
    a, b, c = block("X", 3)
    traj = Trajectory(request_index=0, sample_index=0, prompt_ids=[1], passages=[[a, b], [c, a]])
    assert proposer_blocks(traj) == [a, b, c, a]
    assert proposer_blocks(Trajectory(request_index=0, sample_index=0, prompt_ids=[1])) == []


def test_no_distractors_is_just_the_own_block():
    text = rag_documents(OWN, OTHERS, 0, np.random.default_rng(0))
    assert text == "Doc 1 (Title: Own)\nOwn1\n\nDoc 2 (Title: Own)\nOwn2"


def test_one_distractor_comes_before_or_after_own():
    seen = {rag_documents(OWN, [block("A", 1)], 1, np.random.default_rng(seed)) for seed in range(20)}
    assert seen == {"Doc 1 (Title: Own)\nOwn1\n\nDoc 2 (Title: Own)\nOwn2\n\nDoc 3 (Title: A)\nA1",
                    "Doc 1 (Title: A)\nA1\n\nDoc 2 (Title: Own)\nOwn1\n\nDoc 3 (Title: Own)\nOwn2"}


@pytest.mark.parametrize("k, expected_blocks", [(0, 1), (1, 2), (4, 5), (7, 8), (9, 8)])
def test_distractor_counts(k, expected_blocks):
    for seed in range(5):
        titles = blocks_in_order(rag_documents(OWN, OTHERS, k, np.random.default_rng(seed)))
        assert len(titles) == expected_blocks and "Own" in titles


def test_fewer_blocks_than_asked_uses_all_of_them():
    titles = blocks_in_order(rag_documents(OWN, OTHERS[:3], 4, np.random.default_rng(0)))
    assert sorted(titles) == ["A", "B", "C", "Own"]


def test_empty_other_blocks_are_never_picked():
    others = [[], block("A", 1), [], []]
    for seed in range(5):
        assert sorted(blocks_in_order(rag_documents(OWN, others, 1, np.random.default_rng(seed)))) == ["A", "Own"]
    alone = rag_documents(OWN, OTHERS, 0, np.random.default_rng(0))
    assert rag_documents(OWN, [], 4, np.random.default_rng(0)) == alone


def test_distractors_and_order_vary_with_the_seed_and_are_deterministic():
    runs = [rag_documents(OWN, OTHERS, 4, np.random.default_rng(seed)) for seed in range(30)]
    assert runs[7] == rag_documents(OWN, OTHERS, 4, np.random.default_rng(7))
    assert len({frozenset(blocks_in_order(text)) for text in runs}) > 1  # different distractors
    assert len({blocks_in_order(text).index("Own") for text in runs}) == 5  # own block at every position


def test_negative_distractor_count_raises():
    with pytest.raises(ValueError, match="num_distractor_blocks"):
        rag_documents(OWN, OTHERS, -1, np.random.default_rng(0))
