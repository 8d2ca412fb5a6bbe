"""Warm-start SFT: learns masked targets, ignores unmasked ones, and is deterministic."""

import numpy as np
import pytest
from flax import nnx

from ssp_jax.models.decoder import Decoder, DecoderConfig, token_logprobs
from ssp_jax.worlds.warmstart.sft import SFTConfig, sft

CFG = DecoderConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                    num_kv_heads=2, head_dim=8, tie_embeddings=True)


def data(n: int = 16):
    """Sequences `a, a+1, ..., a+7` (trained) followed by 4 random tokens (masked out)."""
    rng = np.random.default_rng(0)
    sequences, masks = [], []
    for _ in range(n):
        start = int(rng.integers(1, 40))
        sequences.append(list(range(start, start + 8)) + list(rng.integers(1, 64, 4)))
        masks.append([0] + [1] * 7 + [0] * 4)
    return sequences, masks


def masked_nll(model, sequences, masks) -> float:
    tokens = np.array(sequences, np.int32)
    logp = np.asarray(token_logprobs(model, tokens, np.ones_like(tokens)))
    weights = np.array(masks, np.float32)
    return float(-(logp * weights).sum() / weights.sum())


@pytest.mark.slow
def test_sft_learns_the_masked_pattern_deterministically():
    sequences, masks = data()
    config = SFTConfig(steps=80, batch_size=8, lr=1e-2, warmup_steps=5, length_buckets=(16,))
    runs = []
    for _ in range(2):
        model = Decoder(CFG, rngs=nnx.Rngs(0))
        before = masked_nll(model, sequences, masks)
        losses = sft(model, sequences, masks, config, progress=False)
        runs.append(losses)
        assert len(losses) == 80 and masked_nll(model, sequences, masks) < 0.3 * before
    assert runs[0] == runs[1]


@pytest.mark.slow
def test_unmasked_tokens_are_not_learned():
    sequences, masks = data()
    model = Decoder(CFG, rngs=nnx.Rngs(0))
    tail = [[0] * 8 + [1] * 4 for _ in sequences]  # the random tails, which SFT never trained on
    before = masked_nll(model, sequences, tail)
    sft(model, sequences, masks, SFTConfig(steps=80, batch_size=8, lr=1e-2, warmup_steps=5, length_buckets=(16,)),
        progress=False)
    assert masked_nll(model, sequences, tail) > 0.8 * before  # random tails stay unpredictable


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="SFTConfig.steps"):
        SFTConfig(steps=0)
