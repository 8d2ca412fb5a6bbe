"""The prepared GPU check (issue 22): our engine and one RL update at a Qwen2.5-0.5B shape, with
random weights and the `cudnn` attention backend, on one NVIDIA GPU.

Why: the project is developed on CPU and compiled for TPU ahead of time; this is the one script to
run when a GPU machine is lent, so that its few minutes give two figures that matter:
1. decode tokens/s of `Engine` (greedy, all slots busy) against transformers `generate` on the same
   GPU and the same weights (bf16), with whether their tokens agree;
2. the MFU of one `Learner.update` (6 x params x tokens / time / the chip's peak bf16 FLOP/s).

`benchmarks/gpu_check.sh` installs the wheels it needs and runs it with a time limit. `--shape tiny`
runs the same code on CPU in seconds (tests/test_gpu_check.py).

Usage: python -m benchmarks.gpu_check [--shape qwen2.5-0.5b|tiny] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "")  # any platform: the benchmarks imported below default to CPU
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.engine_throughput import Slots, first_differences  # noqa: E402
from benchmarks.forward_throughput import timed  # noqa: E402
from ssp_jax.engine.engine import Engine, EngineConfig  # noqa: E402
from ssp_jax.engine.sampling import GREEDY  # noqa: E402
from ssp_jax.models.hf_import import load_hf_decoder  # noqa: E402
from ssp_jax.rl.batch import pack_batch  # noqa: E402
from ssp_jax.rl.config import RLConfig  # noqa: E402
from ssp_jax.rl.update import Learner  # noqa: E402

SHAPES = {  # HF Qwen2Config fields
    "qwen2.5-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=True),
}
# Sizes per shape: slots x (prompt + new tokens) for decode; rows x length per update.
SIZES = {"qwen2.5-0.5b": dict(slots=64, prompt=256, new=256, rows=32, length=2048, updates=3),
         "tiny": dict(slots=4, prompt=16, new=16, rows=4, length=128, updates=1)}
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12}  # dense bf16 FLOP/s per chip, by device name


def peak_flops(device: jax.Device) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in device.device_kind), None)


def decode(model: Any, theirs: Any, sizes: dict[str, int], device: str) -> dict[str, Any]:
    """Greedy decode of `slots` random prompts: ours vs transformers generate, timed after a warm-up."""
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, model.cfg.vocab_size, sizes["prompt"]).tolist() for _ in range(sizes["slots"])]
    config = EngineConfig(num_slots=sizes["slots"], max_cache_len=sizes["prompt"] + sizes["new"],
                          prefill_buckets=(sizes["prompt"],), extend_buckets=(16,), extend_group=1, decode_steps=16)
    params = nnx.state(model)
    slots = Slots(Engine(model, config), params)

    def ours() -> list[list[int]]:
        return slots.run([slots.engine.prefill(params, p) for p in prompts], range(len(prompts)), GREEDY, sizes["new"])

    ids = torch.tensor(prompts, device=device)

    @torch.inference_mode()
    def run_theirs() -> list[list[int]]:
        out = theirs.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=sizes["new"],
                              min_new_tokens=sizes["new"], do_sample=False, eos_token_id=None, pad_token_id=0)
        return out[:, sizes["prompt"]:].tolist()

    new = len(prompts) * sizes["new"]
    tokens = {"ours": ours(), "theirs": run_theirs()}  # warm-up
    seconds = {"ours": timed(ours)[0], "theirs": timed(run_theirs)[0]}
    return {"new_tokens": new, "ours_tokens_per_s": new / seconds["ours"],
            "theirs_tokens_per_s": new / seconds["theirs"], "ratio": seconds["theirs"] / seconds["ours"],
            "rows_differing": len(first_differences(tokens["ours"], tokens["theirs"]))}


def update(model: Any, sizes: dict[str, int], n_params: int) -> dict[str, Any]:
    """One RL update of `rows` x `length` tokens (all trained), timed after a warm-up; its MFU."""
    rng = np.random.default_rng(1)
    rows, length = sizes["rows"], sizes["length"]
    sequences = [rng.integers(1, model.cfg.vocab_size, length).tolist() for _ in range(rows)]
    masks = [[0] + [1] * (length - 1) for _ in range(rows)]
    batch = pack_batch(sequences, masks, [[0.0] * length] * rows, rng.normal(size=rows), (length,))
    learner = Learner(model, RLConfig(micro_batch_size=min(rows, 8)))
    learner.update(batch)  # compiles
    start = time.perf_counter()
    for _ in range(sizes["updates"]):
        metrics = learner.update(batch)
    seconds = (time.perf_counter() - start) / sizes["updates"]
    flops = 6 * n_params * rows * length
    peak = peak_flops(jax.devices()[0])
    return {"seconds": seconds, "tokens": rows * length, "model_flops": flops,
            "mfu": None if peak is None else flops / seconds / peak, "loss": metrics["loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-0.5b")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    gpu = jax.default_backend() == "gpu"
    device = "cuda" if gpu and torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if gpu else torch.float32
    attention = "cudnn" if gpu else "xla"
    torch.manual_seed(0)
    theirs = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**SHAPES[args.shape])).eval()
    n_params = sum(p.numel() for p in theirs.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        theirs.save_pretrained(tmp)
        jax_dtype = "bfloat16" if gpu else "float32"
        model, _ = load_hf_decoder(tmp, dtype=jax_dtype, param_dtype=jax_dtype, attention=attention)
    theirs = theirs.to(device=device, dtype=dtype)
    sizes = SIZES[args.shape]
    print(f"{args.shape}: {n_params / 1e6:.0f}M params on {jax.devices()[0].device_kind} (jax {jax.__version__}, "
          f"torch {torch.__version__} on {device}), {jax_dtype}, attention {attention}")
    result = {"shape": args.shape, "params": n_params, "device": jax.devices()[0].device_kind,
              "attention": attention, "decode": decode(model, theirs, sizes, device),
              "update": update(model, sizes, n_params)}
    d, u = result["decode"], result["update"]
    print(f"decode: ours {d['ours_tokens_per_s']:,.0f} new tokens/s, transformers generate "
          f"{d['theirs_tokens_per_s']:,.0f} ({d['ratio']:.2f}x); {d['rows_differing']} of {sizes['slots']} rows differ")
    print(f"update: {u['tokens']:,} tokens in {u['seconds']:.3f} s; MFU "
          + ("n/a (no peak known for this device)" if u["mfu"] is None else f"{u['mfu']:.1%}"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
