"""RL math against hand-computed values: advantages, PPO-clip / dual-clip / k3 KL, masking, packing,
the warm-up schedule, registries and config validation."""

import math

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssp_jax.rl.advantages import ADVANTAGES, get_advantage, grpo, reinforce
from ssp_jax.rl.aggregation import AGGREGATIONS
from ssp_jax.rl.batch import MicroBatch, RLBatch, pack_batch, plan_micro_batches, take_rows
from ssp_jax.rl.config import RLConfig
from ssp_jax.rl.losses import LOSSES, get_loss, ppo_clip
from ssp_jax.rl.update import learning_rate

# --- advantages ---------------------------------------------------------------------------------


def test_grpo_hand_values():
    rewards = jnp.array([[1.0, 0.0, 0.0, 1.0, 0.0],  # mean 0.4, unbiased std sqrt(0.3)
                         [1.0, 1.0, 1.0, 1.0, 1.0],  # identical: no signal
                         [0.0, 0.0, 0.0, 0.0, 0.0]])
    expected = [[1.0954431, -0.7302954, -0.7302954, 1.0954431, -0.7302954], [0.0] * 5, [0.0] * 5]
    np.testing.assert_allclose(grpo(rewards), expected, atol=1e-6)
    # Two samples: mean 1, unbiased std sqrt(2) (the population std would give +-1).
    np.testing.assert_allclose(grpo(jnp.array([[0.0, 2.0]])), [[-0.7071063, 0.7071063]], atol=1e-6)


def test_grpo_single_sample_groups_get_zero():
    np.testing.assert_array_equal(grpo(jnp.array([[1.0], [0.0], [0.25]])), np.zeros((3, 1)))
    with pytest.raises(ValueError, match=r"\[groups, n\]"):
        grpo(jnp.array([1.0, 0.0]))


def test_reinforce_is_the_reward():
    rewards = jnp.array([[0.5], [0.0], [1.0]])
    np.testing.assert_array_equal(reinforce(rewards), rewards)


def test_registries_by_name():
    assert get_advantage("grpo") is grpo and get_advantage("reinforce") is reinforce
    assert get_loss("ppo_clip") is ppo_clip
    with pytest.raises(KeyError, match=r"unknown advantage 'gae'; registered: \['grpo', 'reinforce'\]"):
        get_advantage("gae")
    with pytest.raises(KeyError, match=r"unknown loss 'dpo'; registered: \['ppo_clip'\]"):
        get_loss("dpo")
    # Registering the same function twice is a no-op; another function under a taken name is not.
    assert ADVANTAGES.register("grpo")(grpo) is grpo
    assert ADVANTAGES.register("grpo")(grpo.__wrapped__) is grpo
    with pytest.raises(ValueError, match="'ppo_clip' is already registered"):
        LOSSES.register("ppo_clip")(lambda logp, batch, cfg, weights=None: (0.0, {}))


def test_registered_functions_are_gin_configurable():
    try:
        gin.parse_config("grpo.eps = 0.5")
        np.testing.assert_allclose(grpo(jnp.array([[0.0, 2.0]])), [[-1 / (math.sqrt(2) + 0.5),
                                                                    1 / (math.sqrt(2) + 0.5)]], rtol=1e-6)
    finally:
        gin.clear_config()


# --- PPO-clip -----------------------------------------------------------------------------------

CFG = RLConfig()  # eps 0.2 / 0.285, dual clip 3, log-ratio clamp 20, kl coef 0.01, kl clamp 10


def make_batch(ratios, kl_d, advantages, loss_mask, old=-1.0) -> tuple[jax.Array, RLBatch]:
    """logp and a batch whose per-token ratio = exp(logp - old) and ref - logp = kl_d."""
    ratios, kl_d = np.asarray(ratios, np.float64), np.asarray(kl_d, np.float64)
    logp = (old + np.log(ratios)).astype(np.float32)
    batch = RLBatch(tokens=np.zeros(ratios.shape, np.int32), attention_mask=np.ones(ratios.shape, np.int32),
                    loss_mask=np.asarray(loss_mask, np.float32),
                    old_logprobs=np.full(ratios.shape, old, np.float32),
                    ref_logprobs=(logp + kl_d).astype(np.float32),
                    advantages=np.asarray(advantages, np.float32))
    return jnp.asarray(logp), batch


# Row 0 (A = +1): r = 1.1 inside the clip range; r = 1.5 clipped to 1.285; r = 0.5 (A > 0: unclipped).
# Row 1 (A = -2): r = 0.5 clipped to 0.8; r = 10 hits the dual clip 3 * 2 = 6; the last token is masked.
RATIOS = [[1.0, 1.1, 1.5, 0.5], [1.0, 0.5, 10.0, 7.0]]
KL_D = [[0.0, 0.0, math.log(2.0), -1.0], [0.0, 1.0, 3.0, 5.0]]  # k3: 0, 0.30685, 0.36788 | 0.71828, 10 (clamped)
MASK = [[0, 1, 1, 1], [0, 1, 1, 0]]
PG = (-1.1 - 1.285 - 0.5 + 1.6 + 6.0) / 5
KL = (0.0 + 0.3068528 + 0.3678794 + 0.7182818 + 10.0) / 5


