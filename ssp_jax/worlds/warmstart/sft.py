"""Supervised fine-tuning on demonstrations: the micro world's stand-in for "an instruct model".

Next-token NLL, token-mean over each sequence's loss mask (retrieved passages and prompts are
masked out exactly as in RL), AdamW with linear warm-up then cosine decay, global-norm clip.
Each batch is drawn from one length bucket (the bucket chosen with probability proportional to
its share of the sequences, so every sequence is equally likely), so short demos are not padded to
the longest one's bucket: on CPU this halves the cost of a typical mix. A seeded generator makes a
run deterministic, and it compiles once per bucket.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh
from tqdm.auto import tqdm

from ssp_jax.models.decoder import Decoder, positions_from_mask, token_logprobs
from ssp_jax.models.shapes import batch_shards, bucket_for
from ssp_jax.models.sharding import DEFAULT_RULES, Rules, shard_batch
from ssp_jax.rl.batch import pack_batch


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """Supervised fine-tuning of the warm start: steps, batch, the AdamW schedule and the length buckets
    its packed batches pad to."""

    steps: int = 1500
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    length_buckets: tuple[int, ...] = (128, 256, 512, 1024)
    seed: int = 0
    # Project onto the vocabulary only at trained positions (gathered), not at every token. Demos
    # over real passages are mostly prompt and retrieved text, so with a 152k vocabulary this cuts
    # a step's cost several-fold; the loss is the same sum.
    trained_positions_only: bool = False

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"SFTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"SFTConfig needs lr > 0 and 0 <= warmup_steps <= steps, got {self.lr}, "
                             f"{self.warmup_steps}")


def sft(model: Decoder, sequences: Sequence[Sequence[int]], loss_masks: Sequence[Sequence[int]], cfg: SFTConfig,
        *, mesh: Mesh | None = None, rules: Rules = DEFAULT_RULES, progress: bool = True) -> list[float]:
    """Train `model` in place; returns the loss of every step."""
    if len(sequences) != len(loss_masks) or not sequences:
        raise ValueError(f"sft needs matching, non-empty sequences and masks ({len(sequences)}, {len(loss_masks)})")
    if cfg.trained_positions_only and mesh is not None:
        raise ValueError("SFTConfig.trained_positions_only runs on one device (mesh=None)")
    schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, max(cfg.warmup_steps, 1), cfg.steps)
    optimizer = nnx.Optimizer(model, optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm),
                                                 optax.adamw(schedule, weight_decay=cfg.weight_decay)), wrt=nnx.Param)

    @nnx.jit
    def step(model: Decoder, optimizer: nnx.Optimizer, tokens: jax.Array, mask: jax.Array,
             weights: jax.Array) -> jax.Array:
        def loss_fn(model: Decoder) -> jax.Array:
            logp = token_logprobs(model, tokens, mask)  # [batch, length]
            return -jnp.sum(logp * weights) / jnp.maximum(jnp.sum(weights), 1.0)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    @nnx.jit
    def sparse_step(model: Decoder, optimizer: nnx.Optimizer, tokens: jax.Array, mask: jax.Array,
                    rows: jax.Array, weights: jax.Array) -> jax.Array:
        """`rows` [k]: flat positions t whose next token t+1 is trained (padded with weight 0)."""
        def loss_fn(model: Decoder) -> jax.Array:
            hidden, _ = model(tokens, positions_from_mask(mask), mask)  # [batch, length, embed]
            picked = hidden.reshape(-1, hidden.shape[-1])[rows][None]  # [1, k, embed]
            targets = jnp.roll(tokens, -1, axis=1).reshape(-1)[rows][None]  # [1, k]
            logp = model.token_logprobs(picked, targets)[0]  # [k]
            return -jnp.sum(logp * weights) / jnp.maximum(jnp.sum(weights), 1.0)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    rng = np.random.default_rng(cfg.seed)
    widths = np.array([bucket_for(len(s), cfg.length_buckets) for s in sequences])
    groups = [np.flatnonzero(widths == w) for w in np.unique(widths)]
    share = np.array([len(g) for g in groups]) / len(sequences)
    shards = batch_shards(mesh, rules)
    losses = []
    with tqdm(total=cfg.steps, desc="warm start (SFT)", disable=not progress) as bar:
        for _ in range(cfg.steps):
            group = groups[rng.choice(len(groups), p=share)]
            rows = rng.choice(group, cfg.batch_size, replace=len(group) < cfg.batch_size)
            batch = pack_batch([sequences[i] for i in rows], [loss_masks[i] for i in rows], None,
                               np.zeros(len(rows)), cfg.length_buckets, batch_multiple=shards)
            if cfg.trained_positions_only:
                losses.append(float(sparse_step(model, optimizer, batch.tokens, batch.attention_mask,
                                                *_trained_rows(batch.loss_mask))))
            else:
                arrays = (batch.tokens, batch.attention_mask, batch.loss_mask)
                if mesh is not None:
                    arrays = shard_batch(arrays, mesh, rules)
                losses.append(float(step(model, optimizer, *arrays)))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return losses


def _trained_rows(loss_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, weights) [k]: the flat positions t whose token t+1 is trained, padded to a power of
    two (>= 64, so few shapes compile) with weight 0."""
    nxt = np.pad(np.asarray(loss_mask)[:, 1:], ((0, 0), (0, 1))).reshape(-1)  # [batch * length]
    rows = np.flatnonzero(nxt > 0)
    k = max(64, 1 << int(np.ceil(np.log2(max(len(rows), 1)))))
    weights = np.zeros(k, np.float32)
    weights[:len(rows)] = nxt[rows]
    return np.pad(rows, (0, k - len(rows))).astype(np.int32), weights
