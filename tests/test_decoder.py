"""Decoder behaviour that needs no reference model: KV cache, log-probs, remat, config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssp_jax.models.attention import MIN_BLOCKED_LEN, attend, causal_attend
from ssp_jax.models.decoder import Decoder, DecoderConfig, KVCache, RopeScaling, positions_from_mask

TINY = DecoderConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                     num_kv_heads=2, head_dim=8, qkv_bias=True, qk_norm=True)


def full_logits(model: Decoder, tokens: np.ndarray) -> np.ndarray:
    mask = np.ones_like(tokens)
    hidden, _ = model(jnp.asarray(tokens), jnp.asarray(positions_from_mask(mask)), jnp.asarray(mask))
    return np.asarray(model.logits(hidden))


@pytest.mark.slow
def test_kv_cache_prefill_decode_extend_matches_full_forward():
    """Rows of different lengths: right-padded prefill, 3 single-token steps, then a 4-token extend
    (right-padded to 5 for one row), each row at its own cache offset."""
    model = Decoder(TINY, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    lengths = np.array([5, 2])
    seqs = [list(rng.integers(1, 128, size=n + 3 + 4)) for n in lengths]  # prompt + 3 steps + extend 4
    step = nnx.jit(lambda m, t, p, a, c: m(t, p, a, c))
    cache = KVCache.create(TINY, batch=2, max_len=24)
    collected = [[], []]  # logits per row, in order

    def run(chunks: list[list[int]], width: int):
        nonlocal cache
        tokens = np.zeros((2, width), np.int32)
        mask = np.zeros((2, width), np.int32)
        for b, chunk in enumerate(chunks):
            tokens[b, :len(chunk)], mask[b, :len(chunk)] = chunk, 1
        positions = np.asarray(cache.length)[:, None] + np.arange(width)
        hidden, cache = step(model, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(mask), cache)
        logits = np.asarray(model.logits(hidden))
        for b, chunk in enumerate(chunks):
            collected[b].extend(logits[b, :len(chunk)])

    run([s[:n] for s, n in zip(seqs, lengths)], width=6)  # prefill
    for i in range(3):  # decode one token at a time
        run([[s[n + i]] for s, n in zip(seqs, lengths)], width=1)
    run([s[n + 3:n + 7] for s, n in zip(seqs, lengths)], width=5)  # extend by several tokens
    np.testing.assert_array_equal(np.asarray(cache.length), lengths + 7)
    for b, seq in enumerate(seqs):
        ref = full_logits(model, np.array([seq]))[0]
        np.testing.assert_allclose(np.stack(collected[b]), ref, atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("seq", [MIN_BLOCKED_LEN, MIN_BLOCKED_LEN + 4, 96])
def test_blocked_causal_attention_equals_full_attention(seq):
    """Query blocks (taken at 256 tokens; a length not divisible by the block count and a short one
    fall back to one block) give the full masked attention at every real token, left and right
    padding included (a padding query attends to nothing, so its output is arbitrary and unused)."""
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(3, seq, 4, 8)), jnp.float32)  # [batch, seq, heads, head_dim]
    k, v = (jnp.asarray(rng.normal(size=(3, seq, 2, 8)), jnp.float32) for _ in range(2))
    real = np.ones((3, seq), bool)
    real[1, :40], real[2, seq - 70:] = False, False  # left- and right-padded rows
    mask = jnp.tril(jnp.ones((seq, seq), bool))[None] & jnp.asarray(real)[:, None, :]
    blocked, full = np.asarray(causal_attend(q, k, v, mask)), np.asarray(attend(q, k, v, mask))
    np.testing.assert_allclose(blocked[real], full[real], atol=1e-6, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("tied", [False, True])
def test_token_logprobs_chunked_equals_log_softmax(tied):
    cfg = DecoderConfig(**{**TINY.__dict__, "tie_embeddings": tied})
    model = Decoder(cfg, rngs=nnx.Rngs(1))
    tokens = np.random.default_rng(1).integers(0, 128, size=(2, 11)).astype(np.int32)
    mask = np.ones_like(tokens)
    hidden, _ = model(jnp.asarray(tokens), jnp.asarray(positions_from_mask(mask)), jnp.asarray(mask))
    targets = jnp.asarray(np.roll(tokens, -1, axis=1))
    ref = jnp.take_along_axis(jax.nn.log_softmax(model.logits(hidden)), targets[..., None], -1)[..., 0]
    log_probs = jax.nn.log_softmax(model.logits(hidden))
    entropy_ref = -(jnp.exp(log_probs) * log_probs).sum(-1)
    for chunk in (0, 4, 11):
        np.testing.assert_allclose(model.token_logprobs(hidden, targets, chunk=chunk), ref, atol=1e-5)
        logp, entropy = model.token_logprobs(hidden, targets, chunk=chunk, with_entropy=True)
        np.testing.assert_allclose(logp, ref, atol=1e-5)
        np.testing.assert_allclose(entropy, entropy_ref, atol=1e-5)
    # Gradients flow through the checkpointed chunks identically.
    def grad(c):
        return jax.grad(lambda h: model.token_logprobs(h, targets, chunk=c).sum())(hidden)
    np.testing.assert_allclose(grad(4), grad(0), atol=1e-5)


@pytest.mark.slow
def test_remat_gives_same_loss_and_grads():
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, 128, size=(2, 9)), jnp.int32)
    mask = jnp.ones_like(tokens)
    positions = positions_from_mask(mask)

    def loss_and_grads(remat: bool):
        model = Decoder(DecoderConfig(**{**TINY.__dict__, "remat": remat}), rngs=nnx.Rngs(3))

        def loss(m: Decoder) -> jax.Array:
            hidden, _ = m(tokens, positions, mask)
            return -m.token_logprobs(hidden[:, :-1], tokens[:, 1:]).mean()

        return nnx.jit(nnx.value_and_grad(loss))(model)

    (l0, g0), (l1, g1) = loss_and_grads(False), loss_and_grads(True)
    np.testing.assert_allclose(l0, l1, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), nnx.state(g0), nnx.state(g1))


@pytest.mark.slow
def test_padding_does_not_change_real_token_logits():
    model = Decoder(TINY, rngs=nnx.Rngs(4))
    seq = np.random.default_rng(4).integers(1, 128, size=7).astype(np.int32)
    ref = full_logits(model, seq[None])[0]
    for left in (True, False):
        tokens = np.zeros((1, 10), np.int32)
        mask = np.zeros((1, 10), np.int32)
        sl = slice(3, 10) if left else slice(0, 7)
        tokens[0, sl], mask[0, sl] = seq, 1
        hidden, _ = model(jnp.asarray(tokens), positions_from_mask(jnp.asarray(mask)), jnp.asarray(mask))
        got = np.asarray(model.logits(hidden))[0, sl]
        assert np.isfinite(np.asarray(model.logits(hidden))).all()
        np.testing.assert_allclose(got, ref, atol=1e-5)


def test_llama3_rope_scaling_changes_only_low_frequencies():
    from ssp_jax.models.decoder import rope_inv_freq

    base = DecoderConfig(**{**TINY.__dict__, "head_dim": 64, "num_heads": 2, "num_kv_heads": 1,
                            "rope_theta": 500000.0})
    scaled = DecoderConfig(**{**base.__dict__, "rope_scaling": RopeScaling(
        "llama3", factor=8.0, original_max_position_embeddings=8192)})
    plain, llama = np.asarray(rope_inv_freq(base)), np.asarray(rope_inv_freq(scaled))
    assert llama[0] == plain[0]  # highest frequency untouched
    np.testing.assert_allclose(llama[-1], plain[-1] / 8.0, rtol=1e-6)  # lowest divided by factor


@pytest.mark.parametrize("field,value,message", [
    ("num_kv_heads", 3, "multiple of num_kv_heads"),
    ("dtype", "float8", "DecoderConfig.dtype"),
    ("hidden_size", 0, "DecoderConfig.hidden_size"),
])
def test_config_errors_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        DecoderConfig(**{**TINY.__dict__, field: value})
    with pytest.raises(ValueError, match="rope_type"):
        RopeScaling("yarn")
