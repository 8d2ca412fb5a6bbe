"""Build a retrieval index directory (layout in `index.py`):

    python -m ssp_jax.retrieval.build --corpus wiki-18.jsonl --encoder minilm --out /data/wiki-minilm
    python -m ssp_jax.retrieval.build --corpus wiki-18.jsonl --encoder /ckpt/e5-base-v2 \\
        --query-prefix "query: " --passage-prefix "passage: " --index exact --out /data/wiki-e5

    python -m ssp_jax.retrieval.build --corpus wiki-18.jsonl --encoder minilm --index scann \
        --embeddings-from /data/wiki-e5 --out /data/wiki-e5-scann   # no second encoding pass

Steps: (1) jsonl -> TFDS corpus in `out/corpus` (a TFDS data dir given as --corpus is used in place);
(2) passage embeddings, chunk by chunk, each chunk written atomically, or linked from another index
of the same encoder and corpus (--embeddings-from); (3) the ScaNN or BM25 index, ScaNN's search width
calibrated on held-out queries (calibrate.py); (4) the manifest, last, with the passages longer than
the encoder's max length (embedded from their start) and ScaNN's recall. Rerunning the same command
resumes: finished chunks are skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ssp_jax.models.encoder import TextEncoder
from ssp_jax.retrieval.bm25 import BM25Retriever
from ssp_jax.retrieval.calibrate import RecallCheck, calibrate_width
from ssp_jax.retrieval.corpus import Corpus
from ssp_jax.retrieval.embeddings import EmbeddingStore
from ssp_jax.retrieval.index import (
    CORPUS_DIR,
    EMBEDDINGS_DIR,
    INDEX_DIR,
    KINDS,
    MINILM,
    EncoderSpec,
    Manifest,
    write_manifest,
)
from ssp_jax.retrieval.scann_index import ScannConfig, ScannIndex
from ssp_jax.retrieval.wiki_corpus import PART_BYTES

CHUNK_ROWS = 65536


def open_corpus(source: str | Path, out: Path, *, part_bytes: int = PART_BYTES) -> tuple[Corpus, str]:
    """(corpus, its location for the manifest): a jsonl file is converted into `out/corpus`."""
    source = Path(source)
    if source.is_file():
        return Corpus.prepare(source, out / CORPUS_DIR, part_bytes=part_bytes), CORPUS_DIR
    if source.is_dir():
        return Corpus.load(source), str(source.resolve())
    raise FileNotFoundError(f"--corpus {source}: neither a jsonl file nor a TFDS data directory")


def encode_corpus(corpus: Corpus, encoder: TextEncoder, store: EmbeddingStore, *,
                  max_chunks: int | None = None, progress: bool = True) -> bool:
    """Embed the chunks not on disk yet (at most `max_chunks` of them); True once all are done."""
    pending = store.pending()
    todo = pending if max_chunks is None else pending[:max_chunks]
    done_rows = store.num_rows - sum(len(store.rows(c)) for c in pending)
    with tqdm(total=store.num_rows, initial=done_rows, desc="encode", unit="passage", disable=not progress) as bar:
        for chunk in todo:
            rows = store.rows(chunk)
            passages = corpus.get_batch(np.arange(rows.start, rows.stop))
            store.write(chunk, encoder.encode_passages([p.contents for p in passages]))  # [rows, dim]
            bar.update(len(rows))
    return len(todo) == len(pending)


def link_embeddings(source: str | Path, directory: Path, *, num_rows: int, dim: int,
                    fingerprint: dict[str, Any]) -> EmbeddingStore:
    """An embedding store in `directory` holding another index's finished chunks, hard-linked (copied
    across file systems): a second index kind of the same encoder and corpus skips encoding. The
    source must match this build's encoder, corpus and size; it keeps its own chunking."""
    source = Path(source)
    found_dir = source / EMBEDDINGS_DIR if (source / EMBEDDINGS_DIR).is_dir() else source
    try:
        found = EmbeddingStore.open(found_dir)
    except FileNotFoundError:
        raise FileNotFoundError(f"--embeddings-from {source}: no embeddings there (expected an index directory "
                                f"holding {EMBEDDINGS_DIR}/meta.json)") from None
    wanted = {"num_rows": num_rows, "dim": dim, "fingerprint": json.loads(json.dumps(fingerprint))}
    have = {"num_rows": found.num_rows, "dim": found.dim, "fingerprint": found.fingerprint}
    if have != wanted:
        raise ValueError(f"--embeddings-from {source}: its embeddings were made with {have}, this build needs "
                         f"{wanted}")
    store = EmbeddingStore(directory, num_rows=num_rows, dim=dim, chunk_size=found.chunk_size,
                           fingerprint=fingerprint)
    linked = 0
    for chunk in store.pending():
        if found.path(chunk).exists():
            try:
                os.link(found.path(chunk), store.path(chunk))
            except OSError:
                shutil.copyfile(found.path(chunk), store.path(chunk))
            linked += 1
    logging.info("%d of %d embedding chunks taken from %s", linked, store.num_chunks, found_dir)
    return store


