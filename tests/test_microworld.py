"""The micro world: determinism, names, tokenizer, answer list, and a held-out benchmark that a
perfect solver answers by following each gold chain over the real BM25 index of the real corpus."""

import itertools
import re
import statistics
import time
from collections import Counter
from pathlib import Path

import pytest

from ssp_jax.retrieval.bm25 import BM25Retriever
from ssp_jax.retrieval.corpus import Corpus
from ssp_jax.tokenizer import Tokenizer, information_block
from ssp_jax.worlds.microworld import KINDS, RELATIONS, SPLITS, World, WorldConfig
from ssp_jax.worlds.microworld_text import BACKREF_TEMPLATES, FACT_TEMPLATES, QUESTION_STYLES, SYLLABLES
from ssp_jax.worlds.microworld_tokenizer import CHAT_TOKENS, FORMAT_TOKENS, SSP_TAGS, train_tokenizer


@pytest.fixture(scope="module")
def world() -> World:
    return World()


@pytest.fixture(scope="module")
def tokenizer(world: World) -> Tokenizer:
    return train_tokenizer(world, extra_tokens=("Answer:",))


@pytest.fixture(scope="module")
def bm25(world: World, tmp_path_factory: pytest.TempPathFactory) -> BM25Retriever:
    directory = tmp_path_factory.mktemp("microworld")
    return BM25Retriever.build(Corpus.prepare(world.write_corpus(directory / "world.jsonl"), directory / "tfds"))


def stem(entity) -> str:
    return "".join(entity.syllables).capitalize()


def sentences(text: str) -> list[str]:
    return re.split(r"(?<=\.)\s+", text.strip())


def read_fact(passage_text: str, subject: str, relation: str) -> list[str]:
    """A reader that knows only the passage wordings: the objects of `relation` stated about
    `subject`, one per sentence that is an instance of one of the relation's templates."""
    patterns = [re.compile(re.escape(t).replace(re.escape("{s}"), re.escape(subject))
                           .replace(re.escape("{o}"), "(?P<o>.+?)")) for t in FACT_TEMPLATES[relation]]
    return [m.group("o") for s in sentences(passage_text) for p in patterns if (m := p.fullmatch(s))]


def frame_words(text: str, names: re.Pattern) -> list[str]:
    """Lowercased words with every entity name replaced by X: the wording a template contributes."""
    return re.findall(r"[a-z0-9]+", names.sub("X", text).lower())


def test_deterministic_and_fast() -> None:
    start = time.perf_counter()
    a = World(WorldConfig(seed=3))
    assert time.perf_counter() - start < 2.0
    b, c = World(WorldConfig(seed=3)), World(WorldConfig(seed=4))
    assert a.entities == b.entities and a.relations == b.relations
    assert a.passages() == b.passages() and a.answers() == b.answers()
    for split in SPLITS:
        assert a.heldout_questions(split) == b.heldout_questions(split)
    assert a.example_questions(30, seed=1) == b.example_questions(30, seed=1) != a.example_questions(30, seed=2)
    assert a.passages() != c.passages() and a.answers() != c.answers()
    assert a.heldout_questions("test") != c.heldout_questions("test")


def test_sizes_and_passages(world: World) -> None:
    config = world.config
    assert Counter(e.kind for e in world.entities) == {k: config.count(k) for k in KINDS}
    assert 400 <= len(world.entities) <= 600
    passages = world.passages()
    assert [p["id"] for p in passages] == [e.id for e in world.entities]
    words = []
    for entity, passage in zip(world.entities, passages):
        title, text = passage["contents"].split("\n", 1)
        assert title == f'"{entity.name}"' and "\n" not in text
        words.append(len(text.split()))
        for relation, obj in world.facts(entity.id):  # every fact is stated exactly once
            assert read_fact(text, entity.name, relation) == [world.entity(obj).name]
    assert min(words) >= 40 and 60 <= statistics.median(words) <= 120 and max(words) <= 130
    # Back-references are complete: the object's passage names every subject, so a proposer can
    # walk backwards from any answer.
    text_of = {p["id"]: p["contents"] for p in passages}
    for relation in BACKREF_TEMPLATES:
        for subject, obj in world.relations[relation].items():
            assert world.entity(subject).name in text_of[obj], (relation, subject, obj)
    # Several wordings per fact are really in use.
    for relation, templates in FACT_TEMPLATES.items():
        used = {t for e in world.entities for r, o in world.facts(e.id) if r == relation
                for t in templates if t.format(s=e.name, o=world.entity(o).name) in text_of[e.id]}
        assert len(used) >= 3, relation


