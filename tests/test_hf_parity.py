"""Logit parity of the NNX decoder against transformers, per family, plus the export round trip."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from conftest import padded_batch

from ssp_jax.models.decoder import Decoder
from ssp_jax.models.hf_import import export_hf_decoder, load_hf_decoder

FAMILY_CASES = [("qwen2", True), ("qwen2", False), ("qwen3", False), ("qwen3", True), ("llama", False)]


def torch_logits(model, tokens, mask, positions) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                    attention_mask=torch.tensor(mask, dtype=torch.long),
                    position_ids=torch.tensor(positions, dtype=torch.long))
    return out.logits.float().numpy()


def jax_logits(model: Decoder, tokens, mask, positions) -> np.ndarray:
    hidden, _ = model(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(mask))
    return np.asarray(model.logits(hidden))


def max_diff_on_real_tokens(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.abs(a - b)[mask.astype(bool)].max())


@pytest.mark.slow
@pytest.mark.parametrize("family,tied", FAMILY_CASES)
def test_logit_parity(hf_checkpoint, family, tied):
    torch_model, path = hf_checkpoint(family, tied)
    model, _ = load_hf_decoder(path)
    assert model.cfg.tie_embeddings == tied
    assert model.cfg.num_heads != model.cfg.num_kv_heads  # GQA exercised
    tokens, mask, positions = padded_batch()
    ref = torch_logits(torch_model, tokens, mask, positions)
    assert np.abs(ref).max() > 0.5  # the check is not vacuous
    assert max_diff_on_real_tokens(jax_logits(model, tokens, mask, positions), ref, mask) <= 1e-4


def test_transformers4_config_form(hf_checkpoint):
    """Published Llama-3.1 checkpoints use top-level rope_theta / rope_scaling (transformers 4.x)."""
    torch_model, path = hf_checkpoint("llama")
    config = json.loads((path / "config.json").read_text())
    rope = config.pop("rope_parameters")
    config["rope_theta"] = rope.pop("rope_theta")
    config["rope_scaling"] = {"type" if k == "rope_type" else k: v for k, v in rope.items()}
    (path / "config.json").write_text(json.dumps(config))
    model, _ = load_hf_decoder(path)
    assert model.cfg.rope_scaling.rope_type == "llama3" and model.cfg.rope_theta == 500000.0
    tokens, mask, positions = padded_batch(seed=1)
    ref = torch_logits(torch_model, tokens, mask, positions)
    assert max_diff_on_real_tokens(jax_logits(model, tokens, mask, positions), ref, mask) <= 1e-4


@pytest.mark.parametrize("family,tied", [("qwen2", False), ("qwen3", True), ("llama", False)])
def test_sharded_checkpoint_and_export_round_trip(hf_checkpoint, tmp_path, family, tied):
    torch_model, path = hf_checkpoint(family, tied, max_shard_size="50KB")
    assert (path / "model.safetensors.index.json").is_file()
    model, hf_config = load_hf_decoder(path)
    out = export_hf_decoder(model, tmp_path / "export", hf_config=hf_config, max_shard_bytes=60_000)
    assert (out / "model.safetensors.index.json").is_file()  # our own multi-shard writer
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    tokens, mask, positions = padded_batch(seed=2)
    ref = torch_logits(torch_model, tokens, mask, positions)
    assert max_diff_on_real_tokens(torch_logits(reloaded, tokens, mask, positions), ref, mask) <= 1e-5
    assert max_diff_on_real_tokens(jax_logits(model, tokens, mask, positions), ref, mask) <= 1e-4


@pytest.mark.slow
def test_bf16_compute_close_to_fp32(hf_checkpoint):
    _, path = hf_checkpoint("qwen2")
    fp32, _ = load_hf_decoder(path)
    mixed, _ = load_hf_decoder(path, dtype="bfloat16")
    pure, _ = load_hf_decoder(path, dtype="bfloat16", param_dtype="bfloat16")
    assert pure.embed[...].dtype == jnp.bfloat16 and mixed.embed[...].dtype == jnp.float32
    tokens, mask, positions = padded_batch()
    ref = jax_logits(fp32, tokens, mask, positions)
    for model in (mixed, pure):
        got = jax_logits(model, tokens, mask, positions)
        assert max_diff_on_real_tokens(got, ref, mask) < 0.1 * np.abs(ref).max()
