"""A tiny policy trained to search in the SSP format, and the scripted retriever it searches.

The world is a set of two-letter keys. Searching a key returns one passage saying either
`next: <key>` (search again) or `answer: <key>` (answer it). The policy is SFT-trained on perfect
trajectories, so it really emits multi-token `<search>..</search>` and `<answer>..</answer>` spans,
which drives the rollout loop through every branch with a real model.

Training takes minutes on a 2-core CPU, so the result ships as an HF checkpoint in
tests/assets/tiny_searcher (~0.4 MB); `python tests/search_world.py` rebuilds it deterministically.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ssp_jax.models.decoder import Decoder, DecoderConfig, positions_from_mask
from ssp_jax.models.hf_import import export_hf_decoder, load_hf_decoder
from ssp_jax.retrieval.base import Passage
from ssp_jax.tokenizer import Tokenizer, information_block

ASSET = Path(__file__).resolve().parent / "assets" / "tiny_searcher"
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
KEYS = [a + b for a in string.ascii_lowercase[:8] for b in string.ascii_lowercase[:8]]  # 64 keys
LOOP_KEY = "zz"  # its passage points back to itself: the policy searches until max_turns


def successor(key: str) -> tuple[str, str]:
    """('next' | 'answer', key): a deterministic chain of 1-3 hops per starting key."""
    if key == LOOP_KEY:
        return "next", LOOP_KEY
    i = KEYS.index(key)
    hops_left = i % 3  # 0: answer now; else step to a key with one hop fewer
    if hops_left == 0:
        return "answer", KEYS[(i * 5 + 1) % len(KEYS)]
    return "next", KEYS[((i * 7 + 3) % 21) * 3 + hops_left - 1]


class ScriptedRetriever:
    """Answers from the world's table; counts calls and can fail the first `fail_first` of them."""

    def __init__(self, fail_first: int = 0, always_fail: bool = False):
        self.calls: list[list[str]] = []
        self.fail_first, self.always_fail = fail_first, always_fail

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        self.calls.append(list(queries))
        if self.always_fail or len(self.calls) <= self.fail_first:
            raise ConnectionError("scripted outage")
        return [[_passage(q)] * min(k, 1) for q in queries]


def _passage(query: str) -> Passage:
    key = query.strip()
    if key not in KEYS and key != LOOP_KEY:
        return Passage(id="none", contents=f'"{key}"\nnothing found')
    kind, target = successor(key)
    return Passage(id=key, contents=f'"{key}"\n{kind}: {target}')


def prompt_text(key: str) -> str:
    return f"<|im_start|>find {key}<|im_end|>"


def demo_response(key: str) -> list[tuple[str, bool]]:
    """The perfect trajectory as (text, trained) spans; tool spans are not trained."""
    spans: list[tuple[str, bool]] = []
    for _ in range(4):
        spans.append((f"<search>{key}</search>", True))
        passage = _passage(key)
        spans.append((information_block([(passage.title, passage.text)]), False))
        kind, key = successor(key)
        if kind == "answer":
            spans.append((f"<answer>{key}</answer><|endoftext|>", True))
            return spans
    raise AssertionError("chains are at most 3 hops")


@functools.lru_cache(maxsize=1)
def trained_searcher() -> tuple[Decoder, Tokenizer]:
    """The shipped searcher (cached per test session)."""
    model, _ = load_hf_decoder(ASSET)
    return model, Tokenizer.load(ASSET)


def train_searcher(steps: int = 300) -> tuple[Decoder, Tokenizer, float]:
    """SFT a 2-layer decoder on the demo trajectory of every key; returns the final loss too."""
    tokenizer = Tokenizer.byte_level(SPECIALS)
    cfg = DecoderConfig(vocab_size=264, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                        num_kv_heads=2, head_dim=16, qkv_bias=True, tie_embeddings=True)
    rows = []
    for key in KEYS:
        ids, trained = tokenizer.encode(prompt_text(key)), []
        trained = [0] * len(ids)
        for text, is_trained in demo_response(key):
            span = tokenizer.encode(text)
            ids += span
            trained += [int(is_trained)] * len(span)
        rows.append((ids, trained))
    width = max(len(ids) for ids, _ in rows)
    tokens = np.zeros((len(rows), width), np.int32)
    weights = np.zeros((len(rows), width), np.float32)
    for i, (ids, trained) in enumerate(rows):
        tokens[i, :len(ids)], weights[i, :len(ids)] = ids, trained
    mask = (np.arange(width)[None] < np.array([len(r[0]) for r in rows])[:, None]).astype(np.int32)

    model = Decoder(cfg, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def train_step(model: Decoder, optimizer: nnx.Optimizer, tokens, mask, weights) -> jax.Array:
        def loss_fn(model: Decoder) -> jax.Array:
            hidden, _ = model(tokens, positions_from_mask(mask), mask)
            logp = model.token_logprobs(hidden[:, :-1], tokens[:, 1:])
            return -(logp * weights[:, 1:]).sum() / weights[:, 1:].sum()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    batch = (jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(weights))
    for _ in range(steps):
        loss = train_step(model, optimizer, *batch)
    return model, tokenizer, float(loss)


if __name__ == "__main__":
    searcher, tok, final_loss = train_searcher()
    print(f"final loss {final_loss:.4f}")
    tok.save(ASSET)
    export_hf_decoder(searcher, ASSET)
