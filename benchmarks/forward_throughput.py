"""Forward-pass throughput (tokens/s): ssp_jax's `Decoder` vs transformers, same config and weights.

Why: RL spends most of its compute scoring rollouts with full forwards, so the decoder must be at
least as fast as the reference implementation. A ~100M-parameter Qwen2-shaped model is built in
transformers (random init, fixed seed), saved, and imported with `load_hf_decoder`; both then run
the same batch, interleaved round by round (ours, theirs, ours, ...) because CPU timings drift. The
headline is the ratio of medians, which is far more stable across machines than either number.

JAX runs on a single CPU device (no `--xla_force_host_platform_device_count`): XLA's intra-op
thread pool then uses every core, as torch does, which is the fair comparison. `--threads` only
sets torch's thread count.

Usage (from the repo root):
    python -m benchmarks.forward_throughput [--batch 4] [--seq 256] [--repeats 5]
        [--dtype float32|bfloat16] [--attn sdpa|eager] [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from flax import nnx  # noqa: E402

from ssp_jax.models.decoder import positions_from_mask  # noqa: E402
from ssp_jax.models.hf_import import load_hf_decoder  # noqa: E402

# ~100M parameters, Qwen2 layout (QKV bias, GQA 3:1, tied embeddings).
QWEN2_100M = dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                  num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=4096,
                  rope_theta=10000.0, tie_word_embeddings=True)
SEED = 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="parameter and compute dtype of both models (logits are fp32 for both)")
    p.add_argument("--attn", choices=("sdpa", "eager"), default="sdpa", help="transformers attention")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: as is)")
    p.add_argument("--json", default=None, help="write the results to this path")
    return p.parse_args()


def build_models(args: argparse.Namespace, tokens: jax.Array, mask: jax.Array,
                 ) -> tuple[torch.nn.Module, Callable[[], jax.Array], int, float]:
    """The transformers model and our compiled forward (on `tokens`, `mask`) with the same weights,
    plus the parameter count and our compile time in seconds."""
    transformers.utils.logging.disable_progress_bar()
    config = transformers.Qwen2Config(**QWEN2_100M)
    config._attn_implementation = args.attn
    torch.manual_seed(SEED)
    theirs = transformers.Qwen2ForCausalLM(config).eval()
    n_params = sum(p.numel() for p in theirs.parameters())  # tied weights are counted once
    with tempfile.TemporaryDirectory() as tmp:
        theirs.save_pretrained(tmp)
        model, _ = load_hf_decoder(tmp, dtype=args.dtype, param_dtype=args.dtype)
    theirs = theirs.to(getattr(torch, args.dtype))
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state: nnx.State, tokens: jax.Array, mask: jax.Array) -> jax.Array:
        m = nnx.merge(graphdef, state)
        hidden, _ = m(tokens, positions_from_mask(mask), mask)
        return m.logits(hidden)

    compile_s, compiled = timed(lambda: forward.lower(state, tokens, mask).compile())
    return theirs, lambda: compiled(state, tokens, mask).block_until_ready(), n_params, compile_s


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(SEED)
    ids = rng.integers(0, QWEN2_100M["vocab_size"], size=(args.batch, args.seq), dtype=np.int32)
    mask = np.ones_like(ids)
    j_ids, j_mask = jnp.asarray(ids), jnp.asarray(mask)
    t_ids, t_mask = torch.from_numpy(ids).long(), torch.from_numpy(mask).long()
    theirs, run_ours, n_params, compile_s = build_models(args, j_ids, j_mask)

    @torch.inference_mode()
    def run_theirs() -> torch.Tensor:
        return theirs(input_ids=t_ids, attention_mask=t_mask).logits.float()

    ours_warm_s, ours_logits = timed(run_ours)
    theirs_warm_s, theirs_logits = timed(run_theirs)
    max_diff = float(np.max(np.abs(np.asarray(ours_logits) - theirs_logits.numpy())))
    logit_scale = float(np.max(np.abs(theirs_logits.numpy())))
    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    for _ in range(args.repeats):
        times["ours"].append(timed(run_ours)[0])
        times["theirs"].append(timed(run_theirs)[0])
    tokens = args.batch * args.seq
    tps = {k: [tokens / t for t in v] for k, v in times.items()}
    median = {k: statistics.median(v) for k, v in tps.items()}
    ratio = median["ours"] / median["theirs"]
    best_ratio = max(tps["ours"]) / max(tps["theirs"])  # least disturbed rounds: a check on the median

    attn = theirs.config._attn_implementation
    command = shlex.join([os.path.basename(sys.executable), *sys.orig_argv[1:]])
    print(f"command: {command}")
    print(f"model: Qwen2-shaped, {n_params:,} parameters ({n_params / 1e6:.1f}M), "
          f"{QWEN2_100M['num_hidden_layers']} layers, hidden {QWEN2_100M['hidden_size']}, "
          f"vocab {QWEN2_100M['vocab_size']}, tied embeddings")
    print(f"batch {args.batch} x seq {args.seq} = {tokens} tokens/forward, dtype {args.dtype}, "
          f"{args.repeats} interleaved rounds; {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}, jax devices {jax.device_count()}")
    print(f"versions: jax {jax.__version__}, torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"ours: trace + compile {compile_s:.2f} s, warm-up forward {ours_warm_s:.2f} s; "
          f"theirs: warm-up forward {theirs_warm_s:.2f} s")
    print(f"max |logits_ours - logits_theirs| = {max_diff:.3e} (max |logit| = {logit_scale:.3f})\n")
    print("| implementation | median tokens/s | min–max tokens/s |")
    print("|---|---:|---:|")
    for key, name in (("ours", "ssp_jax `Decoder` (jax.jit)"), ("theirs", f"transformers ({attn} attention)")):
        print(f"| {name} | {median[key]:,.0f} | {min(tps[key]):,.0f}–{max(tps[key]):,.0f} |")
    print(f"\n**ours / theirs = {ratio:.2f}x** (median); best round vs best round: {best_ratio:.2f}x")

    if args.json:
        result = {"command": command, "params": n_params, "config": QWEN2_100M, "args": vars(args),
                  "attn_implementation": attn, "cpus": os.cpu_count(),
                  "torch_threads": torch.get_num_threads(), "compile_s": compile_s,
                  "ours_warmup_s": ours_warm_s, "theirs_warmup_s": theirs_warm_s,
                  "max_abs_logit_diff": max_diff, "max_abs_logit": logit_scale,
                  "seconds": times, "tokens_per_s": tps, "median_tokens_per_s": median,
                  "ratio": ratio, "best_ratio": best_ratio}
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
