"""Warm-start SFT demonstrations in the exact SSP trajectory format (issue 6, "Warm start").

This SFT is the micro world's stand-in for an instruct model: it teaches the tag format, how to
search and how to read, for all three roles (solver, proposer, RAG reader), plus plain passage
reading, which the prototype found to be the biggest lever. Solver and proposer demos are built
like real rollouts: the prompt is rendered with the generation prompt, then generated spans and
information blocks (each tokenized once, from the real retriever's top-3) are concatenated with no
end-of-turn between them; only the final span ends with end-of-turn. A `noise` share is flawed on
purpose, so the warm-started solver leaves room for SSP to improve. Solver and reader demos use
`World.example_questions` only, never a dev/test held-out question.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import re
from collections.abc import Mapping, Sequence

from ssp_jax.agent.prompts import (
    DEFAULT_TEMPLATES,
    PromptTemplates,
    proposer_messages,
    reader_messages,
    solver_messages,
)
from ssp_jax.agent.rollout import RolloutConfig
from ssp_jax.retrieval.base import Passage, Retriever
from ssp_jax.selfplay.step import SelfPlayConfig
from ssp_jax.tokenizer import ChatTemplate, Message, Tokenizer, format_passages, information_block
from ssp_jax.worlds.microworld import Hop, Question, World
from ssp_jax.worlds.microworld_text import ASK, BACKREF_TEMPLATES, FACT_TEMPLATES

NUM_EXAMPLES = SelfPlayConfig.num_examples  # example questions per proposer prompt, as prepare_microworld writes
# What a hop's relation yields, for the short reasoning text.
GOAL = {"born_in": "birthplace", "educated_at": "university", "spouse": "spouse", "works_for": "employer",
        "located_in": "country", "capital": "capital", "founded_by": "founder", "headquartered_in": "home city",
        "campus_in": "city", "flows_through": "city", "rises_in": "source country", "longest_river": "longest river"}
# A descriptor of the start entity, to lengthen a question below `selfplay.min_question_words` words.
DESCRIBE = {"person": "{s}, who was born in the year {birth_year},", "city": "{s}, a city founded in {founded},",
            "country": "{s}, a country of about {population} million people,",
            "company": "{s}, a company founded in {founded},", "university": "{s}, which was founded in {founded},",
            "river": "{s}, a river {length} kilometres long,"}
SOLVER_FLAWS = ("wrong_search", "early_answer", "wrong_answer")
SOLVER_THOUGHTS = ("hop", "plan", "goal")
PROPOSER_FLAWS = ("too_short", "leaks_answer")
PROPOSER_THOUGHTS = ("goal", "quote")

Span = tuple[list[int], bool]  # (token ids, trained)


@dataclasses.dataclass(frozen=True)
class DemoFormat:
    """How demos are rendered: the same chat template, role prompts and passages per search as
    the rollouts they teach, so the warm start and SSP see identical formats. The defaults are the
    config's (`rollout.topk`, `selfplay.min_question_words`); the trainer passes the run's values."""

    chat: ChatTemplate
    templates: PromptTemplates = DEFAULT_TEMPLATES
    topk: int = RolloutConfig.topk  # passages per search
    min_question_words: int = SelfPlayConfig.min_question_words  # the proposer filter's word floor
    # A generated search turn. The micro world's tokenizer makes each tag one token; real text
    # (the wiki rehearsal) uses SSP.md's spelling, whose spaces and newline a real BPE merges.
    search_span: str = "<think>{think}</think><search>{query}</search>"


@dataclasses.dataclass(frozen=True)
class Demo:
    """One SFT sequence: an untrained prompt, then spans; `flaw` names a deliberate imperfection."""

    prompt_ids: list[int]
    spans: list[Span]
    role: str = ""
    flaw: str | None = None

    @property
    def tokens(self) -> list[int]:
        return self.prompt_ids + [t for ids, _ in self.spans for t in ids]

    @property
    def loss_mask(self) -> list[int]:
        return [0] * len(self.prompt_ids) + [int(trained) for ids, trained in self.spans for _ in ids]


class TrajectoryBuilder:
    """Accumulates one trajectory's text turns into spans, tokenizing each piece on its own, as a
    rollout appends them (generated ids, then each information block tokenized alone)."""

    def __init__(self, tokenizer: Tokenizer, fmt: DemoFormat, retriever: Retriever | None = None) -> None:
        self.tokenizer, self.fmt, self.retriever = tokenizer, fmt, retriever
        self.end_id = tokenizer.token_to_id(fmt.chat.end_of_turn) or tokenizer.eos_id
        self.spans: list[Span] = []

    def prompt(self, conversation: str | Sequence[Message]) -> list[int]:
        """The prompt ids of a user message, or of a whole conversation (a system message first)."""
        messages = [{"role": "user", "content": conversation}] if isinstance(conversation, str) else conversation
        return self.fmt.chat.render_ids(self.tokenizer, messages)

    def search(self, think: str, query: str) -> list[Passage]:
        """A generated `fmt.search_span` turn and the untrained information block."""
        passages = self.retriever.search([query], self.fmt.topk)[0]
        self.spans.append((self.tokenizer.encode(self.fmt.search_span.format(think=think, query=query)), True))
        block = information_block([(p.title, p.text) for p in passages])
        self.spans.append((self.tokenizer.encode(block), False))
        return passages

    def finish(self, text: str) -> list[Span]:
        """The last generated span, closed with end-of-turn so the model learns to stop."""
        self.spans.append((self.tokenizer.encode(text) + [self.end_id], True))
        return self.spans


def _flaws(count: int, noise: float, kinds: Sequence[str], rng: random.Random) -> list[str | None]:
    """Exactly round(noise * count) flawed slots at random positions, each of a random kind."""
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1], got {noise}")
    flawed = set(rng.sample(range(count), round(noise * count)))
    return [rng.choice(kinds) if i in flawed else None for i in range(count)]


def _decoy(world: World, entity_id: str, rng: random.Random) -> str:
    """A plausible wrong entity: another entity of the same kind."""
    kind = world.entity(entity_id).kind
    return rng.choice([e.name for e in world.entities if e.kind == kind and e.id != entity_id])


def find_thought(chain: Sequence[Hop], k: int, thoughts: str = "hop") -> str:
    """What the solver means to find before searching hop k: that hop only ("hop"); that hop and
    the ones after it in search order ("plan": "Find the employer of X, then the founder."); or the
    chain's end as a nested phrase from hop k ("goal": "Find the founder of the employer of X.").
    The last two keep the question's depth written in the trajectory, so stopping can follow the
    text the solver wrote rather than a guess made afresh at every turn."""
    if thoughts not in SOLVER_THOUGHTS:
        raise ValueError(f"solver thoughts must be one of {SOLVER_THOUGHTS}, got {thoughts!r}")
    if thoughts == "goal":
        return f"Find {goal_phrase(chain[k:])}."
    rest = "".join(f", then the {GOAL[hop.relation]}" for hop in chain[k + 1:]) if thoughts == "plan" else ""
    return f"Find the {GOAL[chain[k].relation]} of {chain[k].query}{rest}."


def solver_demos(world: World, tokenizer: Tokenizer, fmt: DemoFormat, retriever: Retriever,
                 questions: Sequence[Question], rng: random.Random, noise: float,
                 flaws: Sequence[str] = SOLVER_FLAWS, thoughts: str = "hop") -> list[Demo]:
    """Search each hop of the gold chain, then answer. A `noise` share is flawed, each with a kind
    drawn from `flaws` (repeat a kind to weight it): search a wrong entity first; answer a
    plausible wrong entity right after the first search (a consistent early-answer habit, which
    1-hop questions cannot show: they answer wrongly instead when `flaws` has "wrong_answer", else
    they stay clean, so an early-answer-only mix leaves 1-hop reading intact); or read the chain
    right but answer wrongly. Each search is preceded by the `find_thought` of style `thoughts`, so an
    early answer under "plan" is one that ignores what its own plan still says to find."""
    unknown = set(flaws) - set(SOLVER_FLAWS)
    if unknown or not flaws:
        raise ValueError(f"solver flaws must be a non-empty selection of {SOLVER_FLAWS}, got {tuple(flaws)}")
    demos = []
    for question, flaw in zip(questions, _flaws(len(questions), noise, flaws, rng)):
        b = TrajectoryBuilder(tokenizer, fmt, retriever)
        chain: Sequence[Hop] = question.chain
        answer = question.golden_answers[0]
        if flaw == "early_answer" and len(chain) == 1:  # nothing to stop early from
            flaw = "wrong_answer" if "wrong_answer" in flaws else None
        if flaw == "wrong_search":
            b.search(find_thought(chain, 0, thoughts), _decoy(world, chain[0].passage_id, rng))
        if flaw in ("early_answer", "wrong_answer"):
            answer = _decoy(world, question.answer_id, rng)
        note = "Wrong entity. " if flaw == "wrong_search" else ""
        for k, hop in enumerate(chain[:1] if flaw == "early_answer" else chain):
            b.search(f"{note}{find_thought(chain, k, thoughts)}", hop.query)
            note = f"The {GOAL[hop.relation]} of {hop.query} is {hop.answer}. "
        text = f"<think>{note.strip()}</think><answer>{answer}</answer>"
        demos.append(Demo(b.prompt(solver_messages(question.question, fmt.templates)), b.finish(text), "solver", flaw))
    return demos


def goal_phrase(chain: Sequence[Hop]) -> str:
    """The chain's end named in the solver's thought words: "the founder of the employer of X"."""
    phrase = chain[0].query
    for hop in chain:
        phrase = f"the {GOAL[hop.relation]} of {phrase}"
    return phrase


def goal_question(world: World, chain: Sequence[Hop], min_words: int = SelfPlayConfig.min_question_words) -> str:
    """The question a proposer demo writes: "What is <goal phrase>?", its start entity described
    when it is too short to pass the proposer's word-count filter. Being built from the same words
    as the thoughts, it can be composed one hop at a time while searching backwards, which a tiny
    policy can learn where free paraphrase is beyond it."""
    text = f"What is {goal_phrase(chain)}?"
    if len(text.split()) >= min_words:
        return text
    start = world.entity(chain[0].passage_id)
    described = DESCRIBE[start.kind].format(s=start.name, **start.attributes)
    return text.replace(start.name, described, 1).replace(",?", "?")


def quote(world: World, hop: Hop) -> str:
    """The sentence of `hop`'s answer passage that names `hop.query` for `hop.relation` (a
    back-reference, or for the symmetric spouse relation the fact), cut right after that name:
    "People born in Esklix include Sulyal, Lodzul". A proposer that copies it before naming the
    next entity picks that entity by copying a span it just read (any cut point in a list is a
    valid pick), where naming it afresh produced invented names and repeated searches. Measured
    (docs/research-log/2026-11-23-microworld_history.md): alone it did not raise the valid rate; with
    `proposer_chains=2` it did."""
    backref = BACKREF_TEMPLATES.get(hop.relation)
    # A back-reference names the answer as {o} and lists hop.query in {list}; a spouse fact names both.
    templates, names = ((backref, {"o": hop.answer}) if backref
                        else (FACT_TEMPLATES[hop.relation], {"s": hop.answer, "o": hop.query}))

    def pattern(template: str) -> re.Pattern[str]:
        parts = re.split(r"(\{\w+\})", template)  # literal text and {placeholders}, alternating
        return re.compile("".join(re.escape(names[p[1:-1]]) if p[1:-1] in names else ".+" if p == "{list}"
                                  else re.escape(p) for p in parts))

    patterns = [pattern(t) for t in templates]
    text = world.passage(hop.answer_id).split("\n", 1)[1]
    name = re.compile(rf"(?<!\w){re.escape(hop.query)}(?!\w)")
    for sentence in re.split(r"(?<=\.) ", text):
        found = name.search(sentence)
        if found and any(pattern.fullmatch(sentence) for pattern in patterns):
            return sentence[:found.end()]
    raise ValueError(f"passage {hop.answer_id} has no {hop.relation} sentence naming {hop.query!r}")


def proposer_demos(world: World, tokenizer: Tokenizer, fmt: DemoFormat, retriever: Retriever,
                   answers: Sequence[Mapping[str, object]], rng: random.Random, noise: float,
                   num_examples: int = NUM_EXAMPLES, thoughts: str = "goal") -> list[Demo]:
    """Search backwards from each answer (the answer, then each bridging entity found in a
    back-reference or fact) for max(n, 2) searches, then ask the forward chain question. Answers
    with no n-hop chain outside dev/test are skipped. A `noise` share writes a question that is
    too short or leaks the answer, which the rule filters reject. With `thoughts="quote"`, each
    step's thought first copies the sentence that names the next entity (`quote`)."""
    if thoughts not in PROPOSER_THOUGHTS:
        raise ValueError(f"proposer thoughts must be one of {PROPOSER_THOUGHTS}, got {thoughts!r}")
    pool = [q.question for q in world.example_questions(3 * max(num_examples, 1))]
    demos = []
    for i, (record, flaw) in enumerate(zip(answers, _flaws(len(answers), noise, PROPOSER_FLAWS, rng))):
        hops = int(record["search_turns"])
        candidates = world.example_questions_to(str(record["entity_id"]), hops)
        if not candidates:
            continue
        question = rng.choice(candidates)
        chain = question.chain
        examples = (record.get("examples") or [pool[(i + j) % len(pool)] for j in range(NUM_EXAMPLES)])[:num_examples]
        b = TrajectoryBuilder(tokenizer, fmt, retriever)
        answer = chain[-1].answer
        b.search(f"Start from {answer}.", answer)
        think = ""
        for k in reversed(range(len(chain))):  # the question grows one hop per search, end first
            hop = chain[k]
            read = f"{quote(world, hop)}. " if thoughts == "quote" else ""
            think = f"{read}The {GOAL[hop.relation]} of {hop.query} is {hop.answer}. Ask for {goal_phrase(chain[k:])}."
            if k > 0 or hops == 1:  # the start entity is read from the last passage, not searched
                b.search(f"{think} Search {hop.query}.", hop.query)
                think = f"Ask for {goal_phrase(chain)}."
        text = goal_question(world, chain, fmt.min_question_words)
        if flaw == "too_short":
            text = min(ASK[question.style][chain[-1].relation], key=lambda t: len(t.split())).format(x=chain[-1].query)
        elif flaw == "leaks_answer":
            text = f"{text[:-1]}, {answer} or another?"
        prompt = proposer_messages(record["ground_truth"], hops, examples, fmt.templates)  # type: ignore[arg-type]
        demos.append(Demo(b.prompt(prompt), b.finish(f"<think>{think}</think><question>{text}</question>"),
                          "proposer", flaw))
    return demos


