"""Outcome advantage estimators: one scalar per sequence from its (group of) rewards.

All estimators share one signature, `rewards [groups, n] -> advantages [groups, n]`, so a role's
estimator is a config string (`RLConfig.solver_advantage`). A group is the n rollouts of one prompt.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ssp_jax.registry import Registry

AdvantageFn = Callable[[np.ndarray | jax.Array], jax.Array]
ADVANTAGES: Registry[AdvantageFn] = Registry("advantage")


def get_advantage(name: str) -> AdvantageFn:
    return ADVANTAGES.get(name)


@ADVANTAGES.register("grpo")
def grpo(rewards: np.ndarray | jax.Array, eps: float = 1e-6) -> jax.Array:
    """GRPO: A = (r - mean) / (std + eps) within each group (row).

    std is the unbiased (n - 1) estimator, as veRL's `compute_grpo_outcome_advantage` (torch.std)
    uses. A group of identical rewards gets 0. A group of size 1 gets 0: one sample carries no
    relative signal (veRL instead falls back to mean 0, std 1, i.e. A = r).
    """
    rewards = jnp.asarray(rewards, jnp.float32)  # [groups, n]
    if rewards.ndim != 2:
        raise ValueError(f"grpo expects rewards of shape [groups, n], got {rewards.shape}")
    if rewards.shape[1] == 1:
        return jnp.zeros_like(rewards)
    centred = rewards - rewards.mean(axis=1, keepdims=True)  # [groups, n]
    std = jnp.std(rewards, axis=1, keepdims=True, ddof=1)  # [groups, 1]
    return centred / (std + eps)


@ADVANTAGES.register("reinforce")
def reinforce(rewards: np.ndarray | jax.Array) -> jax.Array:
    """REINFORCE without a baseline: A = r (SSP's proposer, one sample per answer)."""
    return jnp.asarray(rewards, jnp.float32)
