"""What a rollout step costs against what the slots hold (issue 22, item 4): decode time per token at
a fixed `max_cache_len` as the slots' true length grows, and `extend` time against its group size.

Why: decode attends over the whole preallocated cache and `extend` gathers whole caches, whatever
the slots hold. A rollout engine that costs what it uses shows decode time rising with the true
length and `extend` time with the group; today both are flat. Both sides run the same compiled
programs, so this is a ratio within one run. One CPU device, random Qwen2-shaped weights.

Usage: python -m benchmarks.decode_cost [--max-cache-len 4096] [--slots 16] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.forward_throughput import timed  # noqa: E402
from ssp_jax.engine.engine import Engine, EngineConfig  # noqa: E402
from ssp_jax.engine.sampling import GREEDY  # noqa: E402
from ssp_jax.models.decoder import Decoder, DecoderConfig  # noqa: E402

CFG = DecoderConfig(vocab_size=4096, hidden_size=256, intermediate_size=768, num_layers=4, num_heads=8,
                    num_kv_heads=2, head_dim=32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-cache-len", type=int, default=4096)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    max_len, slots = args.max_cache_len, args.slots
    lengths = [n for n in (128, 512, 1024, 2048, max_len - 512) if n + 64 <= max_len]
    groups = [g for g in (1, 4, 16) if g <= slots]
    model = Decoder(CFG, rngs=nnx.Rngs(0))
    params = nnx.state(model)
    engine = Engine(model, EngineConfig(num_slots=slots, max_cache_len=max_len, prefill_buckets=tuple(lengths),
                                        extend_buckets=(64,), extend_group=max(groups), decode_steps=16))
    rng = np.random.default_rng(0)
    print(f"{CFG.num_layers} layers, hidden {CFG.hidden_size}, {slots} slots x {max_len} cache, "
          f"{jax.device_count()} {jax.default_backend()} device(s); load {os.getloadavg()[0]:.2f}")

    def filled(length: int):
        """A state with every slot holding `length` tokens and active."""
        prefix = engine.prefill(params, rng.integers(1, CFG.vocab_size, length).tolist())
        state = engine.init_decode_state()
        for slot in range(slots):
            state = engine.insert(prefix, state, slot, seed=slot, sampling=GREEDY, budget=1 << 20)
        return state

    decode = {}
    for length in lengths:
        state = filled(length)
        state, _ = engine.generate(params, state)  # compiles once
        times = []
        for _ in range(args.repeats):
            seconds, (state, _) = timed(lambda s=state: jax.block_until_ready(engine.generate(params, s)))
            times.append(seconds / engine.config.decode_steps)
        decode[length] = statistics.median(times)
    extend = {}
    span = rng.integers(1, CFG.vocab_size, 48).tolist()
    for group in groups:
        times = []
        for _ in range(args.repeats + 1):  # the first compiles
            state = filled(lengths[0])  # extend donates its state: a fresh one per call
            times.append(timed(lambda g=group, s=state: jax.block_until_ready(
                engine.extend(params, s, list(range(g)), [span] * g, [1] * g)))[0])
        extend[group] = statistics.median(times[1:])
    print("\n| true length per slot | decode ms per step | vs the shortest |\n|---:|---:|---:|")
    for length, seconds in decode.items():
        print(f"| {length} | {seconds * 1e3:.2f} | {seconds / decode[lengths[0]]:.2f}x |")
    print("\n| extend group (slots with a 48-token span) | ms per call | vs one slot |\n|---:|---:|---:|")
    for group, seconds in extend.items():
        print(f"| {group} | {seconds * 1e3:.1f} | {seconds / extend[groups[0]]:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "decode_s_per_step": decode, "extend_s": extend}, f, indent=2)


if __name__ == "__main__":
    main()
