"""Score text under the configured policy: per-token log-probs, perplexity and throughput.

`python -m ssp_jax.score --config configs/<x>.py [--workdir DIR] [--text ...]`

It is the quickest end-to-end check that a checkpoint imports, shards and runs: the same
`load_policy` path as training, the chat template, and the chunked log-prob op that RL uses.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from ssp_jax.models.decoder import Decoder
from ssp_jax.models.policy import load_policy
from ssp_jax.models.shapes import batch_shards
from ssp_jax.models.sharding import shard_batch
from ssp_jax.tokenizer import get_chat_template
from ssp_jax.wiring import config_from_flags, mesh_and_rules, one_line_errors, parse_flags

_WORKDIR = flags.DEFINE_string("workdir", "workdir/score", "where a random init checkpoint is written")
_TEXT = flags.DEFINE_string("text", "Who founded the company that owns the largest bridge in Vantor?",
                            "user message to score")
_ANSWER = flags.DEFINE_string("answer", "<think>I need to search.</think><search>largest bridge Vantor</search>",
                              "assistant continuation to score")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed repetitions after compilation")


def main(argv: list[str]) -> None:
    del argv
    with one_line_errors("ssp_jax.score"):
        config = config_from_flags()
    mesh, rules = mesh_and_rules(config)
    policy = load_policy(config.model, mesh=mesh, rules=rules, workdir=Path(_WORKDIR.value))
    template = get_chat_template(config.chat_template)
    prompt = template.render_ids(policy.tokenizer, [{"role": "user", "content": _TEXT.value}])
    ids = prompt + policy.tokenizer.encode(_ANSWER.value)

    # Pad the length to a multiple of 64 and the rows to the mesh's batch shards.
    rows, width = batch_shards(mesh, rules), -(-len(ids) // 64) * 64
    tokens = np.zeros((rows, width), np.int32)
    mask = np.zeros((rows, width), np.int32)
    tokens[:, :len(ids)], mask[:, :len(ids)] = ids, 1
    positions = np.broadcast_to(np.arange(width, dtype=np.int32), tokens.shape)
    batch = shard_batch({"tokens": tokens, "mask": mask, "positions": positions}, mesh, rules)

    @nnx.jit
    def score(model: Decoder, batch: dict[str, jax.Array]) -> jax.Array:
        hidden, _ = model(batch["tokens"], batch["positions"], batch["mask"])
        return model.token_logprobs(hidden[:, :-1], batch["tokens"][:, 1:], chunk=64)  # [rows, width-1]

    start = time.perf_counter()
    logprobs = np.asarray(score(policy.model, batch))
    compile_s = time.perf_counter() - start
    timings = []
    for _ in range(_REPEATS.value):
        start = time.perf_counter()
        jax.block_until_ready(score(policy.model, batch))
        timings.append(time.perf_counter() - start)

    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(policy.model, nnx.Param)))
    scored = logprobs[0, len(prompt) - 1:len(ids) - 1]  # the assistant continuation only
    print(f"checkpoint   {policy.checkpoint_dir} ({policy.hf_config.get('model_type')}, {n_params:,} params)")
    print(f"mesh         {dict(mesh.shape)} on {jax.device_count()} {jax.devices()[0].platform} device(s)")
    print(f"embed        sharded as {policy.model.embed[...].sharding.spec}")
    print(f"sequence     {len(prompt)} prompt + {len(scored)} scored tokens, padded to {rows}x{width}")
    for token_id, lp in zip(ids[len(prompt):], scored):
        print(f"  {policy.tokenizer.decode([token_id])!r:>12}  logprob {lp:8.3f}")
    print(f"perplexity   {float(np.exp(-scored.mean())):.2f} on the continuation")
    print(f"compile      {compile_s:.2f} s; forward+logprobs {rows * width / np.median(timings):,.0f} tokens/s")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
