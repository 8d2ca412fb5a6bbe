"""Token sampling with per-slot parameters and per-slot, position-keyed PRNG.

Every slot carries its own temperature / top-k / top-p, so greedy evaluation and temperature-1
rollouts can share one compiled decode step. The key of a slot's n-th sampled token is
`fold_in(slot_seed, n)`: a trajectory's samples do not depend on which other slots were busy.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """temperature 0 = greedy; top_k 0 = off; top_p 1 = off. Training rollouts take theirs from
    `config.selfplay` (temperature, top_k, top_p, proposer_temperature)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature={self.temperature} must be >= 0")
        if self.top_k < 0:
            raise ValueError(f"SamplingParams.top_k={self.top_k} must be >= 0 (0 = off)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p={self.top_p} must be in (0, 1]")


GREEDY = SamplingParams(temperature=0.0)


def _filter_top_k_top_p(scaled: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Set logits outside each row's top-k and top-p nucleus to -inf. scaled: [slots, vocab]."""
    vocab = scaled.shape[-1]
    sorted_desc = -jnp.sort(-scaled, axis=-1)  # [slots, vocab]
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)  # [slots]
    sorted_desc = jnp.where(jnp.arange(vocab) < k[:, None], sorted_desc, -jnp.inf)
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    # Keep token i while the mass strictly before it is < top_p (so the first token is always kept).
    keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p[:, None]
    keep = keep & (jnp.arange(vocab) < k[:, None])
    threshold = jnp.take_along_axis(sorted_desc, keep.sum(-1, keepdims=True) - 1, axis=-1)  # [slots, 1]
    return jnp.where(scaled < threshold, -jnp.inf, scaled)


def sample(logits: jax.Array, keys: jax.Array, temperature: jax.Array, top_k: jax.Array,
           top_p: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sample one token per slot. Returns (tokens [slots], log-probs [slots]).

    logits: [slots, vocab] fp32; keys: [slots] PRNG keys; temperature/top_k/top_p: [slots].
    The log-prob is under the model's own distribution (temperature 1, unfiltered), which is what
    the RL importance ratio needs, whatever the sampling settings were.
    """
    greedy = temperature <= 0
    best = jnp.argmax(logits, axis=-1).astype(jnp.int32)  # [slots]

    def draw() -> jax.Array:
        scaled = logits / jnp.where(greedy, 1.0, temperature)[:, None]
        needs_filter = jnp.any((top_k > 0) | (top_p < 1))
        scaled = jax.lax.cond(needs_filter, _filter_top_k_top_p, lambda s, k, p: s, scaled, top_k, top_p)
        sampled = jax.vmap(jax.random.categorical)(keys, scaled)
        return jnp.where(greedy, best, sampled).astype(jnp.int32)

    # All-greedy steps (evaluation) skip the [slots, vocab] of random bits a draw costs.
    tokens = jax.lax.cond(jnp.all(greedy), lambda: best, draw)
    logprobs = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tokens[:, None], axis=-1)[:, 0]
    return tokens, logprobs
