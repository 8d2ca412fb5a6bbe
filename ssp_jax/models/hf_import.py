"""Hugging Face checkpoints <-> the NNX `Decoder`.

Import reads a local HF directory (`config.json` + `model.safetensors`, or shards listed in
`model.safetensors.index.json`) one tensor at a time and hands each device only its own slice
(`jax.make_array_from_callback`), so a 7B model never needs two full host copies. Export writes
the weights back as sharded safetensors plus `config.json`, loadable by any HF-compatible engine.

The family switches come from `config.json` fields (`model_type`, `attention_bias`,
`tie_word_embeddings`, `rope_scaling` / `rope_parameters`, ...), never from the model's name.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, SingleDeviceSharding
from safetensors import safe_open
from safetensors.numpy import save_file

from ssp_jax.distributed import host_value
from ssp_jax.models.decoder import Decoder, DecoderConfig, RopeScaling
from ssp_jax.models.sharding import DEFAULT_RULES, Rules, state_shardings

if TYPE_CHECKING:
    from flax.typing import PathParts

SUPPORTED_MODEL_TYPES = ("qwen2", "qwen3", "llama")
_ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}
_SINGLE_FILE = "model.safetensors"
_INDEX_FILE = "model.safetensors.index.json"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

Path_ = tuple[str | int, ...]
# our parameter path -> (HF tensor name, HF shape, whether HF stores it transposed ([out, in]))
Layout = dict[Path_, tuple[str, tuple[int, ...], bool]]
ModuleT = TypeVar("ModuleT", bound=nnx.Module)


def read_hf_config(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: expected a Hugging Face model directory with config.json and "
            f"{_SINGLE_FILE} (or {_INDEX_FILE} plus its shards)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def _rope_from_hf(hf: dict[str, Any]) -> tuple[float, RopeScaling]:
    """Read RoPE settings in both the transformers-4 form (top-level `rope_theta`, `rope_scaling`)
    and the transformers-5 form (one `rope_parameters` dict)."""
    params = hf.get("rope_parameters") or {}
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    scaling = hf.get("rope_scaling") or params
    rope_type = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if rope_type == "default":
        return theta, RopeScaling()
    fields = {k: scaling[k] for k in ("factor", "low_freq_factor", "high_freq_factor",
                                      "original_max_position_embeddings") if k in scaling}
    return theta, RopeScaling(rope_type=rope_type, **fields)


def decoder_config_from_hf(hf: dict[str, Any], *, dtype: str = "float32", param_dtype: str = "float32",
                           remat: bool = False, attention: str = "xla", source: str = "config.json") -> DecoderConfig:
    """The `DecoderConfig` for an HF `config.json` dict. `source` names the file in errors."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{source}: model_type={model_type!r} is not supported; "
                         f"expected one of {', '.join(SUPPORTED_MODEL_TYPES)}")
    for flag in ("use_sliding_window", "mlp_bias"):
        if hf.get(flag):
            raise ValueError(f"{source}: {flag}=true is not supported by ssp_jax's decoder")
    if model_type != "qwen2" and hf.get("attention_bias"):
        raise ValueError(f"{source}: attention_bias=true (bias on q/k/v/o) is not supported for {model_type}")
    try:
        heads = int(hf["num_attention_heads"])
        theta, scaling = _rope_from_hf(hf)
        return DecoderConfig(
            vocab_size=int(hf["vocab_size"]),
            hidden_size=int(hf["hidden_size"]),
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=int(hf.get("head_dim") or hf["hidden_size"] // heads),
            rope_theta=theta,
            rope_scaling=scaling,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            qkv_bias=model_type == "qwen2",
            qk_norm=model_type == "qwen3",
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            dtype=dtype,
            param_dtype=param_dtype,
            remat=remat,
            attention=attention,
        )
    except KeyError as e:
        raise ValueError(f"{source}: required field {e.args[0]!r} is missing") from e
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: {e}") from e


def model_type_of(cfg: DecoderConfig) -> str:
    """The HF family whose architecture `cfg` describes."""
    return "qwen3" if cfg.qk_norm else "qwen2" if cfg.qkv_bias else "llama"


def hf_config_from_decoder(cfg: DecoderConfig) -> dict[str, Any]:
    """A transformers-loadable `config.json` for a model that did not come from HF (e.g. random init).
    RoPE is written in the transformers-4 form, which transformers 5 also reads."""
    model_type = model_type_of(cfg)
    scaling = cfg.rope_scaling
    return {
        "architectures": [_ARCHITECTURES[model_type]],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None if scaling.rope_type == "default" else {
            "rope_type": scaling.rope_type, "factor": scaling.factor,
            "low_freq_factor": scaling.low_freq_factor, "high_freq_factor": scaling.high_freq_factor,
            "original_max_position_embeddings": scaling.original_max_position_embeddings},
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "max_position_embeddings": 32768,
        "torch_dtype": cfg.param_dtype,
    }


def hf_layout(cfg: DecoderConfig) -> Layout:
    """Where each of our parameters lives in an HF checkpoint, and in what shape."""
    e, h, kv, d, m = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size
    layout: Layout = {
        ("embed",): ("model.embed_tokens.weight", (cfg.vocab_size, e), False),
        ("final_norm", "scale"): ("model.norm.weight", (e,), False),
    }
    if not cfg.tie_embeddings:
        layout[("lm_head",)] = ("lm_head.weight", (cfg.vocab_size, e), True)
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}.", ("layers", i)
        layout[ours + ("attn_norm", "scale")] = (hf + "input_layernorm.weight", (e,), False)
        layout[ours + ("mlp_norm", "scale")] = (hf + "post_attention_layernorm.weight", (e,), False)
        for name, heads in (("q", h), ("k", kv), ("v", kv)):
            layout[ours + ("attn", "w" + name)] = (hf + f"self_attn.{name}_proj.weight", (heads * d, e), True)
            if cfg.qkv_bias:
                layout[ours + ("attn", "b" + name)] = (hf + f"self_attn.{name}_proj.bias", (heads * d,), False)
        layout[ours + ("attn", "wo")] = (hf + "self_attn.o_proj.weight", (e, h * d), True)
        if cfg.qk_norm:
            layout[ours + ("attn", "q_norm", "scale")] = (hf + "self_attn.q_norm.weight", (d,), False)
            layout[ours + ("attn", "k_norm", "scale")] = (hf + "self_attn.k_norm.weight", (d,), False)
        for name, shape in (("gate", (m, e)), ("up", (m, e)), ("down", (e, m))):
            layout[ours + ("mlp", name)] = (hf + f"mlp.{name}_proj.weight", shape, True)
    return layout


