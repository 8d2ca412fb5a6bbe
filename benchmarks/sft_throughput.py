"""Warm-start SFT step time on the micro world's real demonstration mix, variants side by side.

Why: the 20-minute first run is mostly SFT, and the warm start's quality grows with SFT steps
(docs/research-log/2026-11-23-microworld_history.md), so every second an SFT step saves buys steps.
The demos of the configured
micro world are built once; each variant then runs `--steps` SFT steps from the same seed (same
batches), rounds interleaved (a, b, c, a, b, c, ...) because CPU timings drift. Variants:
- `blocked`: the decoder's causal query blocks (`CAUSAL_QUERY_BLOCKS`) on or off;
- `buckets`: the config's SFT length buckets, or `--fine` ones.
The headline is each variant's median seconds per step relative to the first variant.

Usage (from the repo root; the workdir's world and index are built on first use):
    python -m benchmarks.sft_throughput --workdir DIR [--steps 40] [--rounds 3]
        [--fine 128,192,256,320,384,448,512,576,640] [--set key=json ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

from flax import nnx

from benchmarks.microworld_bottlenecks import config_file
from ssp_jax.models import attention
from ssp_jax.models.decoder import Decoder
from ssp_jax.models.hf_import import decoder_config_from_hf
from ssp_jax.tokenizer import get_chat_template
from ssp_jax.wiring import make_retriever
from ssp_jax.worlds.microworld import World
from ssp_jax.worlds.prepare import prepare_microworld
from ssp_jax.worlds.warmstart.build import warm_start_demos
from ssp_jax.worlds.warmstart.demos import DemoFormat
from ssp_jax.worlds.warmstart.sft import sft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--config", default="configs/microworld.py")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides key=json_value")
    parser.add_argument("--steps", type=int, default=40, help="SFT steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fine", default="128,192,256,320,384,448,512,576,640", help="the fine length buckets")
    parser.add_argument("--json", default="")
    args = parser.parse_args()

    config = config_file(args.config, args.set)
    world_cfg = config.data.microworld
    _, index = prepare_microworld(Path(args.workdir) / "microworld", world_cfg,
                                  num_examples=config.selfplay.num_examples)
    world = World(world_cfg)
    fmt = DemoFormat(get_chat_template(config.chat_template), config.prompts, config.rollout.topk,
                     config.selfplay.min_question_words)
    tokenizer, demos = warm_start_demos(world, make_retriever(config.retrieval, str(index)), config.model.warm_start,
                                        fmt=fmt,
                                        num_examples=config.selfplay.num_examples, seed=config.model.seed)
    sequences, masks = [d.tokens for d in demos], [d.loss_mask for d in demos]
    base = dataclasses.replace(config.model.sft, warmup_steps=0)
    fine = tuple(int(x) for x in args.fine.split(","))
    variants = {"config buckets, unblocked": (base, False), "config buckets, blocked": (base, True),
                f"fine buckets {fine}, blocked": (dataclasses.replace(base, length_buckets=fine), True)}
    hf = {**config.model.init, "vocab_size": -(-tokenizer.vocab_size // 64) * 64}
    min_blocked = attention.MIN_BLOCKED_LEN
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (sft_cfg, blocked) in variants.items():
            attention.MIN_BLOCKED_LEN = min_blocked if blocked else 1 << 30
            took = []
            for steps in (args.steps, 2 * args.steps):
                model = Decoder(decoder_config_from_hf(hf, source="config model.init"), rngs=nnx.Rngs(0))
                start = time.perf_counter()
                sft(model, sequences, masks, dataclasses.replace(sft_cfg, steps=steps), progress=False)
                took.append(time.perf_counter() - start)
            times[name].append((took[1] - took[0]) / args.steps)
    attention.MIN_BLOCKED_LEN = min_blocked
    first = statistics.median(next(iter(times.values())))
    report = {"demos": len(demos), "steps": args.steps, "rounds": args.rounds,
              "variants": {name: {"s_per_step": round(statistics.median(t), 4),
                                  "relative": round(statistics.median(t) / first, 3)} for name, t in times.items()}}
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
