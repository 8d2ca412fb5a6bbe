"""Generate a built-in world's training inputs into a workdir: corpus, answer list and index.

Two worlds: the micro world (generated, BM25) and the wiki rehearsal's (real Wikipedia lead
paragraphs, MiniLM with exact search, plus ScaNN over the same embeddings). Built once and reused
(the index manifest is written last, so an interrupted build is redone). The micro world's answer
list carries example questions phrased in the style the held-out benchmark does not use: no SSP
step ever sees a held-out question.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np

from ssp_jax.data.wiki_offline import WikiOfflineConfig, answer_records, cloze_questions, sample_articles, write_corpus
from ssp_jax.retrieval.build import build
from ssp_jax.retrieval.index import MANIFEST, MINILM, EncoderSpec, load_retriever
from ssp_jax.worlds.microworld import World, WorldConfig

ANSWERS_FILE, CORPUS_FILE, INDEX_DIR = "answers.jsonl", "corpus.jsonl", "index"


def prepare_microworld(out_dir: str | Path, config: WorldConfig = WorldConfig(), *, num_examples: int = 3,
                       index_kind: str = "bm25") -> tuple[Path, Path]:
    """(answers jsonl, index directory) of the world of `config`, written under `out_dir`."""
    out_dir = Path(out_dir)
    answers, index = out_dir / ANSWERS_FILE, out_dir / INDEX_DIR
    if (index / MANIFEST).is_file() and answers.is_file():
        return answers, index
    world = World(config)
    corpus = world.write_corpus(out_dir / CORPUS_FILE)
    examples = [q.question for q in world.example_questions(max(num_examples, 1) * 3)]
    with answers.open("w", encoding="utf-8") as f:
        for i, record in enumerate(world.answers()):
            picked = [examples[(i + j) % len(examples)] for j in range(num_examples)]
            f.write(json.dumps({**record, "examples": picked}) + "\n")
    build(corpus, index, kind=index_kind, progress=False)
    return answers, index


SCANN_INDEX_DIR, PREP_REPORT = "index_scann", "prep.json"


def prepare_wiki_offline(out_dir: str | Path, config: WikiOfflineConfig = WikiOfflineConfig(),
                         ) -> tuple[Path, Path]:
    """(answers jsonl, index directory) of the wiki rehearsal, written under `out_dir`.

    The corpus is the lead paragraphs cut into Search-R1 passages; both indexes come from the
    project's build command with MiniLM: exact (what the paper searches), then ScaNN from the same
    embeddings (linked, not re-encoded). `prep.json` records the sizes and how often ScaNN's top-3
    equals exact search's on the answers' titles.
    """
    out_dir = Path(out_dir)
    answers, report_file = out_dir / ANSWERS_FILE, out_dir / PREP_REPORT
    indexes = {"exact": out_dir / INDEX_DIR, "scann": out_dir / SCANN_INDEX_DIR}
    wanted = dataclasses.asdict(config)
    if report_file.is_file() and (built := json.loads(report_file.read_text()).get("config")) != wanted:
        raise ValueError(f"{out_dir} holds wiki data built with data.wiki_offline={built}, not {wanted}; "
                         "use another workdir")
    if answers.is_file():
        return answers, indexes[config.index]
    out_dir.mkdir(parents=True, exist_ok=True)
    articles = sample_articles(config)
    questions = cloze_questions(articles)
    records = answer_records(articles, questions, num_examples=config.num_examples, seed=config.seed)
    corpus = write_corpus(articles, out_dir / CORPUS_FILE, config.passage_words)
    encoder = EncoderSpec(MINILM)
    if not (indexes["exact"] / MANIFEST).is_file():
        build(corpus, indexes["exact"], kind="exact", encoder=encoder)
    if not (indexes["scann"] / MANIFEST).is_file():
        build(corpus, indexes["scann"], kind="scann", encoder=encoder, embeddings_from=indexes["exact"])
    report = {"config": wanted, "articles": len(articles), "passages": sum(1 for _ in corpus.open(encoding="utf-8")),
              "answers": len(records), "questions": sum(map(len, questions.values())),
              "search_turns": dict(collections.Counter(str(r["search_turns"]) for r in records)),
              "scann_top3_agreement": _top3_agreement(indexes, [r["ground_truth"] for r in records], config.seed)}
    report_file.write_text(json.dumps(report, indent=1))
    logging.info("wiki rehearsal data: %s", report)
    with answers.open("w", encoding="utf-8") as f:  # last: its presence marks the build complete
        f.writelines(json.dumps(r) + "\n" for r in records)
    return answers, indexes[config.index]


def _top3_agreement(indexes: dict[str, Path], queries: list[str], seed: int, sample: int = 200) -> float:
    """Mean share of exact search's top-3 passages that ScaNN also returns, over sampled queries."""
    picked = [queries[i] for i in np.random.default_rng(seed).permutation(len(queries))[:sample]]
    exact, scann = (load_retriever(indexes[kind]).search(picked, 3) for kind in ("exact", "scann"))
    return float(np.mean([len({p.id for p in a} & {p.id for p in b}) / max(len(a), 1) for a, b in zip(exact, scann)]))
