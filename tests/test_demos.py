"""Warm-start demos: the exact SSP trajectory format over the real BM25 index, masks, no held-out
question, clean proposer demos pass the rule filters, the noise share, determinism."""

import random

import pytest

from ssp_jax.agent.rollout import RolloutConfig
from ssp_jax.agent.tags import all_tags, last_tag
from ssp_jax.retrieval.bm25 import BM25Retriever
from ssp_jax.retrieval.corpus import Corpus
from ssp_jax.selfplay.filters import check_proposal
from ssp_jax.selfplay.rewards import generated_text
from ssp_jax.selfplay.step import SelfPlayConfig
from ssp_jax.tokenizer import Tokenizer, get_chat_template, information_block
from ssp_jax.worlds.microworld import SPLITS, Hop, World, WorldConfig
from ssp_jax.worlds.microworld_tokenizer import train_tokenizer
from ssp_jax.worlds.warmstart.demos import (
    GOAL,
    Demo,
    DemoFormat,
    build_demos,
    find_thought,
    goal_question,
    passage_demos,
    proposer_demos,
    quote,
    reader_demos,
    solver_demos,
)

CHAT = get_chat_template("chatml")
FMT = DemoFormat(CHAT)


@pytest.fixture(scope="module")
def world() -> World:
    return World()


@pytest.fixture(scope="module")
def tokenizer(world: World) -> Tokenizer:
    return train_tokenizer(world)


@pytest.fixture(scope="module")
def bm25(world: World, tmp_path_factory: pytest.TempPathFactory) -> BM25Retriever:
    directory = tmp_path_factory.mktemp("demos")
    return BM25Retriever.build(Corpus.prepare(world.write_corpus(directory / "world.jsonl"), directory / "tfds"))


def response(demo: Demo, tokenizer: Tokenizer) -> str:
    return tokenizer.decode([t for ids, _ in demo.spans for t in ids])


def check_format(demo: Demo, tokenizer: Tokenizer, bm25: BM25Retriever) -> list[str]:
    """Asserts the trajectory layout and returns the queries issued, in order."""
    assert demo.tokens == demo.prompt_ids + [t for ids, _ in demo.spans for t in ids]
    assert demo.loss_mask == [0] * len(demo.prompt_ids) + [int(m) for ids, m in demo.spans for _ in ids]
    assert tokenizer.decode(demo.prompt_ids).endswith("<|im_start|>assistant\n")
    assert demo.spans[-1][1] and demo.spans[-1][0][-1] == tokenizer.eos_id
    assert all(tokenizer.eos_id not in ids for ids, _ in demo.spans[:-1])
    queries = []
    for (generated, trained), (info, info_trained) in zip(demo.spans[:-1:2], demo.spans[1::2]):
        assert trained and not info_trained
        query = last_tag(tokenizer.decode(generated), "search").content
        passages = bm25.search([query], 3)[0]
        assert info == tokenizer.encode(information_block([(p.title, p.text) for p in passages]))
        queries.append(query)
    return queries


def test_solver_format_and_clean_answers(world: World, tokenizer: Tokenizer, bm25: BM25Retriever) -> None:
    questions = world.example_questions(30, seed=5)
    demos = solver_demos(world, tokenizer, FMT, bm25, questions, random.Random(0), noise=0.0)
    for demo, question in zip(demos, questions):
        assert question.question in tokenizer.decode(demo.prompt_ids)
        assert check_format(demo, tokenizer, bm25) == [hop.query for hop in question.chain]
        text = generated_text(response(demo, tokenizer))
        assert all_tags(text, "answer") == [question.golden_answers[0]]


def test_find_thought_keeps_the_depth_written() -> None:
    chain = [Hop("Fexmir", "p1", "born_in", "Daxulm", "c1"), Hop("Daxulm", "c1", "located_in", "Daxvor", "k1"),
             Hop("Daxvor", "k1", "longest_river", "River Esk", "r1")]
    assert [find_thought(chain, k) for k in range(3)] == [
        "Find the birthplace of Fexmir.", "Find the country of Daxulm.", "Find the longest river of Daxvor."]
    assert [find_thought(chain, k, "plan") for k in range(3)] == [
        "Find the birthplace of Fexmir, then the country, then the longest river.",
        "Find the country of Daxulm, then the longest river.", "Find the longest river of Daxvor."]
    assert [find_thought(chain, k, "goal") for k in range(3)] == [
        "Find the longest river of the country of the birthplace of Fexmir.",
        "Find the longest river of the country of Daxulm.", "Find the longest river of Daxvor."]
    with pytest.raises(ValueError, match="solver thoughts must be one of"):
        find_thought(chain, 0, "list")