def test_ppo_clip_hand_values():
    logp, batch = make_batch(RATIOS, KL_D, [1.0, -2.0], MASK)
    loss, metrics = ppo_clip(logp, batch, CFG)
    np.testing.assert_allclose(metrics["pg_loss"], PG, rtol=1e-5)
    np.testing.assert_allclose(metrics["kl"], KL, rtol=1e-5)
    np.testing.assert_allclose(loss, PG + 0.01 * KL, rtol=1e-5)
    np.testing.assert_allclose(metrics["clip_frac"], 2 / 5, rtol=1e-6)  # row 0 r=1.5, row 1 r=0.5
    np.testing.assert_allclose(metrics["dual_clip_frac"], 1 / 5, rtol=1e-6)
    np.testing.assert_allclose(metrics["ratio"], (1.1 + 1.5 + 0.5 + 0.5 + 10.0) / 5, rtol=1e-5)


def test_ppo_clip_gradients_vanish_where_clipped():
    logp, batch = make_batch(RATIOS, KL_D, [1.0, -2.0], MASK)
    grad = np.asarray(jax.grad(lambda lp: ppo_clip(lp, batch, CFG)[0])(logp))
    kl_grad = lambda d: -0.01 * (math.exp(d) - 1.0) / 5  # noqa: E731  d(k3)/d(logp) = -(e^d - 1)
    expected = [[0.0, -1.1 / 5 + kl_grad(0.0), kl_grad(math.log(2.0)), -0.5 / 5 + kl_grad(-1.0)],
                [0.0, kl_grad(1.0), 0.0, 0.0]]  # clipped / dual-clipped / kl-clamped / masked: 0
    np.testing.assert_allclose(grad, expected, atol=1e-6)


def test_ppo_clip_log_ratio_and_kl_clamps_stay_finite():
    # log ratio +30 is clamped to 20; ref - logp of -50 / +100 saturate the KL clamp with zero gradient.
    logp, batch = make_batch([[1.0, math.exp(30.0), math.exp(30.0)]], [[0.0, -50.0, 100.0]], [-1.0],
                             [[0, 1, 1]])
    loss, metrics = ppo_clip(logp, batch, CFG)
    np.testing.assert_allclose(metrics["ratio"], math.exp(20.0), rtol=1e-5)
    np.testing.assert_allclose(metrics["pg_loss"], 3.0, rtol=1e-6)  # dual clip: -A * c
    np.testing.assert_allclose(metrics["kl"], 10.0, rtol=1e-6)
    grad = jax.grad(lambda lp: ppo_clip(lp, batch, CFG)[0])(logp)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))


def test_all_masked_rows_contribute_nothing():
    logp, batch = make_batch(RATIOS, KL_D, [1.0, -2.0], MASK)
    # A third row: fully masked, with a large advantage and garbage (NaN / huge) log-probs.
    extra = dict(tokens=np.zeros((1, 4), np.int32), attention_mask=np.ones((1, 4), np.int32),
                 loss_mask=np.zeros((1, 4), np.float32), old_logprobs=np.full((1, 4), np.nan, np.float32),
                 ref_logprobs=np.full((1, 4), 1e30, np.float32), advantages=np.array([5.0], np.float32))
    bigger = RLBatch(**{k: np.concatenate([getattr(batch, k), v]) for k, v in extra.items()})
    logp3 = jnp.concatenate([logp, jnp.full((1, 4), jnp.nan)])
    loss, _ = ppo_clip(logp3, bigger, CFG)
    np.testing.assert_allclose(loss, PG + 0.01 * KL, rtol=1e-5)
    assert np.all(np.isfinite(jax.grad(lambda lp: ppo_clip(lp, bigger, CFG)[0])(logp3)))


def test_all_masked_batch_gives_zero():
    logp, batch = make_batch(RATIOS, KL_D, [1.0, -2.0], np.zeros((2, 4)))
    loss, metrics = ppo_clip(logp, batch, CFG)
    assert float(loss) == 0.0 and all(float(v) == 0.0 for v in metrics.values())
    grad = jax.grad(lambda lp: ppo_clip(lp, batch, CFG)[0])(logp)
    np.testing.assert_array_equal(grad, np.zeros((2, 4)))


