"""The compiled learner on a tiny random decoder: accumulation, masking, sharding, compile counts,
checkpoint state.

lr 1 and Adam eps 1 make the first AdamW step ~ g / (|g| + 1), nearly linear in the gradient, so
comparing parameters after one step compares gradients (a tiny lr or eps would hide differences).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from ssp_jax.models.decoder import Decoder, DecoderConfig, token_logprobs
from ssp_jax.models.sharding import MeshConfig, make_mesh
from ssp_jax.rl.batch import RLBatch, pack_batch
from ssp_jax.rl.config import RLConfig
from ssp_jax.rl.losses import get_loss
from ssp_jax.rl.update import Learner

TINY = DecoderConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                     num_kv_heads=2, head_dim=8, qkv_bias=True, qk_norm=True)
CFG = RLConfig(lr=1.0, adam_eps=1.0, warmup_steps=0)
ROWS = 8


def trajectories(seed: int) -> tuple[list, list]:
    """7 rows: prompt (masked), generated (trained), tool output (masked), generated, and in odd
    rows a trailing tool span (masked) after the last trained token."""
    rng = np.random.default_rng(seed)
    seqs, masks = [], []
    for i in range(ROWS - 1):
        spans = [(3, 0), (int(rng.integers(2, 4)), 1), (2, 0), (int(rng.integers(1, 4)), 1)]
        if i % 2:
            spans.append((int(rng.integers(1, 4)), 0))
        seqs.append([int(t) for n, _ in spans for t in rng.integers(1, 128, n)])
        masks.append([m for n, m in spans for _ in range(n)])
    return seqs, masks


def make_batch(learner: Learner, seed: int = 0) -> RLBatch:
    """A packed batch (7 rows + 1 padding row) whose old / ref log-probs are the current ones plus
    noise on trained tokens, so ratios leave the clip range and the KL term has a gradient."""
    seqs, masks = trajectories(seed)
    rng = np.random.default_rng(seed + 100)
    batch = pack_batch(seqs, masks, None, rng.normal(size=ROWS - 1), length_buckets=(8, 16), batch_multiple=ROWS)
    logp = np.asarray(learner.logprobs(learner.params, batch))
    noise = lambda scale: scale * rng.normal(size=logp.shape).astype(np.float32) * batch.loss_mask  # noqa: E731
    return dataclasses.replace(batch, old_logprobs=logp + noise(0.3), ref_logprobs=logp + noise(0.5))


def perturb_masked(batch: RLBatch, seed: int) -> RLBatch:
    """New tokens after each row's last trained token; new old/ref log-probs at every masked position."""
    rng = np.random.default_rng(seed)
    tokens = batch.tokens.copy()
    for row, mask in enumerate(batch.loss_mask):
        after = (np.flatnonzero(mask).max() + 1) if mask.any() else 0
        tokens[row, after:] = rng.integers(1, 128, tokens.shape[1] - after)
    masked = batch.loss_mask == 0
    junk = rng.normal(size=tokens.shape).astype(np.float32) * 5
    return dataclasses.replace(batch, tokens=tokens,
                               old_logprobs=np.where(masked, junk, batch.old_logprobs),
                               ref_logprobs=np.where(masked, -junk, batch.ref_logprobs))


def new_learner(micro_batch_size: int = 0, mesh=None) -> Learner:
    return Learner(Decoder(TINY, rngs=nnx.Rngs(0)), dataclasses.replace(CFG, micro_batch_size=micro_batch_size),
                   mesh=mesh)


def host_params(learner: Learner) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(learner.params)]


@pytest.fixture(scope="module")
def full_batch_run():
    """One update with the whole batch as one micro-batch: (learner, batch, params before, after, metrics)."""
    learner = new_learner()
    batch = make_batch(learner)
    before = host_params(learner)
    metrics = learner.update(batch)
    return learner, batch, before, host_params(learner), metrics


def test_update_changes_params_and_reports_finite_metrics(full_batch_run):
    learner, batch, before, after, metrics = full_batch_run
    assert set(metrics) >= {"loss", "pg_loss", "kl", "clip_frac", "grad_norm", "lr", "tokens"}
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    assert metrics["tokens"] == batch.loss_mask.sum() and metrics["lr"] == 1.0
    assert metrics["kl"] > 0 and 0 < metrics["clip_frac"] < 1 and metrics["grad_norm"] > 0
    assert max(np.abs(a - b).max() for a, b in zip(before, after)) > 1e-2
    assert learner.step == 1


