"""RAG-check documents: the proposer's own block plus whole distractor blocks, shuffled as units."""

import itertools
import re

import numpy as np
import pytest

from ssp_jax.agent.trajectory import Trajectory
from ssp_jax.retrieval.base import Passage
from ssp_jax.selfplay.documents import Fitted, fit_passages, passages_text, proposer_blocks, rag_passages


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


# --- fitting the reader's documents into its prompt budget, on real text and the real Qwen BPE -------

def wiki_blocks(num_blocks, searches, k=3):
    """Blocks of `searches` x top-`k` ~100-word passages of real Wikipedia text, as a proposer's."""
    from ssp_jax.data.wiki_offline import lead_articles

    words = [(a.title, a.text.split()) for a in lead_articles() if len(a.text.split()) >= 100]
    passages = [Passage(f"p{i}", f'"{title}"\n{" ".join(text[:100])}') for i, (title, text) in enumerate(words)]
    per_block = searches * k
    return [passages[b * per_block:(b + 1) * per_block] for b in range(num_blocks)]


def reader_ids(tokenizer, question):
    from ssp_jax.agent.prompts import reader_prompt
    from ssp_jax.tokenizer import ChatMLTemplate

    return lambda shown: ChatMLTemplate().render_ids(
        tokenizer, [{"role": "user", "content": reader_prompt(passages_text(shown), question)}])


QUESTION = "Which river flows through the capital of the country whose national anthem was written in 1848?"


def test_paper_size_reader_prompts_overflow_the_rollout_budget(qwen_tokenizer):
    """The finding: top-3 ~100-word passages are ~430 Qwen tokens a search, so five blocks of 2-4
    searches pass the rollout's 4,096-token prompt budget (the reader then answered nothing)."""
    prompt_ids = reader_ids(qwen_tokenizer, QUESTION)
    per_search = [len(qwen_tokenizer.encode(passages_text(b))) for b in wiki_blocks(20, 1)]
    assert 350 <= np.median(per_search) <= 500
    for searches in (2, 3, 4):
        passages = [p for b in wiki_blocks(5, searches) for p in b]
        assert len(prompt_ids(passages)) > 4096 if searches >= 3 else True
    passages = [p for b in wiki_blocks(5, 4) for p in b]
    assert 7000 < len(prompt_ids(passages)) <= 12288  # the reader's own default budget holds them


@pytest.mark.parametrize("budget", [4096, 2500, 900])
def test_fit_passages_trims_every_passage_evenly_to_the_budget(qwen_tokenizer, budget):
    prompt_ids = reader_ids(qwen_tokenizer, QUESTION)
    passages = [p for b in wiki_blocks(5, 3) for p in b]
    passages[3] = Passage("short", '"Short"\nA short passage.')
    fitted = fit_passages(passages, prompt_ids, budget, qwen_tokenizer)
    assert len(prompt_ids(fitted.passages)) <= budget
    assert [p.title for p in fitted.passages] == [p.title for p in passages]  # none dropped, order kept
    assert fitted.passages[3] == passages[3]  # shorter than the cap: whole
    kept = [len(qwen_tokenizer.encode(p.text)) for p in fitted.passages]
    full = [len(qwen_tokenizer.encode(p.text)) for p in passages]
    cut = [i for i, (a, b) in enumerate(zip(kept, full)) if a < b]
    assert fitted.cut_passages == len(cut) == len(passages) - 1
    assert max(kept) - min(kept[i] for i in cut) <= 2  # one cap for all (BPE may merge a token at the cut)
    assert all(passages[i].text.startswith(fitted.passages[i].text.rstrip()) for i in cut)
    assert fitted.cut_tokens == pytest.approx(sum(full) - sum(kept), abs=2 * len(cut))
    assert len(prompt_ids(fitted.passages)) > budget - 2 * len(passages)  # one token of slack per passage or so


def test_fit_passages_leaves_a_fitting_prompt_alone_and_empties_an_impossible_one(qwen_tokenizer):
    prompt_ids = reader_ids(qwen_tokenizer, QUESTION)
    passages = wiki_blocks(1, 2)[0]
    assert fit_passages(passages, prompt_ids, 4096, qwen_tokenizer) == Fitted(passages, 0, 0)
    empty = fit_passages(passages, prompt_ids, 20, qwen_tokenizer)  # not even the question fits
    assert all(p.text == "" for p in empty.passages) and empty.cut_passages == len(passages)
