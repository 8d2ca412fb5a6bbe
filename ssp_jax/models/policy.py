"""Build the policy named by a config: an HF checkpoint directory, or a random one made on first use.

Every entry point (score, train, eval) goes through here, so a real checkpoint and the embedded
random default take the same import path: config.json -> DecoderConfig -> sharded load.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flax import nnx
from jax.sharding import Mesh

from ssp_jax.distributed import leader_first
from ssp_jax.models.decoder import Decoder
from ssp_jax.models.hf_import import decoder_config_from_hf, export_hf_decoder, load_hf_decoder
from ssp_jax.models.sharding import Rules
from ssp_jax.tokenizer import TOKENIZER_FILE, Tokenizer

# The embedded default's shape: a 2-layer Qwen2 small enough to train on a laptop CPU.
TINY_QWEN2: dict[str, Any] = dict(
    model_type="qwen2", vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=32, rope_theta=10000.0, rms_norm_eps=1e-6,
    tie_word_embeddings=True, max_position_embeddings=4096, architectures=["Qwen2ForCausalLM"])


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which policy to load and how to hold it (`config.model`): a local HF checkpoint, or a random
    one of shape `init` written on first use, so the embedded default and a real checkpoint take
    the same import path."""

    hf_path: str = ""  # local HF checkpoint dir (config.json + safetensors); empty = random `init`
    tokenizer_path: str = ""  # tokenizer.json or its dir; empty = the checkpoint dir
    dtype: str = "float32"  # compute dtype: float32 | bfloat16
    param_dtype: str = "float32"  # storage dtype of the policy weights
    remat: bool = False  # rematerialise each decoder layer in the backward pass
    # Kernel of the training, log-prob and scoring passes: auto | xla | splash | cudnn (models/attention.py).
    attention: str = "auto"
    seed: int = 0  # seed of the random `init` checkpoint
    # HF config.json fields of the random model written to <workdir>/random_init when hf_path is empty.
    init: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(TINY_QWEN2))


@dataclasses.dataclass(frozen=True)
class FrozenModelConfig:
    """A frozen model beside the policy (the RAG reader, the judge), with its own tokenizer and chat
    template: it sees text, never the policy's token ids, so it may come from another family (the
    paper's is Qwen2.5-32B-Instruct). Held in the policy's compute dtype, on the policy's mesh."""

    path: str = ""  # HF checkpoint dir; empty = none
    tokenizer_path: str = ""  # tokenizer.json or its dir; empty = the checkpoint's own
    chat_template: str = ""  # a named template or a .jinja file (ssp_jax.tokenizer); empty = the policy's
    # The checkpoint's config.json fields, for `python -m ssp_jax.aot` when the checkpoint is not at
    # hand (with `path` readable, its config.json wins); {} = not counted there.
    shape: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Policy:
    """A loaded policy: the model, its tokenizer, and where it came from: the HF `config.json` and the
    checkpoint directory, which export and serving reuse (the config written back, the tokenizer
    files copied)."""

    model: Decoder
    tokenizer: Tokenizer
    hf_config: dict[str, Any]
    checkpoint_dir: Path


def random_checkpoint(init: dict[str, Any], out_dir: Path, seed: int = 0) -> Path:
    """Write a random model of HF config `init` plus a byte-level tokenizer to `out_dir`, once.

    The tokenizer's eos/pad ids are written into config.json so the checkpoint is self-consistent.
    """
    if (out_dir / "config.json").is_file():
        return out_dir
    tokenizer = Tokenizer.byte_level()
    if init.get("vocab_size", 0) < tokenizer.vocab_size:
        raise ValueError(f"model.init.vocab_size={init.get('vocab_size')} is smaller than the byte-level "
                         f"tokenizer's {tokenizer.vocab_size} tokens")
    cfg = decoder_config_from_hf(init, source="config model.init")
    logging.info("writing a random %s checkpoint to %s", init.get("model_type"), out_dir)
    model = Decoder(cfg, rngs=nnx.Rngs(seed))
    hf_config = {**init, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}
    tokenizer.save(out_dir)
    export_hf_decoder(model, out_dir, hf_config=hf_config)
    return out_dir


def load_policy(model_cfg: ModelConfig, *, mesh: Mesh, rules: Rules, workdir: Path) -> Policy:
    """The policy of `config.model`: `hf_path` if set, else a random checkpoint in `workdir`."""
    if model_cfg.hf_path:
        checkpoint = Path(model_cfg.hf_path)
    else:
        checkpoint = leader_first(lambda: random_checkpoint(model_cfg.init, workdir / "random_init",
                                                            model_cfg.seed), "random init")
    model, hf_config = load_hf_decoder(checkpoint, mesh=mesh, rules=rules, dtype=model_cfg.dtype,
                                       param_dtype=model_cfg.param_dtype, remat=model_cfg.remat,
                                       attention=model_cfg.attention)
    tokenizer_dir = Path(model_cfg.tokenizer_path or checkpoint)
    if not (tokenizer_dir / TOKENIZER_FILE).is_file() and not tokenizer_dir.is_file():
        raise FileNotFoundError(f"{tokenizer_dir}: no {TOKENIZER_FILE}; set config.model.tokenizer_path")
    return Policy(model, Tokenizer.load(tokenizer_dir), hf_config, checkpoint)


def load_frozen(model_cfg: ModelConfig, hf_path: str | Path, *, mesh: Mesh, rules: Rules,
                tokenizer_path: str | None = None) -> Policy:
    """An HF checkpoint with `model_cfg`'s dtypes and remat, for an eval or export target.
    `tokenizer_path` None keeps `model_cfg.tokenizer_path`; "" is the checkpoint's own."""
    frozen = dataclasses.replace(model_cfg, hf_path=str(hf_path),
                                 tokenizer_path=model_cfg.tokenizer_path if tokenizer_path is None else tokenizer_path)
    return load_policy(frozen, mesh=mesh, rules=rules, workdir=Path(hf_path))


def frozen_checkpoints(roles: Mapping[str, FrozenModelConfig]) -> dict[str, FrozenModelConfig]:
    """The frozen models a run holds, one per distinct (checkpoint, tokenizer), keyed by the roles it
    plays joined by "+" ("reader", "judge", or "reader+judge": the paper's one 32B plays both, and
    loads once); roles without a path are left out."""
    groups: dict[tuple[str, str], list[str]] = {}
    for name, role in roles.items():
        if role.path:
            groups.setdefault((role.path, role.tokenizer_path), []).append(name)
    return {"+".join(names): roles[names[0]] for names in groups.values()}


def load_role_model(model_cfg: ModelConfig, role: FrozenModelConfig, *, mesh: Mesh, rules: Rules) -> Policy:
    """A frozen reader or judge: its checkpoint and own tokenizer, weights stored in `model_cfg`'s
    compute dtype (never updated, so fp32 master copies would only take memory)."""
    stored = dataclasses.replace(model_cfg, param_dtype=model_cfg.dtype)
    return load_frozen(stored, role.path, mesh=mesh, rules=rules, tokenizer_path=role.tokenizer_path)
