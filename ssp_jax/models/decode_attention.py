"""Ragged decode attention: one query token per slot against the filled part of its KV cache.

Why: a decode step is bound by HBM reads, and over a preallocated cache `attend` reads every
position of every slot whatever the slots hold. At the Qwen2.5-7B setting (256 slots, a 12,288-token
cache, trajectories near 4,000 tokens) that is about three times the bytes the slots hold.

This Pallas TPU kernel walks the cache in blocks of positions, a few slots per grid step (a step
costs about 0.35 us whatever it does, so one slot per step would cost more than its reads). A slot
computes only the blocks below its length; a step fetches only the blocks below the longest of its
slots (past that the block index repeats, and the pipeline does not re-fetch a block it holds).
Softmax is the online (flash) form in fp32. The cache must hold each slot's tokens as a prefix,
[0, length): the engine keeps that invariant (chunks are right-padded, and a slot's length
advances by its real tokens).

On CPU it runs in Pallas interpret mode, which is how the tests check it against `attend`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

DECODE_BLOCKS = (512, 256, 128, 64, 32, 16, 8)  # positions per block, largest first; one must divide the cache
ROWS_PER_STEP = 8  # slots per grid step, at most: each grid step costs ~0.35 us on TPU, so fewer, larger steps
_LANES = 128  # the softmax statistics are kept lane-broadcast, as TPU vector registers hold them
_NEG_INF = -1e30


def decode_block(max_len: int) -> int:
    """The block of positions the kernel walks a `max_len` cache in."""
    block = next((b for b in DECODE_BLOCKS if max_len % b == 0), None)
    if block is None:
        raise ValueError(f"ragged decode attention needs a cache length that is a multiple of {DECODE_BLOCKS[-1]}, "
                         f"got {max_len}; set engine.max_cache_len (and decode_windows) to multiples of it")
    return block


def ragged_decode_attention(q: jax.Array, k: jax.Array, v: jax.Array, lengths: jax.Array, *,
                            interpret: bool = False) -> jax.Array:
    """q: [batch, kv_heads, group, head_dim], one token's queries grouped by their KV head; k, v:
    [batch, kv_heads, max_len, head_dim]; lengths: [batch] int32, positions [0, length) attended.
    Returns [batch, kv_heads, group, head_dim] in q's dtype; a slot of length 0 gets zeros.

    A grid step takes `rows` slots (up to ROWS_PER_STEP) and one block of positions of one KV head;
    the blocks fetched for a step's slots reach the longest of them."""
    batch, kv_heads, group, head_dim = q.shape
    max_len = k.shape[2]
    block = decode_block(max_len)
    rows = max(r for r in range(1, min(ROWS_PER_STEP, batch) + 1) if batch % r == 0)
    padded = -(-group // 8) * 8  # sublane multiple
    if padded != group:
        q = jnp.pad(q, ((0, 0), (0, 0), (0, padded - group), (0, 0)))
    lengths = lengths.astype(jnp.int32)
    # The last block each step's slots need; past it the index repeats, and the pipeline does not
    # fetch a block it already holds. (lax.div: `//` lowers through `sign`, which asks the host for
    # its TPU generation and fails when compiling for a TPU on a CPU host.)
    last = jax.lax.div(jnp.maximum(lengths.reshape(batch // rows, rows).max(axis=1) - 1, 0), block)

    def kv_block(r: jax.Array, h: jax.Array, i: jax.Array, lengths_ref: jax.Array,
                 last_ref: jax.Array) -> tuple[jax.Array | int, ...]:
        return r, h, jnp.minimum(i, last_ref[r]), 0

    row = pl.BlockSpec((rows, None, padded, head_dim), lambda r, h, i, lengths_ref, last_ref: (r, h, 0, 0))
    cache = pl.BlockSpec((rows, None, block, head_dim), kv_block)
    itemsize = jnp.dtype(k.dtype).itemsize
    out = pl.pallas_call(
        functools.partial(_kernel, rows=rows, block=block, scale=head_dim ** -0.5),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2, grid=(batch // rows, kv_heads, max_len // block), in_specs=[row, cache, cache],
            out_specs=row,
            scratch_shapes=[pltpu.VMEM((rows, padded, _LANES), jnp.float32),
                            pltpu.VMEM((rows, padded, _LANES), jnp.float32),
                            pltpu.VMEM((rows, padded, head_dim), jnp.float32)]),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
        # What a full cache costs; a step reads only what the slots hold (`ssp_jax.aot --project`
        # prices decode on a cache of the workload's mean length for this reason).
        cost_estimate=pl.CostEstimate(flops=4 * batch * kv_heads * padded * max_len * head_dim,
                                      transcendentals=batch * kv_heads * padded * max_len,
                                      bytes_accessed=2 * k.size * itemsize + 2 * q.size * q.dtype.itemsize),
        interpret=interpret,
    )(lengths, last, q, k, v)
    return out[:, :, :group]


def _kernel(lengths_ref: jax.Array, last_ref: jax.Array, q_ref: jax.Array, k_ref: jax.Array, v_ref: jax.Array,
            o_ref: jax.Array, m_ref: jax.Array, l_ref: jax.Array, acc_ref: jax.Array, *, rows: int, block: int,
            scale: float) -> None:
    """One grid step: `rows` slots x one KV head x one block of positions, folded into each slot's
    running softmax."""
    r, i = pl.program_id(0), pl.program_id(2)

    @pl.when(i == 0)
    def _init() -> None:
        m_ref[...] = jnp.full(m_ref.shape, _NEG_INF, jnp.float32)
        l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    for j in range(rows):  # unrolled: each slot its own 2-D matmuls and length
        length = lengths_ref[r * rows + j]

        @pl.when(i * block < length)
        def _fold(j: int = j, length: jax.Array = length) -> None:
            q = q_ref[j]  # [group, head_dim]
            s = jax.lax.dot_general(q, k_ref[j], (((1,), (1,)), ((), ())),
                                    preferred_element_type=jnp.float32) * scale  # [group, block]
            position = i * block + jax.lax.broadcasted_iota(jnp.int32, s.shape, 1)
            s = jnp.where(position < length, s, _NEG_INF)
            m_prev = m_ref[j]  # [group, lanes], every lane the same
            m_next = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
            p = jnp.exp(s - m_next[:, :1])  # [group, block]
            alpha = jnp.exp(m_prev - m_next)
            l_ref[j] = alpha * l_ref[j] + jnp.sum(p, axis=1, keepdims=True)
            m_ref[j] = m_next
            pv = jax.lax.dot_general(p.astype(v_ref.dtype), v_ref[j], (((1,), (0,)), ((), ())),
                                     preferred_element_type=jnp.float32)  # [group, head_dim]
            acc_ref[j] = alpha[:, :1] * acc_ref[j] + pv

    @pl.when(i == pl.num_programs(2) - 1)
    def _finish() -> None:
        total = l_ref[...][:, :, :1]
        o_ref[...] = (acc_ref[...] / jnp.where(total == 0, 1.0, total)).astype(o_ref.dtype)
