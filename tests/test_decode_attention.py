"""The ragged decode kernel (`models/decode_attention.py`) against `attend` over the same cache: in
Pallas interpret mode on CPU, alone, inside the engine on one device and on a fake mesh, and
compiled for a TPU slice through libtpu.

Tolerances: fp32 1e-5 (the online softmax sums blocks in another order); bf16 1e-2 (probabilities
are rounded to bf16 before the value matmul, per block rather than once).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssp_jax.engine.engine import Engine, EngineConfig
from ssp_jax.engine.sampling import SamplingParams
from ssp_jax.models.attention import attend
from ssp_jax.models.decode_attention import decode_block, ragged_decode_attention
from ssp_jax.models.decoder import Decoder, DecoderConfig
from ssp_jax.models.sharding import DEFAULT_RULES, MeshConfig, make_mesh, shard_model, state_shardings

BATCH, KV_HEADS, GROUP, HEAD_DIM, MAX_LEN = 5, 2, 3, 32, 64
TOLERANCE = {jnp.float32: 1e-5, jnp.bfloat16: 1e-2}


@pytest.mark.slow  # over 2 s
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_kernel_matches_attend_over_the_filled_prefix(dtype):
    """Slots of length 0 (zeros), 1, inside a block, on a block edge and full; 3 queries per KV head
    (padded to 8 sublanes inside the kernel)."""
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(BATCH, 1, KV_HEADS * GROUP, HEAD_DIM)), dtype)
    k, v = (jnp.asarray(rng.normal(size=(BATCH, KV_HEADS, MAX_LEN, HEAD_DIM)), dtype) for _ in range(2))
    lengths = jnp.array([0, 1, 21, 32, MAX_LEN])
    assert decode_block(MAX_LEN) == 64
    out = ragged_decode_attention(q[:, 0].reshape(BATCH, KV_HEADS, GROUP, HEAD_DIM), k, v, lengths, interpret=True)
    out = np.asarray(out.reshape(BATCH, KV_HEADS * GROUP, HEAD_DIM), np.float32)
    mask = (jnp.arange(MAX_LEN)[None] < lengths[:, None])[:, None]  # [batch, 1, max_len]
    reference = np.asarray(attend(q, k, v, mask, heads_major=True)[:, 0], np.float32)
    np.testing.assert_allclose(out[1:], reference[1:], atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])
    assert not out[0].any()


def test_kernel_walks_blocks_that_divide_the_cache():
    assert [decode_block(n) for n in (12288, 2560, 96, 24)] == [512, 512, 32, 8]
    with pytest.raises(ValueError, match="multiple of 8"):
        decode_block(100)


def tiny_model(attention: str) -> Decoder:
    cfg = DecoderConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                        num_kv_heads=2, head_dim=16, attention=attention)
    return Decoder(cfg, rngs=nnx.Rngs(0))  # the same weights for every backend


def decode(model: Decoder, mesh=None) -> tuple[list[list[int]], np.ndarray]:
    """Four slots of different prompt lengths (one with a tool span), sampled at temperature 1."""
    # A 128-token prefill bucket: under `splash` prefill runs splash attention, which blocks by 128.
    config = EngineConfig(num_slots=4, max_cache_len=192, prefill_buckets=(128,), extend_buckets=(8,),
                          extend_group=2, decode_steps=5, decode_windows=(136,))
    if mesh is not None:
        model = shard_model(model, mesh, DEFAULT_RULES)
    engine, params = Engine(model, config, mesh=mesh), nnx.state(model)
    state = engine.init_decode_state()
    rng = np.random.default_rng(1)
    for slot, n in enumerate((3, 9, 1, 15)):
        state = engine.insert(engine.prefill(params, rng.integers(1, 128, n).tolist()), state, slot, seed=slot,
                              sampling=SamplingParams(temperature=1.0), budget=6 + 3 * slot)
    tokens: list[list[int]] = [[] for _ in range(4)]
    logprobs = []
    for round_ in range(2):
        while np.asarray(state.active).any():
            state, out = engine.generate(params, state)
            emitted = np.asarray(out.emitted)
            for slot in range(4):
                tokens[slot] += np.asarray(out.tokens)[emitted[:, slot], slot].tolist()
            logprobs.append(np.asarray(out.logprobs)[emitted])
        if round_ == 0:
            state = engine.extend(params, state, [1, 3], [[5, 6, 7], [8] * 6], [4, 4])
    return tokens, np.concatenate(logprobs)


@pytest.mark.slow  # Pallas interpret mode inside the decode scan
def test_engine_decodes_the_same_with_the_ragged_kernel():
    """`splash` (splash attention for prefill, the ragged kernel for decode steps) samples the tokens
    `xla` samples, through windows, stopped slots and an extend; on one device and over a 4 x 2
    mesh of CPU devices."""
    reference_tokens, reference_logprobs = decode(tiny_model("xla"))
    meshes = [None, make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))]
    for mesh in meshes:
        tokens, logprobs = decode(tiny_model("splash"), mesh)
        assert tokens == reference_tokens
        np.testing.assert_allclose(logprobs, reference_logprobs, atol=1e-5)


@pytest.mark.slow
def test_auto_compiles_the_ragged_kernel_into_decode_for_a_tpu_slice():
    """Through libtpu, on this CPU host: the engine's decode step, compiled for a TPU slice with
    `auto`, holds the Mosaic kernel under shard_map; with `xla` it does not."""
    from ssp_jax.aot import tpu_topology_devices

    mesh = make_mesh(MeshConfig(data=1, fsdp=2, tensor=2), tpu_topology_devices("v5e:2x2"))
    kernels = {}
    for backend in ("xla", "auto"):
        model = nnx.eval_shape(lambda b=backend: tiny_model(b))
        config = EngineConfig(num_slots=8, max_cache_len=1024, prefill_buckets=(128,), extend_buckets=(128,),
                              extend_group=2, decode_steps=1)
        engine = Engine(model, config, mesh=mesh)
        state = nnx.state(model)
        params = jax.tree.map(lambda var, s: var.replace(jax.ShapeDtypeStruct(var.shape, var.dtype, sharding=s)),
                              state, state_shardings(state, mesh, DEFAULT_RULES),
                              is_leaf=lambda x: isinstance(x, nnx.Variable))
        text = engine.lower_generate(params, engine.abstract_decode_state()).compile().as_text()
        kernels[backend] = text.count("tpu_custom_call")
    assert kernels["xla"] == 0 and kernels["auto"] > 0, kernels



def test_engine_refuses_shapes_the_kernels_cannot_block():
    """Under `splash`, at construction: a prefill bucket off splash's 128-position blocks, a cache
    off the decode kernel's 8-position blocks."""
    model = tiny_model("splash")
    with pytest.raises(ValueError, match=r"engine.prefill_buckets=\(64, 128\).*\[64\] are not"):
        Engine(model, EngineConfig(num_slots=2, max_cache_len=256, prefill_buckets=(64, 128), extend_buckets=(8,)))
    with pytest.raises(ValueError, match=r"max_cache_len=260.*\[260\] are not"):
        Engine(model, EngineConfig(num_slots=2, max_cache_len=260, prefill_buckets=(128,), extend_buckets=(8,)))
    Engine(tiny_model("xla"), EngineConfig(num_slots=2, max_cache_len=260, prefill_buckets=(64,), extend_buckets=(8,)))
