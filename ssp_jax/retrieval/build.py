"""Build a retrieval index directory (layout in `index.py`):

    python -m ssp_jax.retrieval.build --corpus wiki-18.jsonl --encoder minilm --out /data/wiki-minilm
    python -m ssp_jax.retrieval.build --corpus wiki-18.jsonl --encoder /ckpt/e5-base-v2 \\
        --query-prefix "query: " --passage-prefix "passage: " --index exact --out /data/wiki-e5

Steps: (1) jsonl -> TFDS corpus in `out/corpus` (a TFDS data dir given as --corpus is used in place);
(2) passage embeddings, chunk by chunk, each chunk written atomically; (3) the ScaNN or BM25 index;
(4) the manifest, last. Rerunning the same command resumes: finished chunks are skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ssp_jax.data.wiki_corpus import PART_BYTES
from ssp_jax.models.encoder import TextEncoder
from ssp_jax.retrieval.bm25 import BM25Retriever
from ssp_jax.retrieval.corpus import Corpus
from ssp_jax.retrieval.embeddings import EmbeddingStore
from ssp_jax.retrieval.index import (CORPUS_DIR, EMBEDDINGS_DIR, INDEX_DIR, KINDS, MINILM, EncoderSpec, Manifest,
                                     write_manifest)
from ssp_jax.retrieval.scann_index import ScannConfig, ScannIndex

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


def build(corpus: str | Path, out: str | Path, *, kind: str = "scann", encoder: EncoderSpec | None = None,
          chunk_rows: int = CHUNK_ROWS, max_chunks: int | None = None, batch_size: int = 64,
          scann: ScannConfig = ScannConfig(), part_bytes: int = PART_BYTES, progress: bool = True) -> bool:
    """Run (or resume) every step; True when the index is complete, False if `max_chunks` stopped it."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if (encoder is None) != (kind == "bm25"):
        raise ValueError("bm25 takes no encoder" if kind == "bm25" else f"a {kind} index needs an encoder")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    passages, location = open_corpus(corpus, out, part_bytes=part_bytes)
    if kind == "bm25":
        BM25Retriever.build(passages, chunk_size=chunk_rows, progress=progress).save(out / INDEX_DIR)
    else:
        assert encoder is not None
        model = encoder.load(batch_size=batch_size)
        store = EmbeddingStore(out / EMBEDDINGS_DIR, num_rows=len(passages), dim=model.dim, chunk_size=chunk_rows,
                               fingerprint={"encoder": dataclasses.asdict(encoder),
                                            "corpus_sources": passages.report.sources})
        if not encode_corpus(passages, model, store, max_chunks=max_chunks, progress=progress):
            logging.warning("stopped after %d chunks (--max-chunks); %d of %d chunks left: rerun to resume",
                            max_chunks, len(store.pending()), store.num_chunks)
            return False
        if kind == "scann":
            logging.info("building ScaNN over %d x %d embeddings", store.num_rows, store.dim)
            ScannIndex.build(store.load(), scann).save(out / INDEX_DIR)
    write_manifest(out, Manifest(kind=kind, corpus=location, num_passages=len(passages), encoder=encoder))
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
    p.add_argument("--leaves-to-search", type=int, help="ScaNN leaves searched per query (default 5%%, >= 8)")
    p.add_argument("--reorder", type=int, default=ScannConfig.reorder, help="ScaNN candidates rescored exactly")
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
    elif args.encoder:
        p.error("--index bm25 takes no --encoder")
    scann = ScannConfig(num_leaves=args.num_leaves, leaves_to_search=args.leaves_to_search, reorder=args.reorder)
    build(args.corpus, args.out, kind=args.index, encoder=encoder, chunk_rows=args.chunk_rows,
          max_chunks=args.max_chunks, batch_size=args.batch_size, scann=scann, part_bytes=args.part_bytes,
          progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