def reader_demos(world: World, tokenizer: Tokenizer, fmt: DemoFormat, questions: Sequence[Question],
                 rng: random.Random, num_distractors: int = 4) -> list[Demo]:
    """The RAG check's reader: the passages a proposer retrieves for the question among shuffled
    distractors, answered with the bare gold answer. Those are the answer's and those of every hop
    a backwards search visits (`proposer_demos`), so the first hop's fact is read from the second
    hop's back-reference, as it must be in the real check."""
    passages = {p["id"]: Passage(p["id"], p["contents"]) for p in world.passages()}
    demos = []
    for question in questions:
        searched = question.chain[1:] if len(question.chain) > 1 else question.chain
        gold = list(dict.fromkeys([question.answer_id, *(hop.passage_id for hop in searched)]))
        others = [pid for pid in passages if pid not in gold]
        docs = [passages[pid] for pid in gold + rng.sample(others, num_distractors)]
        rng.shuffle(docs)
        b = TrajectoryBuilder(tokenizer, fmt)
        prompt = reader_messages(format_passages([(p.title, p.text) for p in docs]), question.question, fmt.templates)
        demos.append(Demo(b.prompt(prompt), b.finish(question.golden_answers[0]), "reader"))
    return demos


def passage_demos(world: World, tokenizer: Tokenizer, rng: random.Random) -> list[Demo]:
    """Every passage as the policy reads it (`Doc 1 (Title: ...)`), followed by its facts restated
    in the words of a solver's thought ("The birthplace of X is Y."), in random order. All of it is
    trained after the first token (which has no context to be predicted from): the passage teaches
    the world's wordings, and the restatements are dense practice of the one skill search needs,
    finding a fact in retrieved text and copying its entity."""
    demos = []
    for entity, record in zip(world.entities, world.passages()):
        p = Passage(record["id"], record["contents"])
        facts = [f"The {GOAL[r]} of {entity.name} is {world.entity(o).name}." for r, o in world.facts(entity.id)]
        rng.shuffle(facts)
        ids = tokenizer.encode(format_passages([(p.title, p.text)]) + ("\n" + " ".join(facts) if facts else ""))
        demos.append(Demo(ids[:1], [(ids[1:], True)], "passage"))
    return demos


