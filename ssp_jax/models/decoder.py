"""One decoder-only transformer for the Qwen2/Qwen2.5, Qwen3 and Llama-3 families, in Flax NNX.

The families differ only in a few switches (QKV bias, q/k RMSNorm, RoPE scaling, tied embeddings),
so one class with a typed config covers them; `hf_import.py` sets the switches from `config.json`.

Every parameter carries `logical_axes` metadata (MaxText style); `sharding.py` maps those names to
mesh axes with rules kept in config. Activations are pinned at the block boundaries, in attention,
in the MLP and at the vocabulary head with `constrain` (logical `activation_*` axes), which is a no-op
unless the caller traces under `activation_sharding`: the training passes do (rl/update.py); the
sampling engine does not, since gathering every weight per decode step would cost far more than the
small activations it moves. XLA does the rest.

Masking: a full forward takes any left- or right-padded batch (`attention_mask` marks real tokens,
`positions` are explicit). The cached path (`KVCache`) appends right-padded chunks: each row writes
at its own offset, so slots of a continuous-batching engine advance independently.
"""

from __future__ import annotations

import dataclasses
import math
from typing import overload

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssp_jax.models.attention import ATTENTION_BACKENDS, cached_attention, causal_attention
from ssp_jax.models.sharding import constrain

# Logical activation axes (see models/sharding.py's rules).
BLE = ("activation_batch", "activation_length", "activation_embed")  # the residual stream
BLH = ("activation_batch", "activation_length", "activation_heads", "activation_head_dim")  # queries, outputs
BLK = ("activation_batch", "activation_length", "activation_kv_heads", "activation_head_dim")  # keys, values
BLM = ("activation_batch", "activation_length", "activation_mlp")
BLV = ("activation_batch", "activation_length", "activation_vocab")

_DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling. `default` = none; `linear` divides all frequencies; `llama3` is
    Llama-3.1's frequency-dependent scaling (HF `rope_type: llama3`)."""

    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self) -> None:
        if self.rope_type not in ("default", "linear", "llama3"):
            raise ValueError(
                f"rope_scaling.rope_type={self.rope_type!r} is not supported; "
                "expected one of 'default', 'linear', 'llama3'"
            )


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Architecture plus numerics of the policy. Field names follow HF `config.json` semantics."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = RopeScaling()
    rms_norm_eps: float = 1e-6
    qkv_bias: bool = False  # Qwen2/Qwen2.5
    qk_norm: bool = False  # Qwen3
    tie_embeddings: bool = False
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"  # storage dtype
    remat: bool = False  # rematerialise each layer in the backward pass
    attention: str = "xla"  # kernel of the cache-free passes and of decode steps (models/attention.py)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"DecoderConfig.{name} must be a positive int, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"DecoderConfig.num_heads={self.num_heads} must be a multiple of "
                f"num_kv_heads={self.num_kv_heads} (grouped-query attention)"
            )
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"DecoderConfig.attention={self.attention!r}; expected one of {ATTENTION_BACKENDS}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ValueError(f"DecoderConfig.{name}={getattr(self, name)!r}; expected one of {_DTYPES}")

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def storage_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Preallocated per-row key/value cache; rows advance independently (continuous batching).

    One buffer per layer (not one stacked array), so each decode step updates every buffer in
    place instead of rebuilding a [layers, ...] array. Keys and values are stored heads-major
    ([batch, kv_heads, max_len, head_dim]): attention contracts over positions within a head, so
    this is the layout its matmuls read without a transpose, and the one a decode kernel blocks
    positions in (a [batch, max_len, kv_heads, ...] cache made XLA:CPU transpose the whole cache
    in every layer of every decode step).
    """

    k: tuple[jax.Array, ...]  # per layer: [batch, kv_heads, max_len, head_dim]
    v: tuple[jax.Array, ...]  # per layer: [batch, kv_heads, max_len, head_dim]
    valid: jax.Array  # [batch, max_len] bool: the slot holds a real token
    length: jax.Array  # [batch] int32: next write offset of each row

    @classmethod
    def create(cls, cfg: DecoderConfig, batch: int, max_len: int) -> KVCache:
        shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
        return cls(
            k=tuple(jnp.zeros(shape, cfg.compute_dtype) for _ in range(cfg.num_layers)),
            v=tuple(jnp.zeros(shape, cfg.compute_dtype) for _ in range(cfg.num_layers)),
            valid=jnp.zeros((batch, max_len), bool),
            length=jnp.zeros((batch,), jnp.int32),
        )

    @property
    def max_len(self) -> int:
        return self.valid.shape[1]


def _param(rngs: nnx.Rngs, cfg: DecoderConfig, shape: tuple[int, ...], axes: tuple[str, ...],
           init: str = "normal", fan_in: int = 1) -> nnx.Param:
    """A parameter with logical axis names; `normal` uses 1/sqrt(fan_in) scaling."""
    if init == "ones":
        value = jnp.ones(shape, cfg.storage_dtype)
    elif init == "zeros":
        value = jnp.zeros(shape, cfg.storage_dtype)
    else:
        std = 1.0 / math.sqrt(fan_in)
        value = (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(cfg.storage_dtype)
    return nnx.Param(value, logical_axes=axes)


class RMSNorm(nnx.Module):
    """RMSNorm computed in fp32, scaled after casting back (matches HF Qwen2/Llama RMSNorm)."""

    def __init__(self, cfg: DecoderConfig, dim: int, axis_name: str, *, rngs: nnx.Rngs):
        self.scale = _param(rngs, cfg, (dim,), (axis_name,), init="ones")
        self.eps = cfg.rms_norm_eps
        self.dtype = cfg.compute_dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return normed.astype(self.dtype) * self.scale[...].astype(self.dtype)


def rope_inv_freq(cfg: DecoderConfig) -> jax.Array:
    """Inverse RoPE frequencies [head_dim // 2], including the checkpoint's scaling rule."""
    inv_freq = 1.0 / (cfg.rope_theta ** (jnp.arange(0, cfg.head_dim, 2, dtype=jnp.float32) / cfg.head_dim))
    scaling = cfg.rope_scaling
    if scaling.rope_type == "linear":
        return inv_freq / scaling.factor
    if scaling.rope_type == "llama3":
        old_len = scaling.original_max_position_embeddings
        low_wavelen = old_len / scaling.low_freq_factor
        high_wavelen = old_len / scaling.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = jnp.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
        smooth = (old_len / wavelen - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor)
        smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
        is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return jnp.where(is_medium, smoothed, scaled)
    return inv_freq


def apply_rope(x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
    """Rotate-half RoPE (HF layout). x: [batch, seq, heads, head_dim]; sin/cos: [batch, seq, head_dim/2]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    sin, cos = sin[:, :, None, :].astype(x.dtype), cos[:, :, None, :].astype(x.dtype)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _write_rows(buf: jax.Array, new: np.ndarray | jax.Array, start: jax.Array, axis: int = 1) -> jax.Array:
    """Write new[b] into buf[b] at offset start[b] along `axis` (of buf, whose axis 0 is the batch)."""
    return jax.vmap(lambda b, n, s: jax.lax.dynamic_update_slice_in_dim(b, n, s, axis=axis - 1))(buf, new, start)


class Attention(nnx.Module):
    """Grouped-query attention with RoPE, optional QKV bias and q/k norm (the Qwen2, Qwen3 and Llama-3
    variants), reading and writing a KV cache so prefill, extend and decode share one module."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        e, h, kv, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.wq = _param(rngs, cfg, (e, h, d), ("embed", "heads", "head_dim"), fan_in=e)
        self.wk = _param(rngs, cfg, (e, kv, d), ("embed", "kv_heads", "head_dim"), fan_in=e)
        self.wv = _param(rngs, cfg, (e, kv, d), ("embed", "kv_heads", "head_dim"), fan_in=e)
        self.wo = _param(rngs, cfg, (h, d, e), ("heads", "head_dim", "embed"), fan_in=h * d)
        if cfg.qkv_bias:
            self.bq = _param(rngs, cfg, (h, d), ("heads", "head_dim"), init="zeros")
            self.bk = _param(rngs, cfg, (kv, d), ("kv_heads", "head_dim"), init="zeros")
            self.bv = _param(rngs, cfg, (kv, d), ("kv_heads", "head_dim"), init="zeros")
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg, d, "head_dim", rngs=rngs)
            self.k_norm = RMSNorm(cfg, d, "head_dim", rngs=rngs)
        self.cfg = cfg

    def _project(self, x: jax.Array, name: str) -> jax.Array:
        dtype = self.cfg.compute_dtype
        y = jnp.einsum("bte,ehd->bthd", x, getattr(self, "w" + name)[...].astype(dtype))
        if self.cfg.qkv_bias:
            y = y + getattr(self, "b" + name)[...].astype(dtype)
        return y  # [batch, seq, heads, head_dim]

    def __call__(self, x: jax.Array, sin: jax.Array, cos: jax.Array, mask: jax.Array,
                 kv: tuple[jax.Array, jax.Array] | None, write_at: jax.Array | None,
                 ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """x: [batch, seq, embed]. With `kv` (this layer's cache, [batch, kv_heads, max_len, head_dim]
        each), the new keys/values are written at `write_at` [batch] and attention spans the cache
        under `mask` [batch, seq, max_len]; without, `mask` is the [batch, seq] attention mask of a
        causal pass, run by the configured kernel."""
        q = constrain(self._project(x, "q"), BLH)
        k, v = constrain(self._project(x, "k"), BLK), constrain(self._project(x, "v"), BLK)
        if self.cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, sin, cos), apply_rope(k, sin, cos)
        if kv is not None:
            assert write_at is not None  # the model passes both or neither
            heads_major = lambda x: x.transpose(0, 2, 1, 3).astype(kv[0].dtype)  # noqa: E731
            k = _write_rows(kv[0], heads_major(k), write_at, axis=2)  # [batch, kv_heads, max_len, head_dim]
            v = _write_rows(kv[1], heads_major(v), write_at, axis=2)
            out = cached_attention(q, k, v, mask, self.cfg.attention)  # [batch, seq, heads, head_dim]
        else:
            out = causal_attention(q, k, v, mask, self.cfg.attention)
        out = constrain(out, BLH)
        return constrain(jnp.einsum("bthd,hde->bte", out, self.wo[...].astype(self.cfg.compute_dtype)), BLE), (k, v)


class MLP(nnx.Module):
    """SwiGLU feed-forward."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        e, m = cfg.hidden_size, cfg.intermediate_size
        self.gate = _param(rngs, cfg, (e, m), ("embed", "mlp"), fan_in=e)
        self.up = _param(rngs, cfg, (e, m), ("embed", "mlp"), fan_in=e)
        self.down = _param(rngs, cfg, (m, e), ("mlp", "embed"), fan_in=m)
        self.dtype = cfg.compute_dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        gate = constrain(x @ self.gate[...].astype(self.dtype), BLM)  # [batch, seq, mlp]
        up = constrain(x @ self.up[...].astype(self.dtype), BLM)
        return constrain((jax.nn.silu(gate) * up) @ self.down[...].astype(self.dtype), BLE)


class Block(nnx.Module):
    """One pre-norm transformer layer: RMSNorm -> attention -> residual, RMSNorm -> SwiGLU MLP -> residual."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg, cfg.hidden_size, "norm", rngs=rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.mlp_norm = RMSNorm(cfg, cfg.hidden_size, "norm", rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x, sin, cos, mask, kv, write_at):
        attn_out, kv = self.attn(self.attn_norm(x), sin, cos, mask, kv, write_at)
        x = constrain(x + attn_out, BLE)
        return constrain(x + self.mlp(self.mlp_norm(x)), BLE), kv


class Decoder(nnx.Module):
    """The policy. `__call__` returns final-norm hidden states; `logits` / `token_logprobs` project them."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        # std 1/sqrt(hidden): unit-scale logits at init when the embedding doubles as the output layer.
        self.embed = _param(rngs, cfg, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"),
                            fan_in=cfg.hidden_size)
        self.layers = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg, cfg.hidden_size, "norm", rngs=rngs)
        if not cfg.tie_embeddings:
            self.lm_head = _param(rngs, cfg, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"),
                                  fan_in=cfg.hidden_size)

    @overload
    def __call__(self, tokens: np.ndarray | jax.Array, positions: np.ndarray | jax.Array,
                 attention_mask: np.ndarray | jax.Array, cache: None = None) -> tuple[jax.Array, None]: ...
    @overload
    def __call__(self, tokens: np.ndarray | jax.Array, positions: np.ndarray | jax.Array,
                 attention_mask: np.ndarray | jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]: ...
    def __call__(self, tokens: np.ndarray | jax.Array, positions: np.ndarray | jax.Array,
                 attention_mask: np.ndarray | jax.Array,
                 cache: KVCache | None = None) -> tuple[jax.Array, KVCache | None]:
        """tokens, positions, attention_mask: [batch, seq]. Returns hidden [batch, seq, embed].

        Without a cache, any padding layout works. With a cache, the chunk must be right-padded
        (real tokens first): it is written at `cache.length` and the length advances by the number
        of real tokens, so later writes overwrite the padding. The caller keeps
        `cache.length + seq <= cache.max_len`.
        """
        attention_mask = attention_mask.astype(bool)
        if cache is None:  # the kernel adds causality to the [batch, seq] mask
            return self._run(tokens, positions, attention_mask, None, None)[0], None
        write_at = cache.length
        valid = _write_rows(cache.valid, attention_mask, write_at)  # [batch, max_len]
        q_slot = write_at[:, None] + jnp.arange(tokens.shape[1])  # [batch, seq]
        mask = (jnp.arange(cache.max_len)[None, None, :] <= q_slot[:, :, None]) & valid[:, None, :]
        hidden, k, v = self._run(tokens, positions, mask, cache, write_at)
        return hidden, KVCache(k=k, v=v, valid=valid, length=cache.length + attention_mask.sum(-1, dtype=jnp.int32))

    def prefill(self, tokens: jax.Array, positions: jax.Array, attention_mask: jax.Array) -> tuple[jax.Array, KVCache]:
        """A right-padded chunk's hidden states and the cache it leaves in an empty cache of its own
        length, from one cache-free pass: causal attention by the configured kernel (splash on TPU
        never writes the [seq, seq] scores to HBM) instead of attention over an empty cache."""
        attention_mask = attention_mask.astype(bool)
        hidden, k, v = self._run(tokens, positions, attention_mask, None, None)
        heads_major = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731  [batch, kv_heads, seq, head_dim]
        return hidden, KVCache(k=tuple(map(heads_major, k)), v=tuple(map(heads_major, v)), valid=attention_mask,
                               length=attention_mask.sum(-1, dtype=jnp.int32))

    def _run(self, tokens: np.ndarray | jax.Array, positions: np.ndarray | jax.Array, mask: np.ndarray | jax.Array,
             cache: KVCache | None, write_at: jax.Array | None,
             ) -> tuple[jax.Array, tuple[jax.Array, ...], tuple[jax.Array, ...]]:
        """Embedding, the layers and the final norm: (hidden, each layer's keys, values). With a cache,
        `mask` is [batch, seq, max_len] and the keys/values are the updated cache buffers; without,
        it is the [batch, seq] attention mask and they are the chunk's own [batch, seq, kv_heads, head_dim]."""
        cfg = self.cfg
        # The table gathered over its embed shards first (as FSDP gathers every weight), so the lookup
        # stays on each device's rows; a lookup into embed-sharded rows would re-shard its output.
        table = constrain(self.embed[...], ("vocab", None))  # [vocab, embed]
        x = constrain(jnp.take(table, tokens, axis=0).astype(cfg.compute_dtype), BLE)  # [batch, seq, embed]
        angles = positions.astype(jnp.float32)[..., None] * rope_inv_freq(cfg)  # [batch, seq, head_dim/2]
        sin, cos = jnp.sin(angles), jnp.cos(angles)
        block_fn = nnx.remat(Block.__call__) if cfg.remat else Block.__call__
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            kv = None if cache is None else (cache.k[i], cache.v[i])
            x, (k, v) = block_fn(layer, x, sin, cos, mask, kv, write_at)
            new_k.append(k)
            new_v.append(v)
        return constrain(self.final_norm(x), BLE), tuple(new_k), tuple(new_v)

    def _unembed(self) -> jax.Array:
        """The output projection [embed, vocab] (the transposed embedding when tied)."""
        w = self.embed[...].T if self.cfg.tie_embeddings else self.lm_head[...]
        return w.astype(self.cfg.compute_dtype)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """hidden [batch, seq, embed] -> logits [batch, seq, vocab] in fp32."""
        return constrain(jnp.einsum("bte,ev->btv", hidden, self._unembed(), preferred_element_type=jnp.float32), BLV)

    def token_logprobs(self, hidden: jax.Array, targets: jax.Array, chunk: int = 0,
                       with_entropy: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
        """log p(targets) [batch, seq] in fp32, from hidden [batch, seq, embed].

        With `chunk` > 0 the vocabulary projection runs `chunk` positions at a time under
        `jax.checkpoint`, so neither pass holds more than [batch, chunk, vocab] logits: this is how
        RL scores long sequences against a 150k vocabulary. `with_entropy` also returns the
        entropy [batch, seq] of each next-token distribution, from the same logits.
        """
        w = self._unembed()

        def score(h: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
            logits = constrain(jnp.einsum("bte,ev->btv", h, w, preferred_element_type=jnp.float32), BLV)
            lse = jax.nn.logsumexp(logits, axis=-1)  # [batch, chunk]
            picked = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
            entropy = lse - jnp.sum(jax.nn.softmax(logits, axis=-1) * logits, axis=-1)
            return picked - lse, entropy

        batch, seq = targets.shape
        if chunk <= 0 or chunk >= seq:
            logp, entropy = score(hidden, targets)
        else:
            n = -(-seq // chunk)
            pad = n * chunk - seq
            h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(batch, n, chunk, -1).swapaxes(0, 1)
            t = jnp.pad(targets, ((0, 0), (0, pad))).reshape(batch, n, chunk).swapaxes(0, 1)
            out = jax.lax.map(lambda ht: jax.checkpoint(score)(*ht), (h, t))  # 2 x [n, batch, chunk]
            logp, entropy = (x.swapaxes(0, 1).reshape(batch, n * chunk)[:, :seq] for x in out)
        return (logp, entropy) if with_entropy else logp


def positions_from_mask(attention_mask: np.ndarray | jax.Array) -> jax.Array:
    """Position ids for a left- or right-padded batch: 0 at each row's first real token."""
    mask = attention_mask.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)


def token_logprobs(model: Decoder, tokens: np.ndarray | jax.Array, attention_mask: np.ndarray | jax.Array,
                   chunk: int = 0, with_entropy: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
    """log p(tokens[t] | tokens[:t]) [B, T] in fp32, aligned with tokens; 0 at t = 0 and padding.
    With `with_entropy`, also the entropy [B, T] of the distribution token t was drawn from.

    Scores next tokens at all T positions (so `chunk` divides a power-of-two bucket) and shifts.
    """
    hidden, _ = model(tokens, positions_from_mask(attention_mask), attention_mask)  # [B, T, E]
    nxt, entropy = model.token_logprobs(hidden, jnp.roll(tokens, -1, axis=1), chunk=chunk,
                                        with_entropy=True)  # [B, T] each: about token t+1
    align = lambda x: jnp.where(attention_mask > 0, jnp.pad(x[:, :-1], ((0, 0), (1, 0))), 0.0)  # noqa: E731
    return (align(nxt), align(entropy)) if with_entropy else align(nxt)
