"""The micro world (DESIGN.md, "Embedded default"): a deterministic invented encyclopedia.

From one seed it generates a few hundred entities with invented names, one Search-R1 passage per
entity (facts in several wordings, plus back-references so a proposer can search backwards from
an answer), the proposer's answer list with hop counts, and a held-out QA benchmark of 1-3 hop
questions with gold answers and gold search chains. Every relation maps a subject to exactly one
object, so a question that follows relations forward from a named entity has a unique answer.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from ssp_jax.worlds.microworld_text import (
    ASK,
    ATTRIBUTE_CHOICES,
    BACKREF_TEMPLATES,
    DETAIL_TEMPLATES,
    FACT_TEMPLATES,
    INDUSTRIES,
    INTRO_TEMPLATES,
    PHRASE,
    QUESTION_STYLES,
    join_names,
    make_stems,
)

KINDS = ("country", "city", "person", "company", "university", "river")
# relation -> (subject kind, object kind); each subject has at most one object.
RELATIONS: dict[str, tuple[str, str]] = {
    "born_in": ("person", "city"), "educated_at": ("person", "university"), "spouse": ("person", "person"),
    "works_for": ("person", "company"), "located_in": ("city", "country"), "capital": ("country", "city"),
    "founded_by": ("company", "person"), "headquartered_in": ("company", "city"),
    "campus_in": ("university", "city"), "flows_through": ("river", "city"), "rises_in": ("river", "country"),
    "longest_river": ("country", "river"),
}
_COUNT_FIELDS = {"country": "num_countries", "city": "num_cities", "person": "num_people",
                 "company": "num_companies", "university": "num_universities", "river": "num_rivers"}
# Display names around the invented stem; the bare stem is then an accepted alias.
_NAME_FORMS = {"company": "{stem} {suffix}", "university": "{stem} University", "river": "River {stem}"}
SPLITS = ("dev", "test")
MAX_HOPS = 3


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """Sizes and knobs of a world; the defaults give ~460 entities and generate in well under 2 s."""

    seed: int = 0
    num_countries: int = 12
    num_cities: int = 84
    num_people: int = 240
    num_companies: int = 72
    num_universities: int = 30
    num_rivers: int = 24
    married_fraction: float = 0.5
    alumni_fraction: float = 0.75
    employed_fraction: float = 0.6  # of the people who founded no company
    templates_per_fact: int = 4  # passage wordings in use per relation (1 makes reading trivial)
    details_per_passage: int = 6  # attribute sentences (distractor facts) per passage; fewer = shorter passages
    num_test_questions: int = 360
    num_dev_questions: int = 240
    heldout_style: str = "direct"  # question wording of dev/test; example questions use the other style

    def __post_init__(self) -> None:
        if min(self.count(kind) for kind in KINDS) < 1:
            raise ValueError("every entity kind needs at least one entity")
        if self.num_cities < self.num_countries or self.num_companies > self.num_people:
            raise ValueError("need num_cities >= num_countries and num_companies <= num_people")
        if not 1 <= self.templates_per_fact <= min(len(t) for t in FACT_TEMPLATES.values()):
            raise ValueError(f"templates_per_fact must be in 1..{min(len(t) for t in FACT_TEMPLATES.values())}")
        if self.details_per_passage < 0:
            raise ValueError(f"details_per_passage must be >= 0, got {self.details_per_passage}")
        if self.heldout_style not in QUESTION_STYLES:
            raise ValueError(f"heldout_style must be one of {QUESTION_STYLES}, got {self.heldout_style!r}")
        for name in ("married_fraction", "alumni_fraction", "employed_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")

    def count(self, kind: str) -> int:
        return getattr(self, _COUNT_FIELDS[kind])


@dataclasses.dataclass(frozen=True)
class Entity:
    """One thing in the world; its passage is titled `name`."""

    id: str  # also its passage id
    kind: str
    name: str
    syllables: tuple[str, ...]  # the invented word inside `name`, syllable by syllable
    aliases: tuple[str, ...] = ()  # other strings that count as a correct answer
    attributes: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def golds(self) -> list[str]:
        return [self.name, *self.aliases]

    @property
    def ground_truth(self) -> str | list[str]:
        """The answer-list form: a string, or the list of acceptable strings when there is an alias."""
        return self.golds if self.aliases else self.name


@dataclasses.dataclass(frozen=True)
class Hop:
    """One search of a perfect solver: search `query`, read `relation` in passage `passage_id`."""

    query: str
    passage_id: str
    relation: str
    answer: str  # the entity the fact leads to
    answer_id: str


@dataclasses.dataclass(frozen=True)
class Question:
    """A QA item with its gold chain: `chain[i]` is the i-th search a perfect solver makes."""

    id: str
    question: str
    golden_answers: tuple[str, ...]  # the answer's name, then its alias if it has one
    hops: int
    chain: tuple[Hop, ...]
    style: str

    @property
    def answer_id(self) -> str:
        return self.chain[-1].answer_id


Chain = tuple[tuple[str, ...], tuple[str, ...]]  # (entity ids, relations), len(ids) = len(relations) + 1


def _spread(rng: random.Random, subjects: Sequence[str], objects: Sequence[str]) -> dict[str, str]:
    """Give every subject one object, object loads differing by at most one, so back-reference
    lists stay short and complete."""
    subjects, objects = list(subjects), list(objects)
    rng.shuffle(subjects)
    rng.shuffle(objects)
    return dict(sorted((s, objects[i % len(objects)]) for i, s in enumerate(subjects)))


def _invert(relation: Mapping[str, str]) -> dict[str, list[str]]:
    inverse: dict[str, list[str]] = defaultdict(list)
    for subject, obj in sorted(relation.items()):
        inverse[obj].append(subject)
    return inverse


def _normalize(text: str) -> str:
    return " ".join("".join(ch for ch in text.lower() if ch.isalnum() or ch.isspace()).split())


class World:
    """A generated world; everything is a pure function of `config` (including its seed)."""

    def __init__(self, config: WorldConfig = WorldConfig()) -> None:
        self.config = config
        rng = random.Random(f"microworld:{config.seed}")
        kinds = [kind for kind in KINDS for _ in range(config.count(kind))]
        stems = make_stems(rng, len(kinds))
        ids: dict[str, list[str]] = {kind: [f"{kind}-{i:03d}" for i in range(config.count(kind))] for kind in KINDS}
        lengths = dict(zip(ids["river"], rng.sample(range(80, 3000, 10), len(ids["river"]))))
        self.relations = self._relations(rng, ids, lengths)
        self._incoming = {r: _invert(self.relations[r]) for r in BACKREF_TEMPLATES}
        industries = {c: rng.choice(INDUSTRIES) for c in ids["company"]}
        attributes = self._attributes(rng, ids, industries, lengths)
        entities = []
        for kind, entity_id, syllables in zip(kinds, (i for k in KINDS for i in ids[k]), stems):
            stem = "".join(syllables).capitalize()
            suffix = industries[entity_id][1] if kind == "company" else ""
            name = _NAME_FORMS.get(kind, "{stem}").format(stem=stem, suffix=suffix)
            entities.append(Entity(entity_id, kind, name, syllables, (stem,) if name != stem else (),
                                   attributes[entity_id]))
        self.entities: tuple[Entity, ...] = tuple(entities)
        self._by_id = {e.id: e for e in entities}
        golds = [_normalize(g) for e in entities for g in e.golds]
        if len(set(golds)) != len(golds):
            raise AssertionError("entity names and aliases must be unique")
        self._passages = [self._passage(e) for e in entities]
        self._contents = {p["id"]: p["contents"] for p in self._passages}
        self._chains: dict[int, list[Chain]] = {hops: [] for hops in range(1, MAX_HOPS + 1)}
        for entity in entities:
            for chain in self._walk(entity.id):
                self._chains[len(chain[1])].append(chain)
        self._heldout, self._unused = self._select_heldout()

    # --- generation -------------------------------------------------------------------------

    def _relations(self, rng: random.Random, ids: Mapping[str, list[str]],
                   river_lengths: Mapping[str, int]) -> dict[str, dict[str, str]]:
        c = self.config
        people, companies = ids["person"], ids["company"]
        rel: dict[str, dict[str, str]] = {"located_in": _spread(rng, ids["city"], ids["country"])}
        cities_of = _invert(rel["located_in"])
        rel["capital"] = {country: rng.choice(cities_of[country]) for country in ids["country"]}
        rel["born_in"] = _spread(rng, people, ids["city"])
        married = rng.sample(people, 2 * int(c.married_fraction * len(people) / 2))
        rel["spouse"] = dict(sorted(pair for a, b in zip(married[::2], married[1::2]) for pair in ((a, b), (b, a))))
        rel["educated_at"] = _spread(rng, rng.sample(people, round(c.alumni_fraction * len(people))),
                                     ids["university"])
        rel["founded_by"] = dict(zip(companies, rng.sample(people, len(companies))))
        rel["headquartered_in"] = _spread(rng, companies, ids["city"])
        staff = sorted(set(people) - set(rel["founded_by"].values()))
        rel["works_for"] = _spread(rng, rng.sample(staff, round(c.employed_fraction * len(staff))), companies)
        rel["campus_in"] = _spread(rng, ids["university"], ids["city"])
        rel["flows_through"] = _spread(rng, ids["river"], ids["city"])
        rel["rises_in"] = _spread(rng, ids["river"], ids["country"])
        rel["longest_river"] = {country: max(rivers, key=river_lengths.__getitem__)
                                for country, rivers in sorted(_invert(rel["rises_in"]).items())}
        return rel

    def _attributes(self, rng: random.Random, ids: Mapping[str, list[str]],
                    industries: Mapping[str, tuple[str, str, str]],
                    river_lengths: Mapping[str, int]) -> dict[str, dict[str, str]]:
        """Attribute strings per entity, filled into the intro and detail templates."""

        def pick(*fields: str) -> dict[str, str]:
            return {f: rng.choice(ATTRIBUTE_CHOICES[f]) for f in fields}

        def amount(low: int, high: int, step: int) -> str:
            return f"{rng.randrange(low, high, step):,}"

        attrs: dict[str, dict[str, str]] = {}
        for p in ids["person"]:
            attrs[p] = {"birth_year": str(rng.randint(1900, 1985)), "languages": str(rng.randint(2, 6)),
                        "abroad": str(rng.randint(2, 12)),
                        **pick("occupation", "known_for", "hobby", "children", "award")}
            attrs[p]["award_year"] = str(int(attrs[p]["birth_year"]) + rng.randint(25, 60))
        for city in ids["city"]:
            attrs[city] = {"founded": str(rng.randint(800, 1850)), "population": amount(20_000, 2_000_000, 1000),
                           **pick("feature", "economy", "climate", "square")}
        for country in ids["country"]:
            attrs[country] = {"population": str(rng.randint(2, 90)), "area": amount(10_000, 900_000, 1000),
                              **pick("feature", "government", "currency", "sport")}
        for company in ids["company"]:
            founder_born = int(attrs[self.relations["founded_by"][company]]["birth_year"])
            industry, _, product = industries[company]
            attrs[company] = {"founded": str(founder_born + rng.randint(22, 45)), "industry": industry,
                              "product": product, "staff": amount(50, 20_000, 10), "revenue": amount(5, 900, 5),
                              **pick("customers", "logo")}
        for university in ids["university"]:
            attrs[university] = {"founded": str(rng.randint(1500, 1960)), "students": amount(2000, 40_000, 100),
                                 "books": amount(50_000, 3_000_000, 1000), **pick("subject", "colours", "team")}
        for river in ids["river"]:
            attrs[river] = {"length": f"{river_lengths[river]:,}", "tributaries": str(rng.randint(3, 40)),
                            "bridges": str(rng.randint(2, 30)),
                            **pick("cargo", "visitors", "fish", "frozen")}
        return attrs

    def _passage(self, entity: Entity) -> dict[str, str]:
        """Intro sentence first, then facts, details and back-references in a per-entity order."""
        rng = random.Random(f"microworld:{self.config.seed}:{entity.id}")
        s, k = entity.name, self.config.templates_per_fact
        body = [rng.choice(FACT_TEMPLATES[r][:k]).format(s=s, o=self._by_id[obj].name)
                for r, obj in self.facts(entity.id)]
        details = [rng.choice(group).format(s=s, **entity.attributes) for group in DETAIL_TEMPLATES[entity.kind]]
        body += rng.sample(details, min(len(details), self.config.details_per_passage))
        for relation, subjects in self.back_references(entity.id):
            names = join_names([self._by_id[i].name for i in subjects])
            body.append(rng.choice(BACKREF_TEMPLATES[relation]).format(o=s, list=names))
        rng.shuffle(body)
        intro = rng.choice(INTRO_TEMPLATES[entity.kind]).format(s=s, **entity.attributes)
        return {"id": entity.id, "contents": f'"{s}"\n' + " ".join([intro, *body])}

    def _walk(self, start: str) -> Iterator[Chain]:
        """Every forward chain of 1..MAX_HOPS relations from `start` that visits no entity twice."""
        frontier: list[Chain] = [((start,), ())]
        for _ in range(MAX_HOPS):
            frontier = [(nodes + (obj,), rels + (r,)) for nodes, rels in frontier for r, obj in self.facts(nodes[-1])
                        if obj not in nodes]
            yield from frontier

    def _select_heldout(self) -> tuple[dict[str, list[Question]], dict[int, list[Chain]]]:
        """Dev and test take disjoint chains, round-robin over relation paths so every path is
        covered; the chains left over feed `example_questions`."""
        rng = random.Random(f"microworld:{self.config.seed}:questions")
        heldout: dict[str, list[Question]] = {split: [] for split in SPLITS}
        unused: dict[int, list[Chain]] = {}
        for hops, chains in self._chains.items():
            by_path: dict[tuple[str, ...], list[Chain]] = defaultdict(list)
            for chain in chains:
                by_path[chain[1]].append(chain)
            groups = [by_path[path] for path in sorted(by_path)]
            rng.shuffle(groups)
            for group in groups:
                rng.shuffle(group)
            ordered = [g[i] for i in range(max(map(len, groups))) for g in groups if i < len(g)]
            start = 0
            for split in SPLITS:
                total = getattr(self.config, f"num_{split}_questions")
                n = total // MAX_HOPS + (hops <= total % MAX_HOPS)
                if start + n > len(ordered):
                    raise ValueError(f"the world has only {len(ordered)} {hops}-hop chains; make it larger")
                first = len(heldout[split])
                heldout[split] += [self._question(c, self.config.heldout_style, f"{split}-{first + i:04d}")
                                   for i, c in enumerate(ordered[start:start + n])]
                start += n
            unused[hops] = ordered[start:]
        return heldout, unused

    def _question(self, chain: Chain, style: str, question_id: str) -> Question:
        nodes, rels = chain
        rng = random.Random(f"microworld:{self.config.seed}:{style}:{'/'.join(nodes)}")
        phrase = self._by_id[nodes[0]].name
        for relation in rels[:-1]:
            phrase = rng.choice(PHRASE[style][relation]).format(x=phrase)
        text = rng.choice(ASK[style][rels[-1]]).format(x=phrase)
        hops = tuple(Hop(self._by_id[a].name, a, r, self._by_id[b].name, b) for a, r, b in zip(nodes, rels, nodes[1:]))
        question = Question(question_id, text, tuple(self._by_id[nodes[-1]].golds), len(rels), hops, style)
        self._check(question)
        return question

    def _check(self, question: Question) -> None:
        """The chain must hold in the world, start from the entity the question names, and not
        give its answer away."""
        subject = question.chain[0].passage_id
        if self._by_id[subject].name not in question.question:
            raise AssertionError(f"{question.id}: the question does not name its start entity")
        for hop in question.chain:
            if hop.passage_id != subject or self.relations[hop.relation].get(subject) != hop.answer_id:
                raise AssertionError(f"{question.id}: the chain does not follow the world's relations")
            subject = hop.answer_id
        if any(_normalize(g) in _normalize(question.question) for g in question.golden_answers):
            raise AssertionError(f"{question.id}: the question contains its answer")

    # --- public API -------------------------------------------------------------------------

    def entity(self, entity_id: str) -> Entity:
        return self._by_id[entity_id]

    def facts(self, entity_id: str) -> list[tuple[str, str]]:
        """(relation, object id) for every relation `entity_id` is the subject of."""
        return [(r, self.relations[r][entity_id]) for r in RELATIONS if entity_id in self.relations[r]]

    def back_references(self, entity_id: str) -> list[tuple[str, list[str]]]:
        """(relation, subject ids) for every relation pointing at `entity_id` that its passage lists."""
        return [(r, inverse[entity_id]) for r, inverse in self._incoming.items() if entity_id in inverse]

    def passage(self, entity_id: str) -> str:
        """The contents of `entity_id`'s passage ('"Title"\\ntext')."""
        return self._contents[entity_id]

    def passages(self) -> list[dict[str, str]]:
        """One Search-R1 corpus record per entity: {"id", "contents": '"Title"\\ntext'}."""
        return [dict(p) for p in self._passages]

    def write_corpus(self, path: str | Path) -> Path:
        """The passages as a Search-R1 jsonl file (the input of `Corpus.prepare` and the index build)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(p) + "\n" for p in self._passages), encoding="utf-8")
        return path

    def answers(self) -> list[dict[str, object]]:
        """The proposer's answer list: one record per (entity, hop count) such that some chain of
        that many searches ends at the entity; {"ground_truth", "search_turns", "entity_id"}."""
        hops_to: dict[str, set[int]] = defaultdict(set)
        for hops, chains in self._chains.items():
            for nodes, _ in chains:
                hops_to[nodes[-1]].add(hops)
        return [{"ground_truth": e.ground_truth, "search_turns": hops, "entity_id": e.id}
                for e in self.entities for hops in sorted(hops_to[e.id])]

    def heldout_questions(self, split: str) -> list[Question]:
        """The held-out benchmark ("dev" for tuning, "test" for reporting), for eval only."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return list(self._heldout[split])

    def example_questions(self, count: int, seed: int = 0) -> list[Question]:
        """Questions for prompts and demonstrations: chains outside dev/test, phrased in the
        style the held-out questions do not use; hop counts cycle 1, 2, 3."""
        style = next(s for s in QUESTION_STYLES if s != self.config.heldout_style)
        rng = random.Random(f"microworld:{self.config.seed}:examples:{seed}")
        picks = {hops: rng.sample(chains, min(len(chains), count)) for hops, chains in self._unused.items()}
        chains = [picks[hops][i] for i in range(count) for hops in picks if i < len(picks[hops])][:count]
        return [self._question(c, style, f"example-{i:04d}") for i, c in enumerate(chains)]

    def example_questions_to(self, entity_id: str, hops: int) -> list[Question]:
        """Example-style questions of `hops` hops answered by `entity_id`, from the chains outside
        dev/test only, so warm-start proposer demos can build backwards from an answer without
        ever touching the benchmark."""
        style = next(s for s in QUESTION_STYLES if s != self.config.heldout_style)
        chains = [c for c in self._unused.get(hops, []) if c[0][-1] == entity_id]
        return [self._question(c, style, f"example-{entity_id}-{hops}-{i}") for i, c in enumerate(chains)]
