"""Models that did not come from HF: export them, load them with transformers, and run the CLI."""

import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from conftest import padded_batch
from flax import nnx

from ssp_jax.models.decoder import Decoder, DecoderConfig, RopeScaling
from ssp_jax.models.hf_import import export_hf_decoder, load_hf_decoder, model_type_of
from ssp_jax.models.policy import random_checkpoint
from ssp_jax.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]
BASE = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
            num_kv_heads=2, head_dim=16)


@pytest.mark.parametrize("switches", [
    dict(qkv_bias=True, tie_embeddings=True),
    dict(qk_norm=True, head_dim=32),
    dict(rope_theta=500000.0, rope_scaling=RopeScaling("llama3", 8.0, 1.0, 4.0, 64)),
])
@pytest.mark.slow
def test_derived_hf_config_loads_in_transformers(tmp_path, switches):
    cfg = DecoderConfig(**{**BASE, **switches})
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    out = export_hf_decoder(model, tmp_path / "ckpt")  # config.json derived from DecoderConfig
    reference = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    assert reference.config.model_type == model_type_of(cfg)
    tokens, mask, positions = padded_batch()
    with torch.no_grad():
        ref = reference(input_ids=torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask),
                        position_ids=torch.tensor(positions, dtype=torch.long)).logits.numpy()
    hidden, _ = model(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(mask))
    got = np.asarray(model.logits(hidden))
    assert np.abs(got - ref)[mask.astype(bool)].max() <= 1e-4


def test_random_checkpoint_is_self_consistent(tmp_path):
    init = dict(model_type="qwen2", vocab_size=300, hidden_size=32, intermediate_size=64,
                num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    path = random_checkpoint(init, tmp_path / "init")
    assert random_checkpoint(init, path) == path  # reused, not rewritten
    model, hf_config = load_hf_decoder(path)
    tokenizer = Tokenizer.load(path)
    assert hf_config["eos_token_id"] == tokenizer.eos_id and model.cfg.vocab_size == 300
    text = "Doc 1 (Title: Vantor)\nünïcode"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    with pytest.raises(ValueError, match="model.init.vocab_size=100 is smaller"):
        random_checkpoint({**init, "vocab_size": 100}, tmp_path / "small")


@pytest.mark.slow
def test_score_cli_runs_on_the_embedded_default(tmp_path):
    """The README's main job, on 8 fake devices with tensor parallelism."""
    result = subprocess.run(
        [sys.executable, "-m", "ssp_jax.score", "--config", str(REPO / "configs/tiny.py"),
         "--workdir", str(tmp_path), "--config.mesh.tensor=2", "--repeats=1"],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "mesh         {'data': 1, 'fsdp': 4, 'tensor': 2} on 8 cpu device(s)" in result.stdout
    perplexity = float(result.stdout.split("perplexity")[1].split()[0])
    assert 1.0 < perplexity < 5000.0  # a random 512-token model: finite, near-uniform
