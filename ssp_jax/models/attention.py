"""Attention kernels, chosen by config (`model.attention`): one causal attention over a padded
batch, four ways.

- `xla`: plain einsums with an fp32 softmax, causal query blocks for long sequences. The CPU
  default and the reference the others are tested against.
- `splash`: Pallas TPU splash attention, GQA-native (one MQA kernel per KV head), causal, with
  padding as segment ids; under `shard_map` when the training passes pin activations to a mesh
  (rows over the batch axes, heads over `tensor`). It never materialises the [q, k] scores: at
  Qwen2.5-7B heads and 12,288 tokens a row's scratch falls from 6.1 GiB to 0.4 GiB (issue 22). On
  CPU it runs in Pallas interpret mode, which is how the tests check it.
- `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")` on NVIDIA GPUs, for right-padded
  rows (what `pack_batch` builds).
- `auto`: `splash` on TPU, `cudnn` on GPU, else `xla`, by the platform of the mesh the pass is
  traced for (so an AOT compile for a TPU slice on a CPU host picks `splash`).

These cover the cache-free passes (training, log-probs, scoring). Over the sampling engine's KV
cache (`cached_attention`), a decode step under `splash` runs the ragged Pallas decode kernel
(`decode_attention.py`: each slot's cache read only as far as it is filled), and an extend chunk
`attend`; a prompt's prefill is a cache-free pass (`Decoder.prefill`), so it runs the kernel above.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from ssp_jax.models.decode_attention import ragged_decode_attention
from ssp_jax.models.sharding import activation_context, logical_to_spec

ATTENTION_BACKENDS = ("auto", "xla", "splash", "cudnn")
_NEG_INF = -1e30  # finite, so a fully masked (padding) row stays NaN-free
# Without a cache (training, scoring) the mask is causal, so queries are split into this many blocks,
# each attending only to keys up to its own end: exact, and it skips 3/8 of the score matrix,
# which is most of a small model's step time at a few hundred tokens (benchmarks/sft_throughput.py).
CAUSAL_QUERY_BLOCKS = 4
MIN_BLOCKED_LEN = 256
SPLASH_BLOCKS = (512, 256, 128)  # splash block sizes tried, largest first; one must divide the length


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *, heads_major: bool = False) -> jax.Array:
    """Grouped-query attention with an fp32 softmax.

    q: [batch, q_len, heads, head_dim]; k, v: [batch, kv_len, kv_heads, head_dim], or with
    `heads_major` [batch, kv_heads, kv_len, head_dim] (the KV cache's layout); mask: [batch, q_len,
    kv_len] bool. Returns [batch, q_len, heads, head_dim].
    """
    batch, q_len, heads, head_dim = q.shape
    kv_heads = k.shape[1] if heads_major else k.shape[2]
    group = heads // kv_heads
    if heads_major:
        # A KV head's group x q_len queries as one matrix, so both matmuls are plain batched ones
        # over (batch, KV head) that read the cache as stored (XLA:CPU otherwise transposed the
        # probabilities and ran the second matmul outside its fast path: decode 2x slower).
        qm = q.reshape(batch, q_len, kv_heads, group, head_dim).transpose(0, 2, 3, 1, 4)
        qm = qm.reshape(batch, kv_heads, group * q_len, head_dim)  # [b, kv, group * t, d]
        scores = jnp.einsum("bkmd,bksd->bkms", qm, k, preferred_element_type=jnp.float32)
        scores = jnp.where(jnp.tile(mask, (1, group, 1))[:, None], scores * head_dim ** -0.5, _NEG_INF)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)  # [b, kv, group * t, s]
        out = jnp.einsum("bkms,bksd->bkmd", probs, v).reshape(batch, kv_heads, group, q_len, head_dim)
        return out.transpose(0, 3, 1, 2, 4).reshape(batch, q_len, heads, head_dim)
    q = q.reshape(batch, q_len, kv_heads, group, head_dim)  # [b, t, kv, group, d]
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
    scores = scores * (head_dim ** -0.5)  # [b, kv, group, t, s]
    scores = jnp.where(mask[:, None, None], scores, _NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(batch, q_len, heads, head_dim)


def causal_attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """`attend` for a causal `mask` over the same positions (q_len == kv_len): long sequences go
    in `CAUSAL_QUERY_BLOCKS` query blocks, each against the keys up to its end."""
    seq = q.shape[1]
    if seq < MIN_BLOCKED_LEN or seq % CAUSAL_QUERY_BLOCKS:
        return attend(q, k, v, mask)
    size = seq // CAUSAL_QUERY_BLOCKS
    return jnp.concatenate([attend(q[:, i:i + size], k[:, :i + size], v[:, :i + size], mask[:, i:i + size, :i + size])
                            for i in range(0, seq, size)], axis=1)  # [batch, seq, heads, head_dim]


def resolve_backend(name: str) -> str:
    """The backend `name` stands for on the platform being traced for (`auto` -> a concrete one)."""
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"attention backend {name!r}; expected one of {ATTENTION_BACKENDS}")
    if name != "auto":
        return name
    return {"tpu": "splash", "gpu": "cudnn", "cuda": "cudnn"}.get(_traced_platform(), "xla")


def _traced_platform() -> str:
    """The platform of the mesh the pass is traced for, else this process's default backend (so an
    AOT compile for a TPU slice on a CPU host is a TPU pass)."""
    context = activation_context()
    return context[0].devices.flat[0].platform if context else jax.default_backend()


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, attention_mask: jax.Array,
                     backend: str = "xla") -> jax.Array:
    """Causal self-attention over a padded batch: a query attends the real keys at or before it.

    q: [batch, seq, heads, head_dim]; k, v: [batch, seq, kv_heads, head_dim]; attention_mask:
    [batch, seq] (1 = real token). Outputs at padding positions are unspecified (finite)."""
    backend = resolve_backend(backend)
    if backend == "splash":
        return _splash(q, k, v, attention_mask)
    if backend == "cudnn":
        lengths = jnp.maximum(attention_mask.sum(-1).astype(jnp.int32), 1)  # [batch]; an all-padding row reads 1
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, key_value_seq_lengths=lengths,
                                            implementation="cudnn")
    seq = q.shape[1]
    mask = jnp.tril(jnp.ones((seq, seq), bool))[None] & attention_mask.astype(bool)[:, None, :]  # [batch, seq, seq]
    return causal_attend(q, k, v, mask)


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, backend: str = "xla") -> jax.Array:
    """Attention over a KV cache. q: [batch, q_len, heads, head_dim]; k, v: [batch, kv_heads,
    max_len, head_dim]; mask: [batch, q_len, max_len], each row's filled prefix up to its query.
    A decode step (q_len 1) under `splash` reads each row's cache only as far as the mask reaches."""
    if q.shape[1] == 1 and resolve_backend(backend) == "splash":
        return _ragged_decode(q, k, v, mask[:, 0].sum(-1, dtype=jnp.int32))
    return attend(q, k, v, mask, heads_major=True)