def count_truncated(corpus: Corpus, encoder: TextEncoder, chunk_rows: int) -> int:
    """Passages longer than the encoder's max length (in tokens, prefix and specials included)."""
    count = 0
    for start in range(0, len(corpus), chunk_rows):
        passages = corpus.get_batch(np.arange(start, min(start + chunk_rows, len(corpus))))
        count += encoder.count_truncated([p.contents for p in passages], encoder.passage_prefix)
    return count


def build(corpus: str | Path, out: str | Path, *, kind: str = "scann", encoder: EncoderSpec | None = None,
          chunk_rows: int = CHUNK_ROWS, max_chunks: int | None = None, batch_size: int = 64,
          scann: ScannConfig = ScannConfig(), recall: RecallCheck = RecallCheck(),
          embeddings_from: str | Path | None = None, part_bytes: int = PART_BYTES, progress: bool = True) -> bool:
    """Run (or resume) every step; True when the index is complete, False if `max_chunks` stopped it."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if (encoder is None) != (kind == "bm25"):
        raise ValueError("bm25 takes no encoder" if kind == "bm25" else f"a {kind} index needs an encoder")
    if embeddings_from is not None and kind == "bm25":
        raise ValueError("bm25 takes no embeddings (--embeddings-from)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    passages, location = open_corpus(corpus, out, part_bytes=part_bytes)
    manifest = Manifest(kind=kind, corpus=location, num_passages=len(passages), encoder=encoder)
    if kind == "bm25":
        BM25Retriever.build(passages, chunk_size=chunk_rows, progress=progress).save(out / INDEX_DIR)
    else:
        assert encoder is not None
        model = encoder.load(batch_size=batch_size)
        fingerprint = {"encoder": dataclasses.asdict(encoder), "corpus_sources": passages.report.sources}
        if embeddings_from is None:
            store = EmbeddingStore(out / EMBEDDINGS_DIR, num_rows=len(passages), dim=model.dim,
                                   chunk_size=chunk_rows, fingerprint=fingerprint)
        else:
            store = link_embeddings(embeddings_from, out / EMBEDDINGS_DIR, num_rows=len(passages), dim=model.dim,
                                    fingerprint=fingerprint)
        if not encode_corpus(passages, model, store, max_chunks=max_chunks, progress=progress):
            logging.warning("stopped after %d chunks (--max-chunks); %d of %d chunks left: rerun to resume",
                            max_chunks, len(store.pending()), store.num_chunks)
            return False
        truncated = count_truncated(passages, model, store.chunk_size)
        (logging.warning if truncated else logging.info)(
            "%d of %d passages (%.2f%%) are longer than the encoder's %d tokens and were embedded from their start",
            truncated, len(passages), 100 * truncated / len(passages), encoder.max_length)
        manifest = dataclasses.replace(manifest, truncated_passages=truncated)
        if kind == "scann":
            logging.info("building ScaNN over %d x %d embeddings", store.num_rows, store.dim)
            vectors = store.load()  # [n, d]
            index = ScannIndex.build(vectors, scann)
            if recall.sample:
                report = calibrate_width(index, vectors, model, passages, recall, tune=scann.leaves_to_search is None)
                index.set_leaves_to_search(report.leaves_to_search)
                (logging.info if report.met else logging.warning)(
                    "ScaNN %s%s", report.summary(), "" if report.met else ": outside the tolerance even so")
                manifest = dataclasses.replace(manifest, scann_recall=dataclasses.asdict(report))
            index.save(out / INDEX_DIR)
    write_manifest(out, manifest)
    logging.info("index ready: python -m ssp_jax.retrieval.service --index %s", out)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ssp_jax.retrieval.build", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, help="Search-R1 jsonl file, or a TFDS data dir holding search_r1_corpus/")
    p.add_argument("--out", required=True, help="index directory (created; rerun to resume)")
    p.add_argument("--index", default="scann", choices=KINDS)
    p.add_argument("--encoder", help=f"HF BERT-family directory, or {MINILM!r} (dense kinds only)")
    p.add_argument("--query-prefix", default="", help='E5: "query: "')
    p.add_argument("--passage-prefix", default="", help='E5: "passage: "')
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--chunk-rows", type=int, default=CHUNK_ROWS, help="passages per embedding chunk file")
    p.add_argument("--max-chunks", type=int, help="encode at most this many chunks in this run, then stop")
    p.add_argument("--part-bytes", type=int, default=PART_BYTES, help="jsonl bytes per TFDS split")
    p.add_argument("--num-leaves", type=int, help="ScaNN tree leaves (default ~sqrt(n))")
    p.add_argument("--leaves-to-search", type=int,
                   help="ScaNN leaves searched per query (default: the fewest that pass the recall check)")
    p.add_argument("--reorder", type=int, default=ScannConfig.reorder, help="ScaNN candidates rescored exactly")
    p.add_argument("--recall-sample", type=int, default=RecallCheck.sample,
                   help="held-out queries that calibrate ScaNN's search width (0: keep the size-based default)")
    p.add_argument("--recall-tolerance", type=float, default=RecallCheck.tolerance,
                   help="how far ScaNN's recall@10 may stay below exact search's on unseen queries (0.01 = 1 point; "
                        "the held-out gap plus two standard errors must fit)")
    p.add_argument("--embeddings-from", help="an index directory of the same encoder and corpus: link its "
                                             "embeddings instead of encoding again")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    encoder = None
    if args.index != "bm25":
        if not args.encoder:
            p.error(f"--index {args.index} needs --encoder")
        encoder = EncoderSpec(path=args.encoder, query_prefix=args.query_prefix, passage_prefix=args.passage_prefix,
                              max_length=args.max_length, dtype=args.dtype)
        if "e5" in Path(args.encoder).name.lower() and not args.query_prefix:
            logging.warning("%s looks like E5, which expects --query-prefix 'query: ' --passage-prefix 'passage: '",
                            args.encoder)
    elif args.encoder or args.embeddings_from:
        p.error("--index bm25 takes no --encoder or --embeddings-from")
    scann = ScannConfig(num_leaves=args.num_leaves, leaves_to_search=args.leaves_to_search, reorder=args.reorder)
    build(args.corpus, args.out, kind=args.index, encoder=encoder, chunk_rows=args.chunk_rows,
          max_chunks=args.max_chunks, batch_size=args.batch_size, scann=scann,
          recall=RecallCheck(sample=args.recall_sample, tolerance=args.recall_tolerance),
          embeddings_from=args.embeddings_from, part_bytes=args.part_bytes, progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
