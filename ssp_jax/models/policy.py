"""Build the policy named by a config: an HF checkpoint directory, or a random one made on first use.

Every entry point (score, train, eval) goes through here, so a real checkpoint and the embedded
random default take the same import path: config.json -> DecoderConfig -> sharded load.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import ml_collections
from flax import nnx
from jax.sharding import Mesh

from ssp_jax.distributed import leader_first
from ssp_jax.models.decoder import Decoder
from ssp_jax.models.hf_import import decoder_config_from_hf, export_hf_decoder, load_hf_decoder
from ssp_jax.models.sharding import Rules
from ssp_jax.tokenizer import TOKENIZER_FILE, Tokenizer


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


def load_policy(model_cfg: ml_collections.ConfigDict, *, mesh: Mesh, rules: Rules, workdir: Path) -> Policy:
    """The policy of `config.model`: `hf_path` if set, else a random checkpoint in `workdir`."""
    if model_cfg.hf_path:
        checkpoint = Path(model_cfg.hf_path)
    else:
        checkpoint = leader_first(lambda: random_checkpoint(model_cfg.init.to_dict(), workdir / "random_init",
                                                            model_cfg.seed), "random init")
    model, hf_config = load_hf_decoder(checkpoint, mesh=mesh, rules=rules, dtype=model_cfg.dtype,
                                       param_dtype=model_cfg.param_dtype, remat=model_cfg.remat)
    tokenizer_dir = Path(model_cfg.tokenizer_path or checkpoint)
    if not (tokenizer_dir / TOKENIZER_FILE).is_file() and not tokenizer_dir.is_file():
        raise FileNotFoundError(f"{tokenizer_dir}: no {TOKENIZER_FILE}; set config.model.tokenizer_path")
    return Policy(model, Tokenizer.load(tokenizer_dir), hf_config, checkpoint)


def load_frozen(model_cfg: ml_collections.ConfigDict, hf_path: str | Path, *, mesh: Mesh, rules: Rules,
                tokenizer_path: str | None = None) -> Policy:
    """An HF checkpoint with `model_cfg`'s dtypes and remat, for a frozen RAG reader, an LLM judge or
    an eval target. `tokenizer_path` None keeps `model_cfg.tokenizer_path`; "" is the checkpoint's own."""
    frozen = model_cfg.copy_and_resolve_references()
    with frozen.unlocked():
        frozen.hf_path = str(hf_path)
        if tokenizer_path is not None:
            frozen.tokenizer_path = tokenizer_path
    return load_policy(frozen, mesh=mesh, rules=rules, workdir=Path(hf_path))
