"""Dense index throughput: ScaNN (tree + AH + reorder) at recall@10 >= 0.95 vs exact search.

Why: the 21M-passage Wikipedia index is searched on every `</search>` of every rollout, so ScaNN
must beat exact search by a wide margin at a recall that does not change what the policy reads.
Data: unit vectors around random cluster centres (corpus-like), queries from the same centres.
Ground truth is `ExactIndex` (JAX matmul + top-k). ScaNN is built once with the defaults sized from
n; `leaves_to_search` then doubles from 1 until recall@10 >= the target, and that setting is the
headline. Query rates are medians over `--repeats` timed
batches after one warm-up; the ratio comes from the same run.

JAX runs on one CPU device (XLA's thread pool uses every core), as ScaNN does.

Usage (from the repo root):
    python -m benchmarks.index_throughput [--num 200000] [--dim 384] [--clusters 100] [--batch 256]
        [--repeats 5] [--target 0.95]
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from ssp_jax.retrieval.exact import ExactIndex  # noqa: E402
from ssp_jax.retrieval.scann_index import ScannIndex  # noqa: E402

Search = Callable[[], tuple[np.ndarray, np.ndarray]]


def clustered(num: int, num_queries: int, dim: int, clusters: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)  # [c, d]
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def sample(n: int) -> np.ndarray:
        x = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
        return x / np.linalg.norm(x, axis=1, keepdims=True)  # [n, d]

    return sample(num), sample(num_queries)


def timed(search: Search, repeats: int) -> tuple[float, np.ndarray]:
    """(median seconds per batch, row ids [q, k]) after one warm-up call."""
    _, ids = search()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        search()
        times.append(time.perf_counter() - start)
    return statistics.median(times), ids


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--clusters", type=int, default=100)
    p.add_argument("--batch", type=int, default=256, help="queries per search call")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--target", type=float, default=0.95, help="recall@k ScaNN must reach")
    args = p.parse_args()

    vectors, queries = clustered(args.num, args.batch, args.dim, args.clusters)
    start = time.perf_counter()
    exact = ExactIndex(vectors)
    exact_build = time.perf_counter() - start
    exact_time, truth = timed(lambda: exact.search(queries, args.k), args.repeats)

    start = time.perf_counter()
    scann = ScannIndex.build(vectors)
    scann_build = time.perf_counter() - start
    config, leaves = scann.config, 1
    rows = []  # (leaves searched, recall, seconds per batch), doubling the leaves until the target
    while True:
        seconds, ids = timed(lambda n=leaves: scann.search(queries, args.k, leaves_to_search=n), args.repeats)
        rows.append((leaves, recall(ids, truth), seconds))
        if rows[-1][1] >= args.target or leaves >= config.num_leaves:
            break
        leaves = min(config.num_leaves, leaves * 2)
    best = rows[-1] if rows[-1][1] >= args.target else None

    def qps(seconds: float) -> float:
        return args.batch / seconds

    print(f"n={args.num} dim={args.dim} clusters={args.clusters} batch={args.batch} k={args.k}; "
          f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f}; jax {jax.__version__} "
          f"on {jax.devices()[0].platform}; ScaNN tree {config.num_leaves} leaves (default search "
          f"{config.leaves_to_search}), AH {config.dims_per_block} dims/block, reorder {config.reorder}\n")
    print("| index | build (s) | leaves searched | recall@10 | queries/s | speed-up vs exact |")
    print("|---|---|---|---|---|---|")
    print(f"| exact (JAX matmul + top_k) | {exact_build:.2f} | all | 1.000 | {qps(exact_time):,.0f} | 1.0x |")
    for leaves, rec, seconds in rows:
        print(f"| ScaNN | {scann_build:.1f} | {leaves} / {config.num_leaves} | {rec:.3f} | {qps(seconds):,.0f} "
              f"| {exact_time / seconds:.1f}x |")
    if best is None:
        print(f"\nScaNN did not reach recall@{args.k} >= {args.target}")
        return 1
    print(f"\nScaNN at recall@{args.k} = {best[1]:.3f} (>= {args.target}): {qps(best[2]):,.0f} queries/s vs exact "
          f"{qps(exact_time):,.0f} queries/s = {exact_time / best[2]:.1f}x; ScaNN build {scann_build:.1f} s")
    print(f"\ncommand: python -m benchmarks.index_throughput {shlex.join(sys.argv[1:])}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