def build_demos(world: World, tokenizer: Tokenizer, fmt: DemoFormat, retriever: Retriever, *, seed: int,
                noise: float = 0.4, solver_noise: float = 0.4, solver_flaws: Sequence[str] = SOLVER_FLAWS,
                solver_thoughts: str = "hop", proposer_thoughts: str = "goal", num_solver: int = 600,
                num_proposer: int = 300, proposer_chains: int = 1, proposer_search_turns: Sequence[int] = (),
                num_reader: int = 300, passage_repeats: int = 1,
                num_examples: int = NUM_EXAMPLES, reader_distractors: int = 4,
                reading_worlds: Sequence[World] = ()) -> list[Demo]:
    """The shuffled warm-start mix of all four kinds; a pure function of `seed` and the worlds.
    Every other solver and reader question is in the proposer's phrasing (`goal_question`), so
    each role can read what the other writes. Each of `num_proposer` answers gets `proposer_chains`
    demos, each building its own randomly drawn chain; with `proposer_search_turns`, only answers of
    those search counts are drawn.

    `reading_worlds` add passage demos from other generated worlds: their facts cannot be
    memorised for the main world, so the only way to predict the restated facts is to read them
    from the passage (a tiny policy otherwise memorises the main world's passages instead)."""
    rng = random.Random(f"warmstart:{seed}")
    questions = [dataclasses.replace(q, question=goal_question(world, q.chain, fmt.min_question_words)) if i % 2 else q
                 for i, q in enumerate(world.example_questions(max(num_solver, num_reader), seed=seed))]
    answers = [a for a in world.answers()
               if (not proposer_search_turns or int(a["search_turns"]) in proposer_search_turns)
               and world.example_questions_to(str(a["entity_id"]), int(a["search_turns"]))]
    if proposer_search_turns and not answers and num_proposer:
        raise ValueError(f"model.warm_start.proposer_search_turns={tuple(proposer_search_turns)} keeps no answer "
                         f"(the world's search_turns are {sorted({int(a['search_turns']) for a in world.answers()})})")
    if num_proposer > len(answers):  # one demo per answer: a larger count would silently change nothing
        logging.warning("warm start: num_proposer=%d, but only %d answers have an example chain (and one of "
                        "proposer_search_turns, if set); using %d (proposer_chains sets demos per answer)",
                        num_proposer, len(answers), len(answers))
    demos = (solver_demos(world, tokenizer, fmt, retriever, questions[:num_solver], rng, solver_noise, solver_flaws,
                           solver_thoughts)
             + proposer_demos(world, tokenizer, fmt, retriever,
                              [a for a in rng.sample(answers, min(num_proposer, len(answers)))
                               for _ in range(proposer_chains)], rng, noise, num_examples, proposer_thoughts)
             + reader_demos(world, tokenizer, fmt, rng.sample(questions, num_reader), rng, reader_distractors)
             + [d for _ in range(passage_repeats) for d in passage_demos(world, tokenizer, rng)]
             + [d for other in reading_worlds for d in passage_demos(other, tokenizer, rng)])
    rng.shuffle(demos)
    return demos