@pytest.mark.parametrize("thoughts", ["plan", "goal"])
def test_solver_thoughts_follow_the_chain(world: World, tokenizer: Tokenizer, bm25: BM25Retriever,
                                          thoughts: str) -> None:
    """Each search is preceded by the thought for its hop; a clean demo searches the whole chain."""
    questions = world.example_questions(12, seed=7)
    for demo, question in zip(solver_demos(world, tokenizer, FMT, bm25, questions, random.Random(0), noise=0.0,
                                           thoughts=thoughts), questions):
        assert check_format(demo, tokenizer, bm25) == [hop.query for hop in question.chain]
        thinks = all_tags(generated_text(response(demo, tokenizer)), "think")
        assert [t.split(". ")[-1] for t in thinks[:-1]] == [find_thought(question.chain, k, thoughts)
                                                           for k in range(question.hops)]


def test_noise_share(world: World, tokenizer: Tokenizer, bm25: BM25Retriever) -> None:
    questions = world.example_questions(60, seed=6)
    demos = solver_demos(world, tokenizer, FMT, bm25, questions, random.Random(1), noise=0.4)
    flawed = 0
    for demo, question in zip(demos, questions):
        queries = check_format(demo, tokenizer, bm25)
        answer = last_tag(response(demo, tokenizer), "answer").content
        imperfect = queries != [h.query for h in question.chain] or answer not in question.golden_answers
        assert imperfect == (demo.flaw is not None)
        flawed += imperfect
    assert flawed == 24
    assert {d.flaw for d in demos} == {None, "wrong_search", "early_answer", "wrong_answer"}


def test_early_answer_only_mix_leaves_one_hop_demos_clean(world: World, tokenizer: Tokenizer,
                                                          bm25: BM25Retriever) -> None:
    questions = world.example_questions(60, seed=6)
    demos = solver_demos(world, tokenizer, FMT, bm25, questions, random.Random(1), noise=0.5, flaws=("early_answer",),
                         thoughts="plan")
    for demo, question in zip(demos, questions):
        queries = check_format(demo, tokenizer, bm25)
        if question.hops == 1:
            answer = last_tag(response(demo, tokenizer), "answer").content
            assert demo.flaw is None and answer in question.golden_answers
        elif demo.flaw == "early_answer":  # stops after hop 1 although its plan names the next hop
            assert queries == [question.chain[0].query]
            assert ", then the" in last_tag(response(demo, tokenizer).split("</search>")[0], "think").content
    assert {d.flaw for d in demos} == {None, "early_answer"}


@pytest.mark.slow
def test_proposer_demo_count_is_capped_by_the_answers_with_a_warning(world: World, tokenizer: Tokenizer,
                                                                     bm25: BM25Retriever, caplog) -> None:
    answers = [a for a in world.answers() if world.example_questions_to(a["entity_id"], a["search_turns"])]
    with caplog.at_level("WARNING"):
        demos = build_demos(world, tokenizer, FMT, bm25, seed=0, num_solver=0, num_proposer=len(answers) + 1,
                            num_reader=0, passage_repeats=0)
    assert len(demos) == len(answers)  # every such answer once (none lacks a chain outside dev/test)
    assert f"only {len(answers)} answers have an example chain" in caplog.text


def test_proposer_demos_pass_rule_filters(world: World, tokenizer: Tokenizer, bm25: BM25Retriever) -> None:
    rng = random.Random(2)
    answers = [a for a in world.answers() if world.example_questions_to(a["entity_id"], a["search_turns"])]
    answers = [a for hops in (1, 2, 3) for a in rng.sample([a for a in answers if a["search_turns"] == hops], 8)]
    clean = proposer_demos(world, tokenizer, FMT, bm25, answers, random.Random(3), noise=0.0)
    assert len(clean) == len(answers)
    for demo, record in zip(clean, answers):
        queries = check_format(demo, tokenizer, bm25)
        assert len(queries) == max(record["search_turns"], 2)
        assert queries[0] == world.entity(record["entity_id"]).name
        check = check_proposal(response(demo, tokenizer), queries, record["ground_truth"])
        assert check.valid, (check, queries)
        # The question is the goal phrase the last thought composed, hop by hop.
        phrase = check.question.removeprefix("What is ").split(",")[0].removesuffix("?")
        assert last_tag(response(demo, tokenizer), "think").content.endswith(f"Ask for {phrase}.")
    noisy = proposer_demos(world, tokenizer, FMT, bm25, answers, random.Random(3), noise=0.5)
    verdicts = [check_proposal(response(d, tokenizer), check_format(d, tokenizer, bm25), a["ground_truth"]).valid
                for d, a in zip(noisy, answers)]
    assert verdicts == [d.flaw is None for d in noisy] and verdicts.count(False) == 12