@pytest.mark.slow
def test_micro_batch_accumulation_equals_full_batch(full_batch_run):
    _, batch, _, expected, full_metrics = full_batch_run
    learner = new_learner(micro_batch_size=ROWS // 4)
    metrics = learner.update(batch)
    for got, want in zip(host_params(learner), expected):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    for key in ("loss", "pg_loss", "kl", "clip_frac", "grad_norm", "tokens"):
        np.testing.assert_allclose(metrics[key], full_metrics[key], rtol=1e-5)


@pytest.mark.slow
def test_micro_batched_logprobs_equal_one_pass(full_batch_run):
    """The reference/behaviour pass runs micro_batch_size rows at a time, on one device or sharded."""
    learner, batch, _, _, _ = full_batch_run
    whole = np.asarray(learner.logprobs(learner.reference_params, batch))
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    for micro, mesh_ in ((ROWS // 4, None), (ROWS // 2, mesh)):
        small = new_learner(micro_batch_size=micro, mesh=mesh_)
        np.testing.assert_allclose(np.asarray(small.logprobs(small.reference_params, batch)), whole, atol=1e-5)
    remat = Learner(Decoder(dataclasses.replace(TINY, remat=True), rngs=nnx.Rngs(0)),  # as real-scale configs run
                    dataclasses.replace(CFG, micro_batch_size=ROWS // 4))
    np.testing.assert_allclose(np.asarray(remat.logprobs(remat.reference_params, batch)), whole, atol=1e-5)
    with pytest.raises(ValueError, match=r"7 rows is not a multiple of RLConfig.micro_batch_size=2"):
        new_learner(micro_batch_size=2).logprobs(learner.params, jax.tree.map(lambda x: x[:7], batch))


@pytest.mark.slow
@pytest.mark.parametrize("aggregation", ["seq_mean_token_mean", "token_mean", "seq_mean_token_sum"])
def test_length_bucketed_micro_batches_equal_padding_to_the_longest_row(aggregation):
    """Issue 22, item 3: micro-batches of similar-length rows, each padded to its own bucket, give
    the loss, metrics, gradients (params after one step) and log-probs of padding every row to
    the batch's longest; each mini-batch keeps its rows, so its aggregation (issue 23: every
    `rl.loss_aggregation`) is unchanged."""
    rng = np.random.default_rng(7)
    lengths = [5, 29, 7, 12, 31, 6, 18, 9]  # two mini-batches of 4, very uneven
    seqs = [[int(t) for t in rng.integers(1, 128, n)] for n in lengths]
    masks = [[0] * 3 + [int(m) for m in rng.integers(0, 2, n - 3)] for n in lengths]
    batch = pack_batch(seqs, masks, None, rng.normal(size=len(seqs)), length_buckets=(32,))

    def learner(micro: int, buckets: tuple[int, ...]) -> Learner:
        return Learner(Decoder(TINY, rngs=nnx.Rngs(0)), dataclasses.replace(
            CFG, micro_batch_size=micro, length_buckets=buckets, loss_aggregation=aggregation))

    bucketed, padded = learner(2, (8, 16, 32)), learner(0, (32,))
    logp = padded.logprobs(padded.params, batch)
    np.testing.assert_allclose(bucketed.logprobs(bucketed.params, batch), logp, atol=1e-5)
    noise = lambda scale: scale * rng.normal(size=logp.shape).astype(np.float32) * batch.loss_mask  # noqa: E731
    batch = dataclasses.replace(batch, old_logprobs=logp + noise(0.3), ref_logprobs=logp + noise(0.5))
    got, want = bucketed.update(batch, mini_batches=2), padded.update(batch, mini_batches=2)
    for key in ("loss", "pg_loss", "kl", "clip_frac", "ratio", "entropy", "grad_norm", "tokens"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, err_msg=key)
    for a, b in zip(host_params(bucketed), host_params(padded)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    # Padded, the update computes 8 x 32 positions for 117 tokens; bucketed, 2 x (32 + 8 + 32 + 16).
    assert want["pad_frac"] == pytest.approx(1 - 117 / 256) and got["pad_frac"] == pytest.approx(1 - 117 / 176)
    assert dict(bucketed.compile_counts) == {"logprobs": 3, "accumulate": 3, "apply": 1}  # widths 8, 16, 32
    # A role's loss scale scales the gradient (so its norm), not the reported loss.
    scaled = learner(2, (8, 16, 32))
    halved = scaled.update(batch, mini_batches=2, loss_scale=0.5)
    np.testing.assert_allclose(halved["loss"], want["loss"], rtol=1e-5)
    np.testing.assert_allclose(halved["grad_norm"], 0.5 * want["grad_norm"], rtol=1e-4)


@pytest.mark.slow
def test_sharded_update_equals_single_device(full_batch_run):
    assert jax.device_count() == 8
    _, batch, _, expected, full_metrics = full_batch_run
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    learner = new_learner(micro_batch_size=ROWS // 2, mesh=mesh)
    metrics = learner.update(batch)
    for got, want in zip(host_params(learner), expected):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(metrics["loss"], full_metrics["loss"], rtol=1e-5)
    # Params, optimizer moments and the reference keep their rule-given layout after the update.
    assert learner.model.layers[0].mlp.up[...].sharding.spec == P("fsdp", "tensor")
    assert learner.optimizer.opt_state[1][0].mu["layers"][0]["mlp"]["up"][...].sharding.spec == P("fsdp", "tensor")
    assert learner.reference_params["lm_head"][...].sharding.spec == P("fsdp", "tensor")
    with pytest.raises(ValueError, match=r"micro_batch_size=2 is not a multiple of the 4 batch shards"):
        Learner(Decoder(TINY, rngs=nnx.Rngs(0)), dataclasses.replace(CFG, micro_batch_size=2),
                mesh=mesh).update(batch)


@pytest.mark.slow
def test_masked_tokens_change_neither_loss_nor_grads():
    batch = make_batch(Learner(Decoder(TINY, rngs=nnx.Rngs(0)), CFG))
    graphdef, params = nnx.split(Decoder(TINY, rngs=nnx.Rngs(0)))
    loss_fn = get_loss(CFG.loss)

    @jax.jit
    def loss_and_grads(params: nnx.State, batch: RLBatch):
        def loss(params: nnx.State) -> jax.Array:
            m = nnx.merge(graphdef, params)
            return loss_fn(token_logprobs(m, batch.tokens, batch.attention_mask), batch, CFG)[0]
        return jax.value_and_grad(loss)(params)

    loss, grads = loss_and_grads(params, batch)
    loss2, grads2 = loss_and_grads(params, perturb_masked(batch, seed=1))
    np.testing.assert_allclose(loss2, loss, atol=1e-7, rtol=0)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads2)):
        np.testing.assert_allclose(a, b, atol=1e-7, rtol=0)
    # Sanity: a masked prompt token *before* trained tokens does reach them through attention.
    prompt_changed = dataclasses.replace(batch, tokens=batch.tokens.copy())
    prompt_changed.tokens[0, 1] = (prompt_changed.tokens[0, 1] + 1) % 128
    assert abs(float(loss_and_grads(params, prompt_changed)[0]) - float(loss)) > 1e-6


@pytest.mark.slow
def test_state_restore_and_no_recompile_across_updates():
    """Restore makes a second update reproduce the first; masked perturbations change nothing; the
    same padded shape compiles once; mini-batch counts are validated."""
    learner = new_learner(micro_batch_size=2)
    batch = make_batch(learner)
    saved = jax.device_get(learner.state())
    first = learner.update(batch, mini_batches=2)
    after_first = host_params(learner)
    assert learner.step == 2

    learner.restore(saved)
    assert learner.step == 0
    for got, want in zip(host_params(learner), jax.tree.leaves(saved["policy"])):
        np.testing.assert_array_equal(got, want)
    again = learner.update(perturb_masked(batch, seed=2), mini_batches=2)
    for key in first:
        np.testing.assert_allclose(again[key], first[key], rtol=1e-6, atol=1e-7)
    for got, want in zip(host_params(learner), after_first):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)

    other = make_batch(learner, seed=5)  # different contents, same padded shape
    assert np.isfinite(learner.update(other, mini_batches=2)["loss"])
    assert dict(learner.compile_counts) == {"accumulate": 1, "apply": 1, "logprobs": 1}
    with pytest.raises(ValueError, match="8 rows does not split into mini_batches=3"):
        learner.update(batch, mini_batches=3)
    with pytest.raises(ValueError, match=r"mini-batch of 2 rows .* not a multiple of RLConfig.micro_batch_size=4"):
        Learner(Decoder(TINY, rngs=nnx.Rngs(0)), dataclasses.replace(CFG, micro_batch_size=4)).update(
            batch, mini_batches=4)


@pytest.mark.slow
def test_bf16_parameters_update_in_bf16():
    """`model.param_dtype="bfloat16"`: AdamW's moments are made from the parameters, so the fp32
    accumulated gradients are applied in bf16 (they used to promote the moments inside the loop,
    which failed to trace)."""
    cfg = dataclasses.replace(TINY, dtype="bfloat16", param_dtype="bfloat16")
    learner = Learner(Decoder(cfg, rngs=nnx.Rngs(0)), dataclasses.replace(CFG, lr=1e-2))
    before = host_params(learner)
    metrics = learner.update(make_batch(learner), mini_batches=2)
    assert np.isfinite(metrics["loss"])
    assert {x.dtype for x in jax.tree.leaves(learner.params)} == {jnp.dtype(jnp.bfloat16)}
    assert any(not np.array_equal(a, b) for a, b in zip(before, host_params(learner)))


@pytest.mark.slow  # over 2 s
def test_rollout_params_sample_exactly_what_the_master_weights_sample():
    """fp32 master weights with bf16 compute: `rollout_params` casts once (sharded as the params), and
    the engine samples the same tokens with the same log-probs from the cast weights, since every
    use casts them anyway. With weights stored in the compute dtype it is the params themselves."""
    from ssp_jax.engine.engine import Engine, EngineConfig
    from ssp_jax.engine.sampling import SamplingParams

    mesh = make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
    cfg = dataclasses.replace(TINY, dtype="bfloat16")
    learner = Learner(Decoder(cfg, rngs=nnx.Rngs(0)), CFG, mesh=mesh)
    rollout = learner.rollout_params(learner.params)
    assert {x.dtype for x in jax.tree.leaves(rollout)} == {jnp.dtype(jnp.bfloat16)}
    assert [x.sharding for x in jax.tree.leaves(rollout)] == [x.sharding for x in jax.tree.leaves(learner.params)]
    engine = Engine(learner.model, EngineConfig(num_slots=2, max_cache_len=32, prefill_buckets=(8,),
                                                extend_buckets=(8,), decode_steps=8), mesh=mesh)
    outputs = []
    for params in (learner.params, rollout):
        state = engine.init_decode_state()
        for slot, prompt in enumerate(([3, 4, 5], [9, 8, 7, 6, 5])):
            state = engine.insert(engine.prefill(params, prompt), state, slot, seed=slot,
                                  sampling=SamplingParams(temperature=1.0), budget=8)
        _, out = engine.generate(params, state)
        outputs.append((np.asarray(out.tokens), np.asarray(out.logprobs)))
    np.testing.assert_array_equal(outputs[0][0], outputs[1][0])
    np.testing.assert_array_equal(outputs[0][1], outputs[1][1])
    plain = Learner(Decoder(TINY, rngs=nnx.Rngs(0)), CFG)
    assert all(a is b for a, b in zip(jax.tree.leaves(plain.rollout_params(plain.params)),
                                      jax.tree.leaves(plain.params)))


@pytest.mark.slow  # over 2 s
def test_nonfinite_gradients_are_skipped_and_counted():
    """The reference skips an update whose gradients are not finite: a NaN advantage in one of two
    mini-batches leaves that step's params, moments and step counter as they were; the other applies."""
    learner = new_learner()
    batch = make_batch(learner)
    before, step = host_params(learner), learner.step
    bad = np.asarray(batch.advantages).copy()
    bad[:ROWS // 2] = np.nan  # the first mini-batch's rows
    metrics = learner.update(dataclasses.replace(batch, advantages=jnp.asarray(bad)), mini_batches=2)
    assert metrics["skipped_nonfinite"] == 0.5 and learner.step == step + 1
    assert all(np.isfinite(x).all() for x in host_params(learner))
    assert any(not np.array_equal(a, b) for a, b in zip(before, host_params(learner)))
    clean = new_learner()
    np.testing.assert_equal(clean.update(make_batch(clean), mini_batches=2)["skipped_nonfinite"], 0.0)


@pytest.mark.slow  # over 2 s
def test_micro_batches_without_trained_tokens_are_skipped_and_counted(full_batch_run):
    """One row per micro-batch: the padding row's micro-batch holds no trained token, so it is not
    run (its gradient is zero), and the metric says so; the update equals the full batch's."""
    _, batch, _, expected, _ = full_batch_run
    learner = new_learner(micro_batch_size=1)
    metrics = learner.update(batch)
    assert metrics["skipped_micro_batches"] == 1.0
    for got, want in zip(host_params(learner), expected):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_reference_params_are_a_frozen_copy(full_batch_run):
    learner, batch, before, _, _ = full_batch_run
    for got, want in zip(jax.tree.leaves(learner.reference_params), before):
        np.testing.assert_array_equal(np.asarray(got), want)
    ref = learner.logprobs(learner.reference_params, batch)
    cur = learner.logprobs(learner.model, batch)
    assert jnp.abs(ref - cur).max() > 1e-3
    assert float(jnp.abs(ref[:, 0]).max()) == 0.0 and float(jnp.abs(ref * (batch.attention_mask == 0)).max()) == 0.0


def test_token_logprobs_are_aligned_with_tokens():
    """logp[t] = log softmax(logits at t - 1)[tokens[t]]; 0 at t = 0 and on padding; chunking agrees."""
    graphdef, params = nnx.split(Decoder(dataclasses.replace(TINY, num_layers=1), rngs=nnx.Rngs(3)))
    tokens = np.random.default_rng(3).integers(1, 128, size=(2, 8)).astype(np.int32)
    mask = np.ones_like(tokens)
    mask[1, 5:] = 0

    @jax.jit
    def run(params: nnx.State, tokens: jax.Array, mask: jax.Array):
        model = nnx.merge(graphdef, params)
        hidden, _ = model(tokens, jnp.maximum(jnp.cumsum(mask, 1) - 1, 0), mask)
        full = jax.nn.log_softmax(model.logits(hidden), axis=-1)  # [2, 8, vocab]
        return full, token_logprobs(model, tokens, mask), token_logprobs(model, tokens, mask, chunk=4)

    full, logp, chunked = (np.asarray(x) for x in run(params, tokens, mask))
    expected = np.zeros(tokens.shape, np.float32)
    for b in range(2):
        for t in range(1, int(mask[b].sum())):
            expected[b, t] = full[b, t - 1, tokens[b, t]]
    np.testing.assert_allclose(logp, expected, atol=1e-5)
    np.testing.assert_allclose(chunked, expected, atol=1e-5)


@pytest.mark.slow
def test_updates_move_probability_towards_positive_advantages():
    """The sign of learning: a few on-policy updates raise the trained-token log-prob of every
    positive-advantage row and lower it for every negative one; zero-advantage rows stay close."""
    learner = Learner(Decoder(TINY, rngs=nnx.Rngs(1)), RLConfig(lr=3e-3, warmup_steps=0, kl_coef=0.0))
    seqs, masks = trajectories(seed=5)
    advantages = np.array([1.0, -1.0, 0.0, 1.0, -1.0, 0.0, 1.0], np.float32)
    batch = pack_batch(seqs, masks, None, advantages, length_buckets=(16,), batch_multiple=ROWS)

    def row_logp() -> np.ndarray:  # [rows] summed over trained tokens
        return np.asarray(learner.logprobs(learner.params, batch) * batch.loss_mask).sum(axis=1)[:ROWS - 1]

    before = row_logp()
    for _ in range(5):
        learner.update(dataclasses.replace(batch, old_logprobs=learner.logprobs(learner.params, batch)))
    moved = row_logp() - before
    assert (moved[advantages > 0] > 0.1).all() and (moved[advantages < 0] < -0.1).all(), moved
    assert (np.abs(moved[advantages == 0]) < np.abs(moved[advantages != 0]).min()).all(), moved