def test_mini_batch_weights_make_micro_batch_losses_additive():
    logp, batch = make_batch(RATIOS, KL_D, [1.0, -2.0], MASK)
    rows = [RLBatch(**{k: getattr(batch, k)[i:i + 1] for k in batch.__dataclass_fields__}) for i in range(2)]
    parts = [ppo_clip(logp[i:i + 1], rows[i], CFG, weights=jnp.full(1, 1 / 5, jnp.float32))[0] for i in range(2)]
    np.testing.assert_allclose(sum(parts), PG + 0.01 * KL, rtol=1e-5)


def test_aggregation_weights_by_hand():
    """Rows of 3, 2 and 0 trained tokens (the last is padding: weight 0, not counted as a row)."""
    mask = np.array(MASK + [[0, 0, 0, 0]], np.float32)
    np.testing.assert_allclose(AGGREGATIONS.get("token_mean")(mask), [1 / 5] * 3)
    np.testing.assert_allclose(AGGREGATIONS.get("seq_mean_token_mean")(mask), [1 / 6, 1 / 4, 0.0])
    np.testing.assert_allclose(AGGREGATIONS.get("seq_mean_token_sum")(mask), [1 / 2, 1 / 2, 0.0])
    assert AGGREGATIONS.get("seq_mean_token_mean")(np.zeros((2, 3))).tolist() == [0.0, 0.0]


def test_ppo_clip_aggregated_by_sequence_by_hand():
    """The reference's effective loss: each sequence's token-mean, averaged over sequences. Row 0's
    pg terms are -1.1, -1.285, -0.5 and row 1's 1.6, 6.0; k3 0, 0.30685, 0.36788 and 0.71828, 10."""
    logp, batch = make_batch(RATIOS, KL_D, [1.0, -2.0], MASK)
    weights = jnp.asarray(AGGREGATIONS.get("seq_mean_token_mean")(np.asarray(MASK, np.float32)))
    pg = ((-1.1 - 1.285 - 0.5) / 3 + (1.6 + 6.0) / 2) / 2
    kl = ((0.0 + 0.3068528 + 0.3678794) / 3 + (0.7182818 + 10.0) / 2) / 2
    loss, metrics = ppo_clip(logp, batch, CFG, weights=weights)
    np.testing.assert_allclose(loss, pg + 0.01 * kl, rtol=1e-5)
    np.testing.assert_allclose(metrics["pg_loss"], pg, rtol=1e-5)
    sums = AGGREGATIONS.get("seq_mean_token_sum")(np.asarray(MASK, np.float32))
    np.testing.assert_allclose(ppo_clip(logp, batch, CFG, weights=jnp.asarray(sums))[1]["pg_loss"],
                               ((-1.1 - 1.285 - 0.5) + (1.6 + 6.0)) / 2, rtol=1e-5)
    assert RLConfig().loss_aggregation == "seq_mean_token_mean" and RLConfig().proposer_loss_scale == 0.4
    with pytest.raises(ValueError, match="loss_aggregation='seq_mean'"):
        RLConfig(loss_aggregation="seq_mean")


# --- packing, schedule, config ------------------------------------------------------------------