def test_quote_cuts_the_naming_sentence_after_the_name(world: World) -> None:
    # A back-reference list, cut after the picked name; and the symmetric spouse fact.
    city = next(e for e in world.entities
                if e.kind == "city" and any(len(s) > 2 for _, s in world.back_references(e.id)))
    relation, subjects = next((r, s) for r, s in world.back_references(city.id) if len(s) > 2)
    names = [world.entity(i).name for i in subjects]
    cut = quote(world, Hop(names[1], subjects[1], relation, city.name, city.id))  # "... include A, B"
    assert cut.endswith(f" {names[0]}, {names[1]}") and city.name in cut and cut in world.passage(city.id)
    person = next(e for e in world.entities if e.kind == "person" and dict(world.facts(e.id)).get("spouse"))
    spouse = world.entity(dict(world.facts(person.id))["spouse"])
    cut = quote(world, Hop(spouse.name, spouse.id, "spouse", person.name, person.id))
    assert person.name in cut and cut.endswith(spouse.name) and cut in world.passage(person.id)
    with pytest.raises(ValueError, match=f"no born_in sentence naming '{spouse.name}'"):
        quote(world, Hop(spouse.name, spouse.id, "born_in", city.name, city.id))


def test_quote_proposer_demos_copy_the_sentence_naming_each_search(world: World, tokenizer: Tokenizer,
                                                                 bm25: BM25Retriever) -> None:
    answers = [a for a in world.answers() if world.example_questions_to(a["entity_id"], a["search_turns"])]
    answers = [next(a for a in answers if a["search_turns"] == hops) for hops in (2, 3)]
    plain = proposer_demos(world, tokenizer, FMT, bm25, answers, random.Random(3), noise=0.0)
    quoted = proposer_demos(world, tokenizer, FMT, bm25, answers, random.Random(3), noise=0.0, thoughts="quote")
    ids = {e.name: e.id for e in world.entities}
    for a, b, record in zip(plain, quoted, answers):
        queries = check_format(b, tokenizer, bm25)
        assert queries == check_format(a, tokenizer, bm25)  # the same chain, searched the same way
        thoughts = all_tags(response(b, tokenizer), "think")
        # Each search after the first is chosen by quoting the sentence of the last passage read
        # that names it, cut after the name, then restating the fact in goal words.
        for i, (thought, query) in enumerate(zip(thoughts[1:], queries[1:]), 1):
            read, restated = thought.split(". The ", 1)
            assert read.endswith(query) and read in world.passage(ids[queries[i - 1]])
            assert f" of {query} is {queries[i - 1]}. Ask for " in restated and thought.endswith(f"Search {query}.")
        assert check_proposal(response(b, tokenizer), queries, record["ground_truth"]).valid
    with pytest.raises(ValueError, match="proposer thoughts must be one of"):
        proposer_demos(world, tokenizer, FMT, bm25, answers, random.Random(3), noise=0.0, thoughts="plan")


def test_proposer_chains_give_each_answer_its_own_chains(world: World, tokenizer: Tokenizer,
                                                         bm25: BM25Retriever) -> None:
    one = build_demos(world, tokenizer, FMT, bm25, seed=0, num_solver=0, num_proposer=6, num_reader=0,
                      passage_repeats=0)
    three = build_demos(world, tokenizer, FMT, bm25, seed=0, num_solver=0, num_proposer=6, proposer_chains=3,
                        num_reader=0, passage_repeats=0)
    assert len(one) == 6 and len(three) == 18

    def answer(demo: Demo) -> str:  # a proposer demo searches its answer first
        return all_tags(response(demo, tokenizer), "search")[0]

    assert sorted(map(answer, three)) == sorted(3 * list(map(answer, one)))  # the same six answers, thrice
    assert len({tuple(d.tokens) for d in three}) > 6  # whose chains differ


@pytest.mark.slow
def test_proposer_search_turns_keep_searched_names_out_of_questions(world: World, tokenizer: Tokenizer,
                                                                    bm25: BM25Retriever) -> None:
    answers = [a for a in world.answers() if world.example_questions_to(a["entity_id"], a["search_turns"])]
    multi = [a for a in answers if a["search_turns"] in (2, 3)]
    assert 0 < len(multi) < len(answers)

    def names_a_search(demo: Demo) -> bool:  # the question names an entity the demo searched
        text = response(demo, tokenizer)
        question = last_tag(text, "question").content
        return any(query in question for query in all_tags(text, "search"))

    kwargs = dict(seed=0, noise=0.0, num_solver=0, num_proposer=len(answers), num_reader=0, passage_repeats=0)
    every = build_demos(world, tokenizer, FMT, bm25, **kwargs)
    kept = build_demos(world, tokenizer, FMT, bm25, **kwargs, proposer_search_turns=(2, 3))
    assert len(every) == len(answers) and len(kept) == len(multi)
    # A 1-search demo searches the entity its question asks about; a 2- or 3-search one never does.
    assert sum(map(names_a_search, every)) == len(answers) - len(multi)
    assert not any(map(names_a_search, kept))
    with pytest.raises(ValueError, match=r"proposer_search_turns=\(9,\) keeps no answer"):
        build_demos(world, tokenizer, FMT, bm25, **kwargs, proposer_search_turns=(9,))


