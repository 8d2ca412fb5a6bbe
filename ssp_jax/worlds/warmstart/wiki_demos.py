"""Warm-start demonstrations over real Wikipedia passages, for the wiki rehearsal.

The rehearsal's tiny policy only has to write the tags the way a real BPE spells them, so that
the real path (text stop strings, information blocks, paper-size prompts, the reader's budget)
runs end to end: searches in SSP.md's spelling (`<search> query </search>`, whose space and
following newline the Qwen2.5 BPE merges into other tokens), answers and questions closed by
their tags, and the reader's bare answer. Thoughts are fixed phrases that name no entity: a
policy this small that saw a name in its thought wrote " </search>" right after it, skipping
the search tag (measured in the first rehearsal: 60% of its searches had no query). The chains
are real: an answer is an article's title, a bridging search is an article that names it, and
questions are cloze sentences from those articles (`data/wiki_offline.py`). Passages come from
the rehearsal's own index.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping, Sequence
from typing import Any

from ssp_jax.agent.prompts import proposer_messages, reader_messages, solver_messages
from ssp_jax.data.wiki_offline import Article, Mention
from ssp_jax.retrieval.base import Passage, Retriever
from ssp_jax.tokenizer import Tokenizer, format_passages
from ssp_jax.worlds.warmstart.demos import Demo, DemoFormat, TrajectoryBuilder

SEARCH_SPAN = "<think>{think}</think>\n<search> {query} </search>"  # SSP.md's spelling


def solver_demos(articles: Sequence[Article], tokenizer: Tokenizer, fmt: DemoFormat, retriever: Retriever,
                 questions: Sequence[tuple[Mention, str]], rng: random.Random) -> list[Demo]:
    """Search the article the question names, sometimes also the answer to check it, then answer."""
    demos = []
    for mention, question in questions:
        source, target = articles[mention.source].title, articles[mention.target].title
        b = TrajectoryBuilder(tokenizer, fmt, retriever)
        b.search("I search what the question names.", source)
        if rng.random() < 0.5:
            b.search("I check the name I found.", target)
        spans = b.finish(f"<think>I have the answer.</think>\n<answer> {target} </answer>")
        demos.append(Demo(b.prompt(solver_messages(question, fmt.templates)), spans, "solver"))
    return demos


def proposer_demos(articles: Sequence[Article], tokenizer: Tokenizer, fmt: DemoFormat, retriever: Retriever,
                   records: Sequence[tuple[Mapping[str, Any], int]],
                   questions: Mapping[int, Sequence[tuple[Mention, str]]], rng: random.Random) -> list[Demo]:
    """From the answer, search backwards through articles that name the previous one (max(n, 2)
    searches, the rule filter's minimum), then ask the cloze question of the first link."""
    linked = {target: [m.source for m, _ in found] for target, found in questions.items()}
    demos = []
    for record, target in records:
        turns = int(record["search_turns"])
        mention, question = rng.choice(list(questions[target]))
        chain = [target, mention.source]
        while len(chain) < max(turns, 2):
            nxt = [s for s in linked.get(chain[-1], []) + linked[target] if s not in chain]
            if not nxt:
                break
            chain.append(rng.choice(nxt))
        b = TrajectoryBuilder(tokenizer, fmt, retriever)
        b.search("I start from the answer.", articles[target].title)
        for article in chain[1:]:
            b.search("I follow an article that names it.", articles[article].title)
        spans = b.finish(f"<think>I write the question.</think>\n<question> {question} </question>")
        examples = [line.split(": ", 1)[-1] for line in str(record["sys_question_example"]).splitlines()]
        prompt = proposer_messages(record["ground_truth"], turns, examples, fmt.templates)
        demos.append(Demo(b.prompt(prompt), spans, "proposer"))
    return demos


def reader_demos(articles: Sequence[Article], tokenizer: Tokenizer, fmt: DemoFormat,
                 corpus: Sequence[Passage], questions: Sequence[tuple[Mention, str]], rng: random.Random,
                 num_distractors: int = 4) -> list[Demo]:
    """The reading reader: the passage holding the question's sentence among shuffled distractor
    passages, answered with the bare title."""
    by_title: dict[str, list[Passage]] = {}
    for passage in corpus:
        by_title.setdefault(passage.title, []).append(passage)
    demos = []
    for mention, question in questions:
        source = articles[mention.source].title
        gold = [p for p in by_title.get(source, []) if mention.sentence[:60] in p.text] or by_title.get(source, [])[:1]
        docs = gold + rng.sample(list(corpus), num_distractors)
        rng.shuffle(docs)
        b = TrajectoryBuilder(tokenizer, fmt)
        prompt = reader_messages(format_passages([(p.title, p.text) for p in docs]), question, fmt.templates)
        demos.append(Demo(b.prompt(prompt), b.finish(articles[mention.target].title), "reader"))
    return demos


def wiki_demos(articles: Sequence[Article], corpus: Sequence[Passage], records: Sequence[Mapping[str, Any]],
               questions: Mapping[int, Sequence[tuple[Mention, str]]], tokenizer: Tokenizer, fmt: DemoFormat,
               retriever: Retriever, *, num_solver: int, num_proposer: int, num_reader: int, seed: int,
               reader_distractors: int = 4) -> list[Demo]:
    """The shuffled mix of all three roles; a pure function of its inputs and `seed`.

    `records` is the answer list (`answer_records`), `questions` the cloze questions per answer
    article (`cloze_questions`) and `corpus` the passages the index holds.
    """
    rng = random.Random(f"wiki-warmstart:{seed}")
    fmt = dataclasses.replace(fmt, search_span=SEARCH_SPAN)
    index = {article.title: i for i, article in enumerate(articles)}
    pairs = [pair for found in questions.values() for pair in found]
    answers = [(r, index[str(r["ground_truth"])]) for r in records]
    demos = [
        *solver_demos(articles, tokenizer, fmt, retriever, rng.sample(pairs, min(num_solver, len(pairs))), rng),
        *proposer_demos(articles, tokenizer, fmt, retriever, rng.sample(answers, min(num_proposer, len(answers))),
                        questions, rng),
        *reader_demos(articles, tokenizer, fmt, corpus, rng.sample(pairs, min(num_reader, len(pairs))), rng,
                      reader_distractors)]
    rng.shuffle(demos)
    return demos
