"""Our slot engine behind JetStream's `Engine` interface, so that the orchestrator and gRPC server
of google-jetstream 0.2.2 can serve a trained policy (`python -m ssp_jax.serve`).

Optional, in its own environment (requirements-jetstream.txt): jetstream 0.2.2 imports TensorFlow
through seqio, next to which scann cannot load. Its two incompatibilities are shimmed here and
nowhere else: its orchestrator calls `jax.tree_map`, which jax 0.10 removed (restored below as
`jax.tree.map`), and its default tokenizer is SentencePiece (replaced by ours).

The calls map one to one: `prefill` runs our prefill on the unpadded prompt; `insert` starts the
slot with the server's sampling parameters, a fresh seed per request and a `max_new_tokens` budget;
`generate` runs our `decode_steps` tokens per call, which JetStream reads as speculative tokens.
Our engine applies EOS and the stop sequences itself; a stopped slot's later tokens are marked
invalid, which ends the request in JetStream's detokenizer.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssp_jax.engine.api import DecodeState, Prefix, SlotEngine
from ssp_jax.engine.sampling import GREEDY, SamplingParams
from ssp_jax.tokenizer import ChatTemplate, Tokenizer

if not hasattr(jax, "tree_map"):  # jetstream 0.2.2's orchestrator frees prefixes with it
    jax.tree_map = jax.tree.map  # type: ignore[attr-defined]

from jetstream.engine import engine_api, tokenizer_api, tokenizer_pb2  # noqa: E402 - after the shim


class JetStreamTokenizer(tokenizer_api.Tokenizer):
    """Our tokenizer in JetStream's interface. A text request is rendered as one user message of
    `chat` when given (else used as it is) and padded to the engine's prefill bucket."""

    def __init__(self, tokenizer: Tokenizer, engine: SlotEngine, chat: ChatTemplate | None = None) -> None:
        self.tokenizer, self.engine, self.chat = tokenizer, engine, chat

    def encode(self, s: str, **kwargs: object) -> tuple[np.ndarray, int]:
        del kwargs  # is_bos, max_prefill_length, jax_padding: the engine's buckets decide
        ids = (self.chat.render_ids(self.tokenizer, [{"role": "user", "content": s}]) if self.chat
               else self.tokenizer.encode(s))
        padded = np.full(self.engine.prefill_bucket(len(ids)), self.pad_id, np.int32)  # [bucket]
        padded[:len(ids)] = ids
        return padded, len(ids)

    def decode(self, token_ids: Sequence[int], **kwargs: object) -> str:
        del kwargs
        return self.tokenizer.decode(list(token_ids))

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_id

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def bos_id(self) -> int:
        # JetStream prepends it to token (not text) requests; models without one get none.
        return self.tokenizer.bos_id if self.tokenizer.bos_id is not None else self.pad_id

    @property
    def stop_tokens(self) -> set[int]:
        """EOS and end of turn; not pad, which may be a real token (Qwen pads with EOS anyway)."""
        return set(self.engine.eos_ids) or {self.eos_id}


class JetStreamEngine(engine_api.Engine):
    """`engine` and its weights `params` as a JetStream interleaved engine."""

    def __init__(self, engine: SlotEngine, params: nnx.State, tokenizer: JetStreamTokenizer, *,
                 sampling: SamplingParams = GREEDY, max_new_tokens: int = 256, seed: int = 0,
                 tokenizer_path: str | Path = "") -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.engine, self.params, self.tokenizer = engine, params, tokenizer
        self.sampling, self.max_new_tokens, self.tokenizer_path = sampling, max_new_tokens, str(tokenizer_path)
        self._seeds = itertools.count(seed)  # one PRNG stream per request

    def prefill(self, *, params: nnx.State, existing_prefix: Prefix | None = None, padded_tokens: jax.Array,
                true_length: int) -> Prefix:
        if existing_prefix is not None:
            raise NotImplementedError("existing_prefix (session caches) is not supported; send the whole prompt")
        return self.engine.prefill(params, np.asarray(padded_tokens)[:true_length].tolist())

    def insert(self, prefix: Prefix, decode_state: DecodeState, slot: int) -> DecodeState:
        return self.engine.insert(prefix, decode_state, slot, seed=next(self._seeds), sampling=self.sampling,
                                  budget=self.max_new_tokens)

    def generate(self, params: nnx.State, decode_state: DecodeState) -> tuple[DecodeState, engine_api.ResultTokens]:
        state, out = self.engine.generate(params, decode_state)
        steps = out.tokens.shape[0]
        data = jnp.concatenate([out.tokens.T, out.emitted.T.astype(jnp.int32),  # [slots, steps] each
                                state.num_sampled[:, None]], axis=1)  # [slots, 2 * steps + 1]
        return state, engine_api.ResultTokens(data, tokens_idx=(0, steps), valid_idx=(steps, 2 * steps),
                                              length_idx=(2 * steps, 2 * steps + 1), samples_per_slot=1)

    def load_params(self, *args: object, **kwargs: object) -> nnx.State:
        return self.params

    def get_prefix_destination_sharding(self) -> None:
        return None  # prefill and generate share one engine: a prefix stays where it is

    def get_tokenizer(self) -> tokenizer_pb2.TokenizerParameters:
        return tokenizer_pb2.TokenizerParameters(path=self.tokenizer_path)

    def build_tokenizer(self, metadata: tokenizer_pb2.TokenizerParameters) -> JetStreamTokenizer:
        del metadata
        return self.tokenizer

    def init_decode_state(self, *args: object, **kwargs: object) -> DecodeState:
        return self.engine.init_decode_state()

    @property
    def max_concurrent_decodes(self) -> int:
        return self.engine.config.num_slots

    @property
    def samples_per_slot(self) -> int:
        return 1

    @property
    def max_prefill_length(self) -> int:
        return self.engine.config.prefill_buckets[-1]

    @property
    def mesh(self) -> jax.sharding.Mesh | None:
        return self.engine.mesh  # type: ignore[attr-defined]  # beyond SlotEngine's contract; Engine has it

    @property
    def colocated_cpus(self) -> None:
        return None