def _ragged_decode(q: jax.Array, k: jax.Array, v: jax.Array, lengths: jax.Array) -> jax.Array:
    """The ragged decode kernel on [batch, 1, heads, head_dim] queries, per device when traced for
    a mesh: rows over the cache's batch axes, KV heads over its head axis."""
    batch, _, heads, head_dim = q.shape
    kv_heads = k.shape[1]
    grouped = q.reshape(batch, kv_heads, heads // kv_heads, head_dim)  # [b, kv, group, d]
    context = activation_context()
    interpret = _traced_platform() != "tpu"  # Pallas interpret mode off TPU
    kernel = functools.partial(ragged_decode_attention, interpret=interpret)
    if context is None:
        out = kernel(grouped, k, v, lengths)
    else:
        mesh, rules = context
        cache = logical_to_spec(("batch", "kv_heads", "cache_length", "head_dim"), rules, k.shape, mesh)
        rows = PartitionSpec(cache[0] if len(cache) else None)
        group = PartitionSpec(*cache[:2])
        out = jax.shard_map(kernel, mesh=mesh, in_specs=(group, cache, cache, rows), out_specs=group,
                            check_vma=False)(grouped, k, v, lengths)
    return out.reshape(batch, 1, heads, head_dim)


def _splash(q: jax.Array, k: jax.Array, v: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Splash attention, over the mesh's shards when the pass is pinned to one."""
    context = activation_context()
    interpret = _traced_platform() != "tpu"  # Pallas interpret mode off TPU
    kernel = functools.partial(_splash_local, interpret=interpret)
    if context is None:
        return kernel(q, k, v, attention_mask)
    mesh, rules = context
    qo = logical_to_spec(("activation_batch", None, "activation_heads", None), rules, q.shape, mesh)
    kv = logical_to_spec(("activation_batch", None, "activation_kv_heads", None), rules, k.shape, mesh)
    if qo[2] != kv[2]:  # e.g. 2 KV heads on tensor=4: each shard would need KV heads it lacks
        logging.info("splash: heads %s and KV heads %s shard differently; running it with heads unsplit", qo, kv)
        qo, kv = PartitionSpec(qo[0]), PartitionSpec(kv[0])
    rows = PartitionSpec(qo[0] if len(qo) else None)
    return jax.shard_map(kernel, mesh=mesh, in_specs=(qo, kv, kv, rows), out_specs=qo, check_vma=False)(
        q, k, v, attention_mask)


def _splash_local(q: jax.Array, k: jax.Array, v: jax.Array, attention_mask: jax.Array, *,
                  interpret: bool) -> jax.Array:
    """One device's splash attention: q [batch, seq, heads, d], k/v [batch, seq, kv_heads, d]."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    batch, seq, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    block = next((b for b in SPLASH_BLOCKS if seq % b == 0), None)
    if block is None:
        raise ValueError(f"attention 'splash' needs a sequence length that is a multiple of {SPLASH_BLOCKS[-1]}, "
                         f"got {seq}; use length buckets (rl.length_buckets, sft.length_buckets, "
                         "engine.prefill_buckets) that are")
    group = heads // kv_heads
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                              block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    kernel = splash.make_splash_mqa(masks.MultiHeadMask([masks.CausalMask((seq, seq))] * group), block_sizes=sizes,
                                    head_shards=1, q_seq_shards=1, interpret=interpret)
    # [batch, seq, heads, d] -> [batch, kv_heads, group, seq, d]; keys and values [batch, kv_heads, seq, d].
    qg = (q * head_dim ** -0.5).reshape(batch, seq, kv_heads, group, head_dim).transpose(0, 2, 3, 1, 4)
    kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    segments = attention_mask.astype(jnp.int32)  # [batch, seq]: padding is its own segment

    def row(q_row: jax.Array, k_row: jax.Array, v_row: jax.Array, seg: jax.Array) -> jax.Array:
        ids = splash.SegmentIds(q=seg, kv=seg)
        return jax.vmap(kernel, in_axes=(0, 0, 0, None))(q_row, k_row, v_row, ids)  # over KV heads

    out = jax.vmap(row)(qg, kt, vt, segments)  # [batch, kv_heads, group, seq, d]
    return out.transpose(0, 3, 1, 2, 4).reshape(batch, seq, heads, head_dim).astype(q.dtype)