def test_pack_batch_pads_to_bucket_and_multiple():
    batch = pack_batch([[5, 6, 7], [8, 9, 10, 11, 12]], [[0, 1, 1], [0, 0, 1, 0, 1]],
                       [[0.0, -0.5, -0.25], [0.0, 0.0, -1.0, 0.0, -2.0]], [1.0, -1.0],
                       length_buckets=(4, 8, 16), batch_multiple=4)
    assert batch.tokens.shape == (4, 8) and batch.tokens.dtype == np.int32
    np.testing.assert_array_equal(batch.tokens[1], [8, 9, 10, 11, 12, 0, 0, 0])
    np.testing.assert_array_equal(batch.attention_mask[0], [1, 1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(batch.loss_mask[1], [0, 0, 1, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(batch.old_logprobs[0, :3], [0.0, -0.5, -0.25])
    np.testing.assert_array_equal(batch.advantages, [1.0, -1.0, 0.0, 0.0])
    assert not batch.attention_mask[2:].any() and not batch.loss_mask[2:].any()  # padding rows
    assert not batch.ref_logprobs.any()


@pytest.mark.parametrize("kwargs,message", [
    (dict(sequences=[[1] * 9]), "9 tokens exceeds the largest length bucket 8"),
    (dict(loss_masks=[[1, 1]]), r"loss_mask\[0\] must be 0"),
    (dict(loss_masks=[[0]]), "row 0: 2 tokens but 1 loss_mask"),
    (dict(advantages=[1.0, 2.0]), "1 sequences but 1 loss_masks, 2 advantages"),
])
def test_pack_batch_errors(kwargs, message):
    args = dict(sequences=[[1, 2]], loss_masks=[[0, 1]], old_logprobs=None, advantages=[1.0],
                length_buckets=(8,), batch_multiple=1)
    with pytest.raises(ValueError, match=message):
        pack_batch(**{**args, **kwargs})


def test_micro_batch_plan_groups_rows_by_length_inside_each_mini_batch():
    lengths = np.array([3, 30, 9, 17, 0, 12, 5, 31])  # rows 0-3 and 4-7 are the two mini-batches
    plan = plan_micro_batches(lengths, blocks=2, micro=2, length_buckets=(4, 8, 16, 24, 64), max_width=32)
    assert [[m.rows.tolist() for m in block] for block in plan] == [[[1, 3], [2, 0]], [[7, 5], [6, 4]]]
    assert [[m.width for m in block] for block in plan] == [[32, 16], [32, 8]]  # 64 is capped at 32
    # One micro-batch per block: row order kept, width from the block's longest row.
    whole = plan_micro_batches(lengths, blocks=2, micro=4, length_buckets=(8, 16), max_width=32)
    assert [m.rows.tolist() for block in whole for m in block] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [m.width for block in whole for m in block] == [32, 32]
    # All padding rows: the smallest bucket.
    assert plan_micro_batches(np.zeros(2, int), 1, 2, (8, 16), 16)[0][0].width == 8
    with pytest.raises(ValueError, match="8 rows do not split into 3 blocks"):
        plan_micro_batches(lengths, blocks=3, micro=1, length_buckets=(8,), max_width=8)


def test_take_rows_cuts_a_micro_batch_to_its_width():
    batch = pack_batch([[5, 6, 7], [8, 9, 10, 11, 12]], [[0, 1, 1], [0, 0, 1, 0, 1]], None, [1.0, -1.0],
                       length_buckets=(4, 8), batch_multiple=1)
    micro = take_rows(batch, MicroBatch(rows=np.array([0]), width=4))
    np.testing.assert_array_equal(micro.tokens, [[5, 6, 7, 0]])
    np.testing.assert_array_equal(micro.loss_mask, [[0, 1, 1, 0]])
    np.testing.assert_array_equal(micro.advantages, [1.0])


def test_warmup_schedule():
    schedule = learning_rate(RLConfig(lr=1e-6, warmup_steps=5))
    np.testing.assert_allclose([schedule(k) for k in (0, 1, 4, 5, 100)], [2e-7, 4e-7, 1e-6, 1e-6, 1e-6])
    np.testing.assert_allclose(learning_rate(RLConfig(lr=1e-3, warmup_steps=0))(0), 1e-3)


def test_rl_config_defaults_are_ssp():
    cfg = RLConfig()
    assert (cfg.lr, cfg.warmup_steps, cfg.weight_decay, cfg.max_grad_norm) == (1e-6, 5, 0.01, 1.0)
    assert (cfg.eps_low, cfg.eps_high, cfg.dual_clip, cfg.log_ratio_clamp) == (0.2, 0.285, 3.0, 20.0)
    assert (cfg.kl_coef, cfg.kl_clamp, cfg.ppo_epochs) == (0.01, 10.0, 1)
    assert (cfg.solver_advantage, cfg.proposer_advantage) == ("grpo", "reinforce")
    assert (cfg.solver_mini_batches, cfg.proposer_mini_batches) == (2, 1)


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(lr=0.0), ValueError, r"RLConfig\.lr must be > 0"),
    (dict(eps_low=1.5), ValueError, r"RLConfig\.eps_low must be in \[0, 1\)"),
    (dict(micro_batch_size=-2), ValueError, r"RLConfig\.micro_batch_size must be >= 0"),
    (dict(dual_clip=1.1), ValueError, r"RLConfig\.dual_clip=1\.1 must exceed"),
    (dict(loss="dpo"), ValueError, r"RLConfig\.loss='dpo' is not registered; known: \['ppo_clip'\]"),
    (dict(solver_advantage="gae"), ValueError, r"RLConfig\.solver_advantage='gae' is not registered"),
    (dict(ppo_epochs=1.5), TypeError, r"RLConfig\.ppo_epochs must be int"),
    (dict(kl_coef="0.1"), TypeError, r"RLConfig\.kl_coef must be float"),
    (dict(warmup_steps=True), TypeError, r"RLConfig\.warmup_steps must be int"),
    (dict(xla_options=(("xla_tpu_enable_latency_hiding_scheduler",),)), ValueError,
     r"RLConfig\.xla_options=.* must be \(name, value\) pairs of strings"),
])
def test_rl_config_errors_name_the_field(kwargs, error, message):
    with pytest.raises(error, match=message):
        RLConfig(**kwargs)


def test_rl_config_section_names_unknown_fields():
    from ssp_jax.config import load_config

    assert load_config({"rl": {"lr": 2e-6}}).rl.lr == 2e-6
    with pytest.raises(ValueError, match=r"config\.rl has no field 'learning_rate'"):
        load_config({"rl": {"learning_rate": 1e-6}})