def test_goal_question_nests_the_chain_and_pads_short_ones(world: World) -> None:
    person = next(e for e in world.entities if e.kind == "person")
    company = next(e for e in world.entities if e.kind == "company")
    chain = (Hop(person.name, person.id, "works_for", company.name, company.id),
             Hop(company.name, company.id, "founded_by", "X", "x"), Hop("X", "x", "born_in", "Y", "y"))
    assert goal_question(world, chain) == f"What is the birthplace of the founder of the employer of {person.name}?"
    year = person.attributes["birth_year"]
    assert goal_question(world, chain[:1]) == (f"What is the employer of {person.name}, who was born in the year "
                                               f"{year}?")
    # The word floor is the config's `selfplay.min_question_words`, which the trainer passes through
    # `DemoFormat`: at a floor of 5 the one-hop question is long enough as it is.
    assert goal_question(world, chain[:1], min_words=5) == f"What is the employer of {person.name}?"
    assert FMT.min_question_words == SelfPlayConfig().min_question_words and FMT.topk == RolloutConfig().topk


def test_reader_and_passage_demos(world: World, tokenizer: Tokenizer) -> None:
    questions = world.example_questions(12, seed=7)
    for demo, question in zip(reader_demos(world, tokenizer, FMT, questions, random.Random(4)), questions):
        prompt = tokenizer.decode(demo.prompt_ids)
        # A proposer's documents: the answer's passage and each searched hop's (not the start's,
        # unless the question has one hop), among 4 distractors.
        searched = question.chain[1:] if question.hops > 1 else question.chain
        titles = {world.entity(question.answer_id).name} | {world.entity(h.passage_id).name for h in searched}
        assert prompt.count("Doc ") == len(titles) + 4
        assert all(f"(Title: {title})" in prompt for title in titles)
        assert prompt.endswith("Answer:<|im_end|>\n<|im_start|>assistant\n")
        assert demo.spans == [(tokenizer.encode(question.golden_answers[0]) + [tokenizer.eos_id], True)]
    passages = passage_demos(world, tokenizer, random.Random(5))
    assert len(passages) == len(world.entities)
    assert all(len(d.prompt_ids) == 1 and d.loss_mask[0] == 0 and all(d.loss_mask[1:]) for d in passages)


def test_build_demos_mix_no_heldout_and_deterministic(world: World, tokenizer: Tokenizer,
                                                      bm25: BM25Retriever) -> None:
    kwargs = dict(seed=3, num_solver=40, num_proposer=20, num_reader=20)
    demos = build_demos(world, tokenizer, FMT, bm25, **kwargs)
    assert demos == build_demos(world, tokenizer, FMT, bm25, **kwargs)
    assert demos != build_demos(world, tokenizer, FMT, bm25, **{**kwargs, "seed": 4})
    roles = [d.role for d in demos]
    assert (roles.count("solver"), roles.count("proposer"), roles.count("reader"), roles.count("passage")) == (
        40, 20, 20, len(world.entities))
    other = World(WorldConfig(seed=5))
    reading = build_demos(world, tokenizer, FMT, bm25, **kwargs, reading_worlds=[other])
    passages = [tokenizer.decode(d.tokens) for d in reading if d.role == "passage"]
    assert len(passages) == len(world.entities) + len(other.entities)
    assert all(any(f"(Title: {e.name})" in text for text in passages) for e in other.entities)
    heldout = {q.question for split in SPLITS for q in world.heldout_questions(split)}
    for demo in demos:
        text = tokenizer.decode(demo.tokens)
        assert not any(q in text for q in heldout)
        assert demo.loss_mask[0] == 0  # the first token has no context: never a training target


def test_passage_demos_restate_every_fact(world: World, tokenizer: Tokenizer) -> None:
    entity = next(e for e in world.entities if e.kind == "person" and len(world.facts(e.id)) >= 3)
    demo = passage_demos(world, tokenizer, random.Random(0))[world.entities.index(entity)]
    restated = tokenizer.decode(demo.tokens).split("\n")[-1]
    expected = {f"The {GOAL[r]} of {entity.name} is {world.entity(o).name}." for r, o in world.facts(entity.id)}
    assert set(restated.replace(". ", ".|").split("|")) == expected