def test_names(world: World, tokenizer: Tokenizer) -> None:
    from ssp_jax.models.encoder import minilm_path

    english = {line.strip() for line in (minilm_path() / "vocab.txt").read_text().splitlines()}
    for seed in range(5):
        stems = [stem(e) for e in World(WorldConfig(seed=seed)).entities]
        assert len(set(stems)) == len(stems)
        assert not any(a.lower() in b.lower() for a, b in itertools.permutations(stems, 2))
        assert not {s.lower() for s in stems} & english  # no real words
    for entity in world.entities:
        assert 2 <= len(entity.syllables) <= 3 and set(entity.syllables) <= set(SYLLABLES)
        assert stem(entity) in entity.name and entity.golds[-1] == stem(entity)
    # Every name is several sub-word pieces, in running text and at the start of a title line.
    pieces = [len(tokenizer.encode(" " + stem(e))) for e in world.entities]
    assert min(pieces) >= 2 and statistics.median(pieces) >= 2 and max(pieces) <= 6
    assert min(len(tokenizer.encode(stem(e))) for e in world.entities) >= 2


def test_tokenizer_tags(world: World, tokenizer: Tokenizer, tmp_path: Path) -> None:
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert 1024 <= tokenizer.vocab_size <= 2048 + len(SSP_TAGS) + len(FORMAT_TOKENS) + 1
    tags = (*SSP_TAGS, *FORMAT_TOKENS, *CHAT_TOKENS, "Answer:")
    ids = {tag: tokenizer.encode(tag) for tag in tags}
    assert all(len(i) == 1 for i in ids.values()) and len({i[0] for i in ids.values()}) == len(tags)
    question = world.heldout_questions("test")[0]
    hop = question.chain[0]
    passages = [(p["contents"].split("\n", 1)[0].strip('"'), p["contents"].split("\n", 1)[1])
                for p in world.passages()[:3]]
    text = (f"<think>find {hop.query}</think>\n<search> {hop.query} </search>" + information_block(passages)
            + f"<think>ok</think><answer>{hop.answer}</answer><|im_end|>")
    encoded = tokenizer.encode(text)
    assert tokenizer.decode(encoded) == text
    assert tokenizer.decode(encoded, skip_special_tokens=True) == text.removesuffix("<|im_end|>")
    for tag in ("</search>", "<information>", "</information>", "<answer>", "</answer>", "</think>"):
        assert encoded.count(ids[tag][0]) == text.count(tag)  # one id in any context
    assert encoded.count(ids["Doc"][0]) == 3 and encoded.count(ids[" (Title:"][0]) == 3
    loaded = Tokenizer.load(tokenizer.save(tmp_path / "tok"))
    assert loaded.encode(text) == encoded and loaded.eos_id == tokenizer.eos_id


def test_gold_chains_solve_every_heldout_question(world: World, bm25: BM25Retriever) -> None:
    """A solver that searches each hop's query over the real index, opens the top-3 result titled
    with it and reads the fact off the text, lands on the gold answer of every question."""
    for split in SPLITS:
        questions = world.heldout_questions(split)
        results = iter(bm25.search([h.query for q in questions for h in q.chain], 3))
        for question in questions:
            current = question.chain[0].query
            assert current in question.question
            for hop in question.chain:
                assert hop.query == current
                passage = next(p for p in next(results) if p.title == current)
                assert passage.id == hop.passage_id
                (current,) = read_fact(passage.text, current, hop.relation)
                assert current == hop.answer
            assert current == question.golden_answers[0]


