"""Policy losses over per-token log-probs: `loss(logp, batch, cfg, weights) -> (loss, metrics)`.

A loss is sum over rows b and trained tokens t of weights_b * x_bt. `weights` [rows] come from the
mini-batch's loss aggregation (`rl/aggregation.py`), computed over the whole mini-batch, so the
micro-batch losses and gradients sum to the mini-batch's; by default (None) they make the
batch's own token-mean. Metrics use the same weights, so they too are additive over micro-batches.

Entropy needs the full next-token distribution, which `logp` (log p of the taken token only) does
not carry; it is not reported here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np

from ssp_jax.registry import Registry
from ssp_jax.rl.batch import RLBatch


class LossParams(Protocol):
    """What a loss reads from its config, and nothing more (`RLConfig` provides it): the loss does
    not see the optimizer or the schedule."""

    @property
    def eps_low(self) -> float: ...
    @property
    def eps_high(self) -> float: ...
    @property
    def dual_clip(self) -> float: ...
    @property
    def log_ratio_clamp(self) -> float: ...
    @property
    def kl_coef(self) -> float: ...
    @property
    def kl_clamp(self) -> float: ...


LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
LOSSES: Registry[LossFn] = Registry("loss")


def get_loss(name: str) -> LossFn:
    return LOSSES.get(name)


def token_count(loss_mask: np.ndarray | jax.Array) -> jax.Array:
    """max(sum(mask), 1): an all-masked batch divides by 1 and gives 0, not NaN."""
    return jnp.maximum(jnp.sum(loss_mask.astype(jnp.float32)), 1.0)


def k3_kl(logp: jax.Array, ref_logp: jax.Array, log_clamp: float, kl_clamp: float) -> jax.Array:
    """k3 estimator of KL(pi || ref): exp(d) - d - 1 with d = ref - logp; unbiased, always >= 0.

    d is clamped first so exp stays finite (a clipped inf would give 0 * inf = NaN gradients), and
    the result is clamped to +-kl_clamp as veRL's `low_var_kl` does.
    """
    d = jnp.clip(ref_logp - logp, -log_clamp, log_clamp)
    return jnp.clip(jnp.exp(d) - d - 1.0, -kl_clamp, kl_clamp)


@LOSSES.register("ppo_clip")
def ppo_clip(logp: jax.Array, batch: RLBatch, cfg: LossParams,
             weights: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """PPO-clip with asymmetric clip, dual clip for A < 0, plus `kl_coef` * k3 KL to the reference.

    Per token (as veRL `compute_policy_loss` with `clip_ratio_c`):
      pg = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high)), then for A < 0: min(pg, -A c),
    with r = exp(clip(logp - old, +-log_ratio_clamp)). logp: [B, T] log-probs under the policy
    being trained, aligned with `batch.tokens`.
    """
    mask = batch.loss_mask.astype(jnp.float32)  # [B, T]
    trained = mask > 0
    if weights is None:
        weights = jnp.full(mask.shape[:1], 1.0, jnp.float32) / token_count(mask)  # [B]: the token-mean
    weighted = mask * weights.astype(jnp.float32)[:, None]  # [B, T]

    def mean(x: np.ndarray | jax.Array) -> jax.Array:
        return jnp.sum(weighted * x)

    # Masked positions are zeroed before exp: their inputs may be arbitrary (padding, tool tokens).
    logp = jnp.where(trained, logp, 0.0)
    old = jnp.where(trained, batch.old_logprobs, 0.0)
    ref = jnp.where(trained, batch.ref_logprobs, 0.0)
    adv = batch.advantages.astype(jnp.float32)[:, None]  # [B, 1]

    ratio = jnp.exp(jnp.clip(logp - old, -cfg.log_ratio_clamp, cfg.log_ratio_clamp))  # [B, T]
    pg_unclipped = -adv * ratio
    pg_clipped = -adv * jnp.clip(ratio, 1.0 - cfg.eps_low, 1.0 + cfg.eps_high)
    pg = jnp.maximum(pg_unclipped, pg_clipped)  # [B, T]
    dual_bound = -adv * cfg.dual_clip
    dual_active = (adv < 0) & (pg > dual_bound)
    pg = jnp.where(dual_active, dual_bound, pg)
    kl = k3_kl(logp, ref, cfg.log_ratio_clamp, cfg.kl_clamp)  # [B, T]

    pg_loss, kl_mean = mean(pg), mean(kl)
    metrics = {
        "pg_loss": pg_loss,
        "kl": kl_mean,
        "clip_frac": mean((pg_clipped > pg_unclipped).astype(jnp.float32)),
        "dual_clip_frac": mean(dual_active.astype(jnp.float32)),
        "ratio": mean(ratio),
    }
    return pg_loss + cfg.kl_coef * kl_mean, metrics
