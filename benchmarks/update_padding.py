"""What padding every row to the longest costs the RL passes, and what per-micro-batch length buckets
save (issue 22, item 3), side by side in one run.

Why: a batch used to pad every row to the bucket of its longest trajectory, so one long solver
rollout made the whole log-prob and update passes run at its length. Now each mini-batch's rows are
sorted by length into micro-batches that pad to their own bucket. This times `Learner.logprobs` and
`Learner.update` both ways on one batch whose lengths are drawn like SSP's (most rows near the mean,
a few near the cap), interleaved, and checks both give the same parameters.

Usage: python -m benchmarks.update_padding [--rows 32] [--max-len 2048] [--micro 4] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.forward_throughput import timed  # noqa: E402
from ssp_jax.models.decoder import Decoder, DecoderConfig  # noqa: E402
from ssp_jax.rl.batch import pack_batch  # noqa: E402
from ssp_jax.rl.config import RLConfig  # noqa: E402
from ssp_jax.rl.update import Learner  # noqa: E402

CFG = DecoderConfig(vocab_size=4096, hidden_size=256, intermediate_size=768, num_layers=4, num_heads=8,
                    num_kv_heads=2, head_dim=32)


def lengths(rows: int, max_len: int, rng: np.random.Generator) -> np.ndarray:
    """About a third of the cap on average, one row at the cap (the trajectory that sets the padding)."""
    out = np.clip(rng.gamma(4.0, max_len / 12, rows), 16, max_len).astype(int)
    out[0] = max_len
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--max-len", type=int, default=2048)
    parser.add_argument("--micro", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    sizes = lengths(args.rows, args.max_len, rng)
    seqs = [rng.integers(1, CFG.vocab_size, n).tolist() for n in sizes]
    masks = [[0] * 8 + [1] * (n - 8) for n in sizes]
    batch = pack_batch(seqs, masks, None, rng.normal(size=args.rows), (args.max_len,))
    step = args.max_len // 8
    ways = {"padded": (args.max_len,), "bucketed": tuple(range(step, args.max_len + 1, step))}
    learners = {name: Learner(Decoder(CFG, rngs=nnx.Rngs(0)),
                              RLConfig(micro_batch_size=args.micro, length_buckets=buckets, lr=1e-4))
                for name, buckets in ways.items()}
    logp = learners["padded"].logprobs(learners["padded"].params, batch)
    batch = dataclasses.replace(batch, old_logprobs=logp, ref_logprobs=logp)
    times: dict[str, dict[str, list[float]]] = {name: {"logprobs": [], "update": []} for name in ways}
    pad = {}
    for repeat in range(args.repeats + 1):  # the first round compiles
        for name, learner in learners.items():
            t_logp, _ = timed(lambda: learner.logprobs(learner.params, batch))  # noqa: B023
            t_update, metrics = timed(lambda: learner.update(batch, mini_batches=2))  # noqa: B023
            pad[name] = metrics["pad_frac"]
            if repeat:
                times[name]["logprobs"].append(t_logp)
                times[name]["update"].append(t_update)
    same = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
               zip(jax.tree.leaves(learners["padded"].params), jax.tree.leaves(learners["bucketed"].params)))
    median = {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}
    print(f"{args.rows} rows, lengths mean {sizes.mean():.0f} / max {sizes.max()}, micro-batches of {args.micro}, "
          f"2 mini-batches, {CFG.num_layers}-layer decoder (hidden {CFG.hidden_size}), one CPU device")
    print("| batch padding | padding share of computed positions | log-probs s | update s |")
    print("|---|---:|---:|---:|")
    for name in ways:
        print(f"| {name} | {pad[name]:.2f} | {median[name]['logprobs']:.2f} | {median[name]['update']:.2f} |")
    ratio = {k: median["padded"][k] / median["bucketed"][k] for k in ("logprobs", "update")}
    print(f"speed-up of bucketed: log-probs {ratio['logprobs']:.2f}x, update {ratio['update']:.2f}x; "
          f"largest parameter difference after {args.repeats + 1} updates each: {same:.1e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "pad_frac": pad, "median_s": median, "speedup": ratio,
                       "max_param_diff": same}, f, indent=2)


if __name__ == "__main__":
    main()
