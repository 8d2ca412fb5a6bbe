"""What one layer of the training passes costs in ICI traffic and scratch memory on a TPU slice,
read from programs compiled on this CPU host (libtpu, requirements-tpu.txt).

Why: the compiled update and log-prob passes of the Qwen2.5-7B setting moved activations between
chips (issue 22): every chip gathered the micro-batch and all-reduced activations over `fsdp`. This
compiles one micro-batch of each pass with the config's model cut to 1 and then 2 layers, and
reports the per-layer difference, so the 28-layer figure is 28 times it plus the 1-layer base.

- ICI bytes: the sum, over the compiled program's collectives, of each one's largest per-device
  array (ssp_jax.aot.Collective.bytes); a loop body's collectives count once, i.e. per micro-batch.
- activation bytes: the part of it whose arrays carry the sequence length (activations and
  per-token inputs, never weights).
- temp: XLA's per-device scratch (memory_analysis().temp_size_in_bytes).

Usage (from the repo root; a few minutes and a few GB of RAM):
    python -m benchmarks.training_collectives [--config configs/qwen2_5_7b.py] [--topology v5p:4x4x4]
        [--rows 64] [--length 12288] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp

from benchmarks.microworld_bottlenecks import config_file
from ssp_jax.aot import GiB, Plan, abstract_batch
from ssp_jax.config import Config
from ssp_jax.projection import collectives


def measure(config: Config, topology: str, layers: int, rows: int, length: int) -> dict[str, dict[str, float]]:
    """ICI, activation and temp bytes per device of one micro-batch of each pass, at `layers` layers."""
    model = dataclasses.replace(config.model, init={**config.model.init, "num_hidden_layers": layers})
    plan = Plan(dataclasses.replace(config, model=model), topology, hbm_bytes=None)
    batch = abstract_batch(rows, length, plan.mesh, plan.rules)
    lowered = {"update": plan.steps.accumulate.lower(plan.params, plan.carry(batch), batch,
                                                     batch.advantages, jnp.float32(1)),  # row weights
               "logprobs": plan.steps.logprobs.lower(plan.params, batch.tokens, batch.attention_mask)}
    report = {}
    for name, step in lowered.items():
        start = time.perf_counter()
        compiled = step.compile()
        ops = collectives(compiled.as_text())
        report[name] = {"ici_bytes": float(sum(op.bytes for op in ops)),
                        "activation_bytes": float(sum(op.bytes for op in ops if op.has_dim(length))),
                        "temp_bytes": float(compiled.memory_analysis().temp_size_in_bytes),
                        "collectives": float(len(ops)), "compile_s": time.perf_counter() - start}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/qwen2_5_7b.py")
    parser.add_argument("--topology", default="v5p:4x4x4")
    parser.add_argument("--rows", type=int, default=0, help="micro-batch rows (default: rl.micro_batch_size)")
    parser.add_argument("--length", type=int, default=0, help="sequence length (default: max rl.length_buckets)")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    if "JAX_PLATFORMS" not in os.environ:
        jax.config.update("jax_platforms", "cpu")  # compile-only: never claim this host's accelerators
    config = config_file(args.config, [])
    rows = args.rows or config.rl.micro_batch_size
    length = args.length or max(config.rl.length_buckets)
    one, two = (measure(config, args.topology, n, rows, length) for n in (1, 2))
    print(f"{args.config} on {args.topology}, one micro-batch of {rows} x {length} tokens, per device:")
    print("| pass | per layer: ICI GB | of which activations GB | temp GiB (1 / 2 layers) | collectives (1 / 2) |")
    print("|---|---:|---:|---:|---:|")
    result = {}
    for name in one:
        per_layer = {k: two[name][k] - one[name][k] for k in ("ici_bytes", "activation_bytes", "temp_bytes")}
        result[name] = {"one_layer": one[name], "two_layers": two[name], "per_layer": per_layer}
        print(f"| {name} | {per_layer['ici_bytes'] / 1e9:.3f} | {per_layer['activation_bytes'] / 1e9:.3f} | "
              f"{one[name]['temp_bytes'] / GiB:.2f} / {two[name]['temp_bytes'] / GiB:.2f} | "
              f"{one[name]['collectives']:.0f} / {two[name]['collectives']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": args.config, "topology": args.topology, "rows": rows, "length": length,
                       "passes": result}, f, indent=2)


if __name__ == "__main__":
    main()