def weight_files(model_dir: Path) -> dict[str, Path]:
    """HF tensor name -> the safetensors file holding it."""
    index = model_dir / _INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{index}: expected JSON with a 'weight_map' object ({e!r})") from e
        return {name: model_dir / file for name, file in weight_map.items()}
    single = model_dir / _SINGLE_FILE
    if not single.is_file():
        raise FileNotFoundError(f"{model_dir}: neither {_SINGLE_FILE} nor {_INDEX_FILE} exists")
    try:
        with safe_open(single, "numpy") as f:
            return {name: single for name in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{single}: cannot read safetensors header ({e})") from e


def _params_by_file(layout: Layout, files: dict[str, Path], model_dir: Path) -> dict[Path, list[Path_]]:
    grouped: dict[Path, list[Path_]] = {}
    where = ", ".join(str(f) for f in sorted(set(files.values()))) or str(model_dir)
    for path, (name, _, _) in layout.items():
        if name not in files:
            raise ValueError(f"{where}: tensor {name!r} is missing from the checkpoint")
        file = files[name]
        if not file.is_file():
            raise FileNotFoundError(f"{file} does not exist (listed in {model_dir / _INDEX_FILE} "
                                    f"as holding tensor {name!r})")
        grouped.setdefault(file, []).append(path)
    return grouped


def load_checkpoint(model_dir: Path, init_fn: Callable[[], ModuleT], layout: Layout, *,
                    storage_dtype: Any, mesh: Mesh | None, rules: Rules,
                    files: dict[str, Path] | None = None) -> ModuleT:
    """Build `init_fn()` abstractly, then fill each parameter from the safetensors tensor `layout`
    names, one tensor at a time, each device receiving only its own slice."""
    files = weight_files(model_dir) if files is None else files
    graphdef, abstract_state = nnx.split(nnx.eval_shape(init_fn))
    flat_abstract = dict(nnx.to_flat_state(abstract_state))
    if mesh is not None:
        flat_shardings = dict(nnx.to_flat_state(state_shardings(abstract_state, mesh, rules)))
    loaded: dict[PathParts, jax.Array] = {}
    for file, paths in _params_by_file(layout, files, model_dir).items():
        try:
            handle = safe_open(file, "numpy")
        except Exception as e:
            raise ValueError(f"{file}: cannot read safetensors ({e})") from e
        with handle as f:
            for path in paths:
                name, hf_shape, transposed = layout[path]
                tensor = f.get_tensor(name)
                if tuple(tensor.shape) != hf_shape:
                    raise ValueError(f"{file}: tensor {name!r} has shape {tuple(tensor.shape)}; "
                                     f"config.json implies {hf_shape}")
                target = flat_abstract[path].get_value()
                host = (tensor.T if transposed else tensor).reshape(target.shape)
                sharding = flat_shardings[path] if mesh is not None else SingleDeviceSharding(jax.devices()[0])
                loaded[path] = jax.make_array_from_callback(
                    target.shape, sharding,
                    cast(Callable[[Any], np.ndarray],  # mypy cannot infer a lambda with a bound default
                         lambda idx, host=host: np.asarray(host[idx], dtype=storage_dtype)))
                del tensor, host
    missing = set(flat_abstract) - set(loaded)
    if missing:  # a layout bug, not a user error
        raise AssertionError(f"parameters without an HF source: {sorted(missing)}")
    state = nnx.from_flat_state([(path, var.replace(loaded[path])) for path, var in flat_abstract.items()])
    return nnx.merge(graphdef, state)


def load_hf_decoder(model_dir: str | Path, *, mesh: Mesh | None = None, rules: Rules = DEFAULT_RULES,
                    dtype: str = "float32", param_dtype: str = "float32", remat: bool = False,
                    attention: str = "xla") -> tuple[Decoder, dict[str, Any]]:
    """Load an HF checkpoint straight into a (sharded) `Decoder`. Returns (model, hf config dict)."""
    model_dir = Path(model_dir)
    hf_config = read_hf_config(model_dir)
    cfg = decoder_config_from_hf(hf_config, dtype=dtype, param_dtype=param_dtype, remat=remat, attention=attention,
                                 source=str(model_dir / "config.json"))
    model = load_checkpoint(model_dir, lambda: Decoder(cfg, rngs=nnx.Rngs(0)), hf_layout(cfg),
                            storage_dtype=cfg.storage_dtype, mesh=mesh, rules=rules)
    return model, hf_config


def _hf_tensors(model: Decoder) -> Iterator[tuple[str, np.ndarray]]:
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    for path, (name, hf_shape, transposed) in hf_layout(model.cfg).items():
        value = host_value(flat[path].get_value())
        yield name, (value.reshape(hf_shape[::-1]).T if transposed else value.reshape(hf_shape))


def export_hf_decoder(model: Decoder, out_dir: str | Path, *, hf_config: dict[str, Any] | None = None,
                      max_shard_bytes: int = 4 << 30, tokenizer_dir: str | Path | None = None) -> Path:
    """Write `model` as an HF checkpoint directory (config.json + safetensors shards).

    Tensors stream out one shard at a time, so host memory holds at most one shard. `hf_config` is
    the imported model's config (kept, with its dtype updated); without it one is derived from the
    model's `DecoderConfig`. Tokenizer files are copied from `tokenizer_dir`. Every host joins the
    gathers; only process 0 writes.
    """
    out_dir = Path(out_dir)
    writer = jax.process_index() == 0
    if writer:
        out_dir.mkdir(parents=True, exist_ok=True)
    shard_names: list[list[str]] = []
    shard: dict[str, np.ndarray] = {}
    shard_bytes = total_bytes = 0

    def flush() -> None:
        if writer:
            save_file(shard, out_dir / f"part-{len(shard_names):05d}.tmp", metadata={"format": "pt"})
        shard_names.append(list(shard))
        shard.clear()

    for name, tensor in _hf_tensors(model):
        if shard and shard_bytes + tensor.nbytes > max_shard_bytes:
            flush()
            shard_bytes = 0
        shard[name] = np.ascontiguousarray(tensor)
        shard_bytes += tensor.nbytes
        total_bytes += tensor.nbytes
    flush()
    if not writer:
        return out_dir
    count = len(shard_names)
    if count == 1:
        (out_dir / "part-00000.tmp").replace(out_dir / _SINGLE_FILE)
    else:
        weight_map = {}
        for i, names in enumerate(shard_names):
            file = f"model-{i + 1:05d}-of-{count:05d}.safetensors"
            (out_dir / f"part-{i:05d}.tmp").replace(out_dir / file)
            weight_map.update({name: file for name in names})
        index = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
        (out_dir / _INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True))
    config = dict(hf_config if hf_config is not None else hf_config_from_decoder(model.cfg))
    config["torch_dtype"] = model.cfg.param_dtype
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    if tokenizer_dir is not None:
        for file in _TOKENIZER_FILES:
            if (Path(tokenizer_dir) / file).is_file():
                shutil.copy(Path(tokenizer_dir) / file, out_dir / file)
    return out_dir
