"""What a rollout step costs against what the slots hold (issue 22, item 4): decode time per token at
a fixed `max_cache_len` as the slots' true length grows, attending over the whole cache and over
`decode_windows`, side by side; and `extend` time against its group size.

Why: attending over the whole preallocated cache costs the same whatever the slots hold; with
decode windows the cost should follow the true length. `extend` gathers whole caches, so its time
is flat in the group today. Timings are interleaved in one run, and ratios are what to read. One
CPU device, random Qwen2-shaped weights.

Usage: python -m benchmarks.decode_cost [--max-cache-len 4096] [--slots 16] [--repeats 3] [--json out.json]
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
    lengths = sorted({n for n in (128, 480, 1000, 2000, max_len - 512) if n + 64 <= max_len})
    groups = [g for g in (1, 4, 16) if g <= slots]
    model = Decoder(CFG, rngs=nnx.Rngs(0))
    params = nnx.state(model)
    windows = tuple(w for w in (256, 512, 1024, 2048, 4096, 8192) if w < max_len)
    config = EngineConfig(num_slots=slots, max_cache_len=max_len, prefill_buckets=tuple(lengths),
                          extend_buckets=(64,), extend_group=max(groups), decode_steps=16)
    engines = {"whole cache": Engine(model, config),
               f"windows {windows}": Engine(model, dataclasses.replace(config, decode_windows=windows))}
    rng = np.random.default_rng(0)
    print(f"{CFG.num_layers} layers, hidden {CFG.hidden_size}, {slots} slots x {max_len} cache, "
          f"{jax.device_count()} {jax.default_backend()} device(s); load {os.getloadavg()[0]:.2f}")

    def filled(engine: Engine, length: int):
        """A state with every slot holding `length` tokens and active."""
        prefix = engine.prefill(params, rng.integers(1, CFG.vocab_size, length).tolist())
        state = engine.init_decode_state()
        for slot in range(slots):
            state = engine.insert(prefix, state, slot, seed=slot, sampling=GREEDY, budget=1 << 20)
        return state

    decode: dict[str, dict[int, float]] = {name: {} for name in engines}
    states = {name: engine.warmup(params) for name, engine in engines.items()}
    for length in lengths:
        states = {name: filled(engine, length) for name, engine in engines.items()}
        times: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(args.repeats):  # interleaved
            for name, engine in engines.items():
                seconds, (states[name], _) = timed(
                    lambda e=engine, s=states[name]: jax.block_until_ready(e.generate(params, s)))
                times[name].append(seconds / config.decode_steps)
        for name in engines:
            decode[name][length] = statistics.median(times[name])
    engine = engines["whole cache"]
    extend = {}
    span = rng.integers(1, CFG.vocab_size, 48).tolist()
    for group in groups:
        times = []
        for _ in range(args.repeats + 1):  # the first compiles
            state = filled(engine, lengths[0])  # extend donates its state: a fresh one per call
            times.append(timed(lambda g=group, s=state: jax.block_until_ready(
                engine.extend(params, s, list(range(g)), [span] * g, [1] * g)))[0])
        extend[group] = statistics.median(times[1:])
    names = list(engines)
    print(f"\n| true length per slot | {names[0]}: ms per step | {names[1]}: ms per step | ratio |")
    print("|---:|---:|---:|---:|")
    for length in lengths:
        whole, windowed = (decode[name][length] for name in names)
        print(f"| {length} | {whole * 1e3:.2f} | {windowed * 1e3:.2f} | {whole / windowed:.2f}x |")
    print("\n| extend group (slots with a 48-token span) | ms per call | vs one slot |\n|---:|---:|---:|")
    for group, seconds in extend.items():
        print(f"| {group} | {seconds * 1e3:.1f} | {seconds / extend[groups[0]]:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "decode_s_per_step": decode, "extend_s": extend}, f, indent=2)


if __name__ == "__main__":
    main()
