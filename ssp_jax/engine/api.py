"""The engine contract, in the style of JetStream's `engine_api.py`: a fixed number of slots over a
preallocated KV cache, driven by prefill / insert / generate, with what RL needs on top.

Additions to JetStream's contract: the log-prob of every sampled token, per-slot sampling and PRNG,
stop strings matched on the decoded text whatever the tokenization (`stops.py`), per-slot budgets,
`extend` (append tool output to live slots in one prefill-like call), and prefix sharing (one
`Prefix` inserted into many slots). `engine.Engine` implements it; the rollout loop
(`agent/rollout.py`) and the JetStream adapter (`jetstream.py`) use nothing else.

The "pending token" invariant keeps the calls uniform: a slot's cache holds every token but the last
one, which waits in `DecodeState.tokens`. `generate` feeds it and samples the next; `prefill` stops
one token short of the prompt; `extend` feeds the pending token plus all but the last tool token.
So every sample, a trajectory's first included, comes from the same compiled decode step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import jax
from flax import nnx

from ssp_jax.engine.sampling import SamplingParams
from ssp_jax.engine.stops import StopAutomaton
from ssp_jax.models.decoder import KVCache

# Why a slot stopped (DecodeState.stop_reason).
RUNNING, STOP_EOS, STOP_SEQUENCE, STOP_BUDGET = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """The engine's static shapes: slots, cache length and the prefill / extend buckets. Every value
    here is a compiled shape, so changing one recompiles; a bad one fails at construction."""

    num_slots: int = 8
    max_cache_len: int = 2048  # per slot: prompt + response tokens
    prefill_buckets: tuple[int, ...] = (64, 128, 256, 512, 1024)
    extend_buckets: tuple[int, ...] = (32, 64, 128, 256, 512)
    extend_group: int = 4  # slots extended per `extend` call
    decode_steps: int = 8  # tokens sampled per `generate` call
    # Cache lengths a `generate` call may attend over: the smallest that holds every slot's cached
    # tokens plus `decode_steps`, else the whole cache. () = always the whole cache (one program);
    # each window is one more compiled program, and decode reads what the slots hold, not max_cache_len.
    decode_windows: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("prefill_buckets", "extend_buckets"):
            buckets = getattr(self, name)
            if not buckets or list(buckets) != sorted(buckets) or buckets[-1] > self.max_cache_len:
                raise ValueError(f"EngineConfig.{name}={buckets} must be ascending and <= max_cache_len")
        windows = self.decode_windows
        if list(windows) != sorted(set(windows)) or any(not 0 < w <= self.max_cache_len for w in windows):
            raise ValueError(f"EngineConfig.decode_windows={windows} must be ascending, distinct and in "
                             f"(0, max_cache_len={self.max_cache_len}]")
        if min(self.num_slots, self.extend_group, self.decode_steps) < 1:
            raise ValueError("EngineConfig.num_slots, extend_group and decode_steps must be >= 1")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Prefix:
    """A prefilled prompt, insertable into any number of slots."""

    k: tuple[jax.Array, ...]  # per layer: [1, kv_heads, bucket, head_dim]
    v: tuple[jax.Array, ...]  # per layer: [1, kv_heads, bucket, head_dim]
    valid: jax.Array  # [1, bucket] bool
    length: jax.Array  # [] int32: cached tokens (the prompt minus its last token)
    last_token: jax.Array  # [] int32: the pending token


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DecodeState:
    """The per-slot decode state carried between `generate` calls on device: KV cache, pending token,
    sampling parameters, PRNG counters, stop automaton state and stop reason. Kept as arrays so one
    compiled step serves every mix of slots."""

    cache: KVCache
    tokens: jax.Array  # [slots] int32: pending token (fed at the next step)
    positions: jax.Array  # [slots] int32: position id of the pending token
    active: jax.Array  # [slots] bool
    budget: jax.Array  # [slots] int32: tokens the slot may still sample
    seeds: jax.Array  # [slots, 2] uint32: raw PRNG key per trajectory
    num_sampled: jax.Array  # [slots] int32: samples so far in the trajectory (PRNG counter)
    stop_state: jax.Array  # [slots] int32: the stop automaton's state after the sampled tokens so far
    temperature: jax.Array  # [slots] float32
    top_k: jax.Array  # [slots] int32
    top_p: jax.Array  # [slots] float32
    stop_reason: jax.Array  # [slots] int32: RUNNING / STOP_EOS / STOP_SEQUENCE / STOP_BUDGET
    stop_index: jax.Array  # [slots] int32: which stop sequence matched (-1 if none)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class StepOutput:
    """What one `generate` call sampled for every slot, with each token's log-prob under the untempered
    policy (the PPO ratio's behaviour term) and whether the slot really emitted it."""

    tokens: jax.Array  # [decode_steps, slots] int32
    logprobs: jax.Array  # [decode_steps, slots] float32, under the temperature-1 model distribution
    emitted: jax.Array  # [decode_steps, slots] bool: the slot was active and produced this token


class SlotEngine(Protocol):
    """What a sampling engine offers the rollout loop. `params` (the model's `nnx.State`) go to every
    call, so RL swaps in new weights without recompiling; shapes come from `config`'s buckets."""

    config: EngineConfig
    stops: StopAutomaton  # which sampled tokens complete a stop string
    eos_ids: list[int]  # sampling one of these ends the slot (STOP_EOS)

    def init_decode_state(self) -> DecodeState:
        """A state with every slot free."""
        ...

    def prefill_bucket(self, length: int) -> int:
        """The padded length a prompt of `length` tokens compiles at; raises if none fits."""
        ...

    def extend_bucket(self, length: int) -> int:
        """The padded length a tool span of `length` tokens compiles at; raises if none fits."""
        ...

    def prefill(self, params: nnx.State, tokens: Sequence[int]) -> Prefix:
        """Run a prompt (>= 1 token) once; the result may be inserted into many slots."""
        ...

    def insert(self, prefix: Prefix, state: DecodeState, slot: int, *, seed: int,
               sampling: SamplingParams, budget: int) -> DecodeState:
        """Start a trajectory in `slot` from `prefix`, with its own PRNG `seed` and sampling
        parameters; it may sample up to `budget` tokens. Donates `state`."""
        ...

    def extend(self, params: nnx.State, state: DecodeState, slots: Sequence[int],
               spans: Sequence[Sequence[int]], budgets: Sequence[int]) -> DecodeState:
        """Append a token span (tool output) to each stopped slot in `slots` and make it active again
        with a new budget. Appended tokens never advance the stop automaton. Donates `state`."""
        ...

    def generate(self, params: nnx.State, state: DecodeState) -> tuple[DecodeState, StepOutput]:
        """Sample `config.decode_steps` tokens in every active slot. Donates `state`."""
        ...

    def warmup(self, params: nnx.State) -> DecodeState:
        """Compile every bucket up front, so a long run never compiles; returns a fresh state."""
        ...