def test_splits(world: World) -> None:
    dev, test = (world.heldout_questions(s) for s in SPLITS)
    assert (len(dev), len(test)) == (world.config.num_dev_questions, world.config.num_test_questions)
    assert len(test) >= 300

    def key(q):
        return tuple((h.passage_id, h.relation) for h in q.chain)

    assert not {key(q) for q in dev} & {key(q) for q in test}
    assert not {q.question for q in dev} & {q.question for q in test}
    for questions in (dev, test):
        hops = Counter(q.hops for q in questions)
        assert set(hops) == {1, 2, 3} and max(hops.values()) - min(hops.values()) <= 1
        assert len({q.id for q in questions}) == len(questions)
        assert len({tuple(h.relation for h in q.chain) for q in questions}) >= 40  # varied paths
    for q in dev + test:
        assert q.hops == len(q.chain) and q.question.endswith("?")
        assert q.golden_answers == tuple(world.entity(q.answer_id).golds)
        assert not any(g.lower() in q.question.lower() for g in q.golden_answers)
        ids = [q.chain[0].passage_id] + [h.answer_id for h in q.chain]
        assert len(set(ids)) == len(ids)  # no entity twice, so no degenerate loops
    with pytest.raises(ValueError):
        world.heldout_questions("train")


def test_answer_list_matches_chains(world: World) -> None:
    # Independent walk over the relation tables: (end entity, hops) of every chain without repeats.
    reachable = set()
    frontier = [(e.id,) for e in world.entities]
    for hops in (1, 2, 3):
        frontier = [path + (obj,) for path in frontier for r, (kind, _) in RELATIONS.items()
                    if (obj := world.relations[r].get(path[-1])) is not None and obj not in path]
        reachable |= {(path[-1], hops) for path in frontier}
    answers = world.answers()
    assert {(a["entity_id"], a["search_turns"]) for a in answers} == reachable
    assert len(answers) == len(reachable) and {a["search_turns"] for a in answers} == {1, 2, 3}
    for a in answers:
        entity = world.entity(a["entity_id"])
        assert a["ground_truth"] == (entity.name if not entity.aliases else [entity.name, *entity.aliases])
    assert any(isinstance(a["ground_truth"], list) for a in answers)
    for q in world.heldout_questions("test"):
        assert (q.answer_id, q.hops) in reachable


@pytest.mark.parametrize("style", QUESTION_STYLES)
def test_heldout_wording_is_not_passage_wording(style: str) -> None:
    world = World(WorldConfig(heldout_style=style))
    names = re.compile(r"\b(" + "|".join(sorted({re.escape(g) for e in world.entities for g in e.golds},
                                                key=len, reverse=True)) + r")\b")
    passage_sentences, passage_grams = set(), set()
    for p in world.passages():
        for sentence in sentences(p["contents"].split("\n", 1)[1]):
            passage_sentences.add(sentence.rstrip(".").lower())
            words = frame_words(sentence, names)
            passage_grams |= {tuple(words[i:i + 5]) for i in range(len(words) - 4)}
    heldout = world.heldout_questions("dev") + world.heldout_questions("test")
    for q in heldout:
        assert q.question.rstrip("?").lower() not in passage_sentences
        words = frame_words(q.question, names)
        assert not {tuple(words[i:i + 5]) for i in range(len(words) - 4)} & passage_grams, q.question
    # Example questions (for prompts and warm-start data) use the other wording and other chains.
    examples = world.example_questions(90)
    assert Counter(q.hops for q in examples) == {1: 30, 2: 30, 3: 30}
    assert {q.style for q in examples}.isdisjoint({q.style for q in heldout})
    assert not {tuple(frame_words(q.question, names)) for q in examples} & {
        tuple(frame_words(q.question, names)) for q in heldout}
    assert not {q.chain for q in examples} & {q.chain for q in heldout}


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="heldout_style"):
        WorldConfig(heldout_style="casual")
    with pytest.raises(ValueError, match="templates_per_fact"):
        WorldConfig(templates_per_fact=9)
    with pytest.raises(ValueError, match="make it larger"):
        World(WorldConfig(num_countries=2, num_cities=4, num_people=6, num_companies=2, num_universities=1,
                          num_rivers=1, num_test_questions=300))
