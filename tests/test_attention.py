"""The attention backends against `xla`, the reference: Pallas splash attention (in interpret mode
on CPU, sharded under `shard_map` on a fake mesh, and compiled for a TPU slice), forward and
gradients, fp32 and bf16, with GQA, causality and padding.

Tolerances: fp32 1e-5 on outputs and 1e-4 on gradients (the kernel's online softmax sums in another
order); bf16 3e-2 (q is scaled before the kernel in bf16, after it in fp32 in `xla`). Outputs at
padding positions are unspecified, so only real positions are compared.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssp_jax.models.attention import causal_attention, resolve_backend
from ssp_jax.models.decoder import Decoder, DecoderConfig, token_logprobs
from ssp_jax.models.sharding import DEFAULT_RULES, MeshConfig, activation_sharding, make_mesh

BATCH, SEQ, HEADS, KV_HEADS, HEAD_DIM = 3, 256, 4, 2, 32
TOLERANCE = {jnp.float32: 1e-5, jnp.bfloat16: 3e-2}


def inputs(dtype, seed: int = 0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(BATCH, SEQ, HEADS, HEAD_DIM))
    k, v = (rng.normal(size=(BATCH, SEQ, KV_HEADS, HEAD_DIM)) for _ in range(2))
    lengths = np.array([SEQ, SEQ - 77, 0])  # full, right-padded, all padding (a pack_batch filler row)
    mask = (np.arange(SEQ) < lengths[:, None]).astype(np.int32)
    return (*(jnp.asarray(x, dtype) for x in (q, k, v)), jnp.asarray(mask))


def real(x: jax.Array, mask: jax.Array) -> np.ndarray:
    return np.asarray(x, np.float32)[np.asarray(mask) > 0]


@pytest.mark.slow  # Pallas interpret mode
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_splash_forward_matches_xla(dtype):
    q, k, v, mask = inputs(dtype)
    splash = causal_attention(q, k, v, mask, "splash")
    assert np.isfinite(np.asarray(splash, np.float32)).all()  # the all-padding row included
    np.testing.assert_allclose(real(splash, mask), real(causal_attention(q, k, v, mask, "xla"), mask),
                               atol=TOLERANCE[dtype])


@pytest.mark.slow  # Pallas interpret mode
def test_splash_gradients_match_xla():
    q, k, v, mask = inputs(jnp.float32, seed=1)
    weights = jnp.asarray(np.random.default_rng(2).normal(size=(BATCH, SEQ, HEADS, HEAD_DIM)), jnp.float32)

    def loss(backend):
        # Padding positions' outputs are unspecified: the loss reads real positions only, as RL's does.
        return lambda q, k, v: jnp.sum(causal_attention(q, k, v, mask, backend) * weights * mask[:, :, None, None])

    splash = jax.grad(loss("splash"), argnums=(0, 1, 2))(q, k, v)
    xla = jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(splash, xla):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)


def test_splash_needs_a_block_multiple():
    q, k, v, mask = (x[:, :200] for x in inputs(jnp.float32))
    with pytest.raises(ValueError, match="multiple of 128, got 200"):
        causal_attention(q, k, v, mask, "splash")


def test_auto_picks_by_the_traced_platform():
    assert resolve_backend("auto") == "xla"  # this CPU host
    with activation_sharding(make_mesh(MeshConfig(data=2, fsdp=4, tensor=1)), DEFAULT_RULES):
        assert resolve_backend("auto") == "xla"
    with pytest.raises(ValueError, match="attention backend 'flash'"):
        resolve_backend("flash")
    with pytest.raises(ValueError, match="DecoderConfig.attention='flash'"):
        DecoderConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=1, num_kv_heads=1,
                      head_dim=8, attention="flash")


@pytest.mark.slow
@pytest.mark.parametrize("tensor", [1, 2])
def test_sharded_splash_log_probs_equal_one_device(tensor):
    """The decoder's log-probs with splash under `shard_map` (rows over data x fsdp, heads over tensor)
    equal the single-device `xla` ones."""
    cfg = DecoderConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=HEADS,
                        num_kv_heads=KV_HEADS, head_dim=16, qkv_bias=True)
    _, _, _, mask = inputs(jnp.float32)
    tokens = jnp.asarray(np.random.default_rng(3).integers(1, 128, (BATCH + 1, SEQ)) * np.vstack([mask, mask[:1]]))
    mask = (tokens > 0).astype(jnp.int32)
    reference = token_logprobs(Decoder(cfg, rngs=nnx.Rngs(0)), tokens, mask)
    model = Decoder(dataclasses.replace(cfg, attention="splash"), rngs=nnx.Rngs(0))  # the same weights
    mesh = make_mesh(MeshConfig(data=2, fsdp=4 // tensor, tensor=tensor))

    @jax.jit
    def pinned(tokens, mask):
        with activation_sharding(mesh, DEFAULT_RULES):
            return token_logprobs(model, tokens, mask)

    np.testing.assert_allclose(np.asarray(pinned(tokens, mask)) * mask, np.asarray(reference) * mask, atol=2e-5)


@pytest.mark.slow
def test_auto_compiles_splash_for_a_tpu_slice():
    """Through libtpu, on this CPU host: for TPU devices `auto` resolves to splash, whose Mosaic kernel
    is in the compiled log-prob pass (`benchmarks/training_collectives.py` reports its scratch)."""
    import sys
    from pathlib import Path

    from ssp_jax.aot import Plan, abstract_batch
    from ssp_jax.config import load_config

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "configs"))
    import tiny

    kernels = {}
    for backend in ("xla", "auto"):
        config = tiny.get_config()
        config.model.attention = backend
        config.rl.length_buckets, config.engine.max_cache_len = (1024,), 1024
        config.engine.prefill_buckets, config.engine.extend_buckets = (512,), (256,)
        config.selfplay.batch_size, config.selfplay.solver_samples, config.rl.micro_batch_size = 4, 2, 4
        plan = Plan(load_config(config), "v5e:2x2", hbm_bytes=None)
        batch = abstract_batch(4, 1024, plan.mesh, plan.rules)
        text = plan.steps.logprobs.lower(plan.params, batch.tokens, batch.attention_mask).compile().as_text()
        kernels[backend] = text.count("tpu_custom_call")
    assert kernels["xla"] == 0 and kernels["auto"] > 0, kernels
