"""The slot engine: our implementation of `api.SlotEngine` (the contract, documented there).

The "pending token" invariant keeps all three calls uniform: a slot's cache holds every token but
the last one, which waits in `state.tokens`. `generate` feeds it and samples the next; `prefill`
stops one token short of the prompt; `extend` feeds the pending token plus all but the last tool
token. So every sample, including a trajectory's first, comes from the same compiled decode step.

Shapes are static: prompts and tool spans are padded to configured buckets, extends run on a fixed
group of slots, and `generate` runs `decode_steps` tokens per call. `compile_counts` counts traces.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ssp_jax.engine.api import (
    RUNNING,
    STOP_BUDGET,
    STOP_EOS,
    STOP_SEQUENCE,
    DecodeState,
    EngineConfig,
    Prefix,
    StepOutput,
)
from ssp_jax.engine.sampling import SamplingParams, sample
from ssp_jax.engine.stops import StopAutomaton
from ssp_jax.models.attention import SPLASH_BLOCKS, resolve_backend
from ssp_jax.models.decode_attention import DECODE_BLOCKS
from ssp_jax.models.decoder import Decoder, KVCache
from ssp_jax.models.shapes import bucket_for
from ssp_jax.models.sharding import (
    DEFAULT_RULES,
    Rules,
    activation_sharding,
    logical_to_spec,
    traced_with_activation_sharding,
)


class Engine:
    """Owns the compiled prefill / insert / extend / generate functions for one model architecture.

    `params` (the model's `nnx.State`) are passed to every call, so RL can swap in new weights
    without recompiling. `stops` (default: none) says which sampled tokens complete a stop string;
    only sampled tokens advance it, never prompts or `extend` spans. `eos_ids` end a slot too.
    """

    def __init__(self, model: Decoder, config: EngineConfig, *, stops: StopAutomaton | None = None,
                 eos_ids: Sequence[int] = (), mesh: Mesh | None = None, rules: Rules = DEFAULT_RULES):
        self.config = config
        self.model_config = model.cfg
        self.graphdef = nnx.graphdef(model)
        vocab = model.cfg.vocab_size
        self.stops = StopAutomaton.for_token_sequences([], vocab) if stops is None else stops
        if self.stops.vocab_size != vocab:
            raise ValueError(f"the stop automaton covers {self.stops.vocab_size} token ids; the model's "
                             f"vocabulary has {vocab} (build it with vocab_size={vocab})")
        self._token_class = jnp.asarray(self.stops.token_class)  # [vocab]
        self._next_state = jnp.asarray(self.stops.next_state)  # [states, classes]
        self._completed = jnp.asarray(self.stops.completed)  # [states, classes]
        self.eos_ids = list(eos_ids)
        self._eos = jnp.asarray(self.eos_ids or [-2], jnp.int32)
        self.mesh, self.rules = mesh, rules
        _check_kernel_shapes(model.cfg.attention, config, mesh, rules)
        self.compile_counts: collections.Counter[str] = collections.Counter()
        shardings = self._state_shardings()
        self._init = jax.jit(self._init_fn, out_shardings=shardings)
        # Prefill and decode are traced for the mesh without pinning (below), so their per-device
        # kernels (splash, the ragged decode attention) know where they run.
        self._prefill = jax.jit(traced_with_activation_sharding(self._prefill_fn, mesh, rules, pin=False))
        self._insert = jax.jit(self._insert_fn, donate_argnums=1, out_shardings=shardings)
        # Extend runs a group of slots' spans (hundreds of tokens each) against their caches: pinned
        # to the rules' activation layout, each device computes its own slots' rows instead of every
        # device computing the whole group (docs/performance.md, "Rollouts"). Prefill (one row)
        # and decode (a token per slot) are not pinned: moving their few activations is cheaper
        # than gathering the weights.
        self._extend = jax.jit(traced_with_activation_sharding(self._extend_fn, mesh, rules), donate_argnums=1,
                               out_shardings=shardings)
        # The host reads every StepOutput: replicated, each process holds all of it (multi-host).
        replicated = None if mesh is None else NamedSharding(mesh, PartitionSpec())
        self._needed = jax.jit(self._needed_fn, out_shardings=replicated)
        self._generate = jax.jit(traced_with_activation_sharding(self._generate_fn, mesh, rules, pin=False),
                                 static_argnums=2, donate_argnums=1,
                                 out_shardings=None if shardings is None else (shardings, replicated))

    # -- public API -------------------------------------------------------------------------------

    def init_decode_state(self) -> DecodeState:
        return self._init()

    def prefill_bucket(self, length: int) -> int:
        return bucket_for(length, self.config.prefill_buckets, "prompt")

    def extend_bucket(self, length: int) -> int:
        return bucket_for(length, self.config.extend_buckets, "tool output")

    def prefill(self, params: nnx.State, tokens: Sequence[int]) -> Prefix:
        """Run a prompt (>= 1 token) once; insert the result into as many slots as share it."""
        if not tokens:
            raise ValueError("prefill needs at least one prompt token")
        bucket = self.prefill_bucket(len(tokens))
        padded = np.zeros((1, bucket), np.int32)
        padded[0, :len(tokens)] = tokens
        return self._prefill(params, jnp.asarray(padded), jnp.int32(len(tokens)))

    def insert(self, prefix: Prefix, state: DecodeState, slot: int, *, seed: int,
               sampling: SamplingParams, budget: int) -> DecodeState:
        """Start a trajectory in `slot` from `prefix`; it may sample up to `budget` tokens."""
        if prefix.valid.shape[1] + 1 > self.config.max_cache_len:
            raise ValueError(f"prompt bucket {prefix.valid.shape[1]} does not fit max_cache_len")
        return self._insert(prefix, state, jnp.int32(slot), jax.random.key_data(jax.random.key(seed)),
                            *_sampling_arrays(sampling), jnp.int32(budget))

    def extend(self, params: nnx.State, state: DecodeState, slots: Sequence[int],
               spans: Sequence[Sequence[int]], budgets: Sequence[int]) -> DecodeState:
        """Append a token span (tool output) to each stopped slot and make it active again.

        Runs in groups of `extend_group` slots, each group padded to one extend bucket. The
        caller keeps every slot's cached length + bucket <= max_cache_len.
        """
        group = self.config.extend_group
        for start in range(0, len(slots), group):
            chunk = list(range(start, min(start + group, len(slots))))
            bucket = self.extend_bucket(max(len(spans[i]) for i in chunk))
            ids = np.zeros((group, bucket), np.int32)
            lengths = np.zeros(group, np.int32)
            rows = np.full(group, self.config.num_slots, np.int32)  # out of range = padding, dropped
            row_budgets = np.zeros(group, np.int32)
            for j, i in enumerate(chunk):
                if not spans[i]:
                    raise ValueError(f"extend span for slot {slots[i]} is empty")
                ids[j, :len(spans[i])], lengths[j], rows[j], row_budgets[j] = (
                    spans[i], len(spans[i]), slots[i], budgets[i])
            state = self._extend(params, state, jnp.asarray(rows), jnp.asarray(ids), jnp.asarray(lengths),
                                 jnp.asarray(row_budgets))
        return state

    def warmup(self, params: nnx.State) -> DecodeState:
        """Compile every bucket up front (a long run then never compiles); returns a fresh state."""
        state = self.init_decode_state()
        for bucket in self.config.prefill_buckets:
            prefix = self.prefill(params, [0] * bucket)
            state = self.insert(prefix, state, 0, seed=0, sampling=SamplingParams(), budget=1)
        for window in self._windows():
            state, _ = self._generate(params, state, window)
        for bucket in self.config.extend_buckets:
            state = self.extend(params, state, [0], [[0] * bucket], [1])
        return self.init_decode_state()

    def generate(self, params: nnx.State, state: DecodeState) -> tuple[DecodeState, StepOutput]:
        """Sample `decode_steps` tokens in every active slot, attending over the smallest
        `decode_windows` entry that holds every slot's cache (one small device read), else all of it."""
        window = self.config.max_cache_len
        if self.config.decode_windows:
            needed = int(jax.device_get(self._needed(state)))
            window = next((w for w in self._windows() if w >= needed), window)
        return self._generate(params, state, window)

    def _windows(self) -> tuple[int, ...]:
        """Every window `generate` may compile for, the whole cache last."""
        return tuple(w for w in self.config.decode_windows if w < self.config.max_cache_len) + (
            self.config.max_cache_len,)

    def abstract_decode_state(self) -> DecodeState:
        """`init_decode_state`'s shapes, dtypes and shardings, with nothing allocated."""
        return jax.eval_shape(self._init)

    def lower_generate(self, params: nnx.State, state: DecodeState, window: int = 0) -> jax.stages.Lowered:
        """`generate` over `window` cache positions (0: the whole cache; else one of `decode_windows`)
        lowered but not run; params and state may be `jax.ShapeDtypeStruct`s with shardings, so
        `ssp_jax.aot` can compile it for a TPU topology without weights or a cache."""
        window = window or self.config.max_cache_len
        if window not in self._windows():
            raise ValueError(f"decode window {window} is not one of the engine's {self._windows()} "
                             "(engine.decode_windows and max_cache_len)")
        return self._generate.lower(params, state, window)

    def lower_prefill(self, params: nnx.State, bucket: int) -> jax.stages.Lowered:
        """`prefill` of a `bucket`-token prompt, lowered but not run (as `lower_generate`)."""
        return self._prefill.lower(params, jax.ShapeDtypeStruct((1, bucket), jnp.int32),
                                   jax.ShapeDtypeStruct((), jnp.int32))

    def lower_extend(self, params: nnx.State, state: DecodeState, bucket: int) -> jax.stages.Lowered:
        """One `extend` call (a group of slots, `bucket`-token spans), lowered but not run."""
        group = self.config.extend_group
        rows = jax.ShapeDtypeStruct((group,), jnp.int32)
        return self._extend.lower(params, state, rows, jax.ShapeDtypeStruct((group, bucket), jnp.int32), rows, rows)

    # -- compiled bodies --------------------------------------------------------------------------

    def _traced(self, name: str, *shape: int) -> None:
        """Runs only while tracing: one increment per compilation."""
        self.compile_counts[name] += 1
        logging.info("engine: compiling %s %s (#%d)", name, shape, self.compile_counts[name])

    def _model(self, params: nnx.State) -> Decoder:
        return nnx.merge(self.graphdef, params)

    def _init_fn(self) -> DecodeState:
        self._traced("init")
        cfg, slots = self.config, self.config.num_slots
        return DecodeState(
            cache=KVCache.create(self.model_config, slots, cfg.max_cache_len),
            tokens=jnp.zeros(slots, jnp.int32), positions=jnp.zeros(slots, jnp.int32),
            active=jnp.zeros(slots, bool), budget=jnp.zeros(slots, jnp.int32),
            seeds=jnp.zeros((slots, 2), jnp.uint32), num_sampled=jnp.zeros(slots, jnp.int32),
            stop_state=jnp.zeros(slots, jnp.int32),
            temperature=jnp.ones(slots, jnp.float32), top_k=jnp.zeros(slots, jnp.int32),
            top_p=jnp.ones(slots, jnp.float32), stop_reason=jnp.zeros(slots, jnp.int32),
            stop_index=jnp.full(slots, -1, jnp.int32))

    def _prefill_fn(self, params: nnx.State, tokens: jax.Array, true_length: jax.Array) -> Prefix:
        bucket = tokens.shape[1]
        self._traced("prefill", bucket)
        mask = jnp.arange(bucket)[None] < true_length - 1  # all but the last (pending) token
        _, cache = self._model(params).prefill(tokens, jnp.arange(bucket)[None], mask)
        return Prefix(k=cache.k, v=cache.v, valid=cache.valid, length=cache.length[0],
                      last_token=tokens[0, true_length - 1])

    def _insert_fn(self, prefix: Prefix, state: DecodeState, slot: jax.Array, seed: jax.Array,
                   temperature: jax.Array, top_k: jax.Array, top_p: jax.Array, budget: jax.Array,
                   ) -> DecodeState:
        self._traced("insert", prefix.valid.shape[1])
        cache = state.cache
        valid_row = jnp.zeros((1, cache.max_len), bool).at[:, :prefix.valid.shape[1]].set(prefix.valid)
        at_slot = lambda buf, new: jax.lax.dynamic_update_slice(buf, new, (slot, 0, 0, 0))  # noqa: E731
        cache = KVCache(k=tuple(map(at_slot, cache.k, prefix.k)), v=tuple(map(at_slot, cache.v, prefix.v)),
                        valid=jax.lax.dynamic_update_slice(cache.valid, valid_row, (slot, 0)),
                        length=cache.length.at[slot].set(prefix.length))
        return dataclasses.replace(
            state, cache=cache, tokens=state.tokens.at[slot].set(prefix.last_token),
            positions=state.positions.at[slot].set(prefix.length), active=state.active.at[slot].set(True),
            budget=state.budget.at[slot].set(budget), seeds=state.seeds.at[slot].set(seed),
            num_sampled=state.num_sampled.at[slot].set(0), stop_state=state.stop_state.at[slot].set(0),
            temperature=state.temperature.at[slot].set(temperature), top_k=state.top_k.at[slot].set(top_k),
            top_p=state.top_p.at[slot].set(top_p), stop_reason=state.stop_reason.at[slot].set(RUNNING),
            stop_index=state.stop_index.at[slot].set(-1))

    def _extend_fn(self, params: nnx.State, state: DecodeState, rows: jax.Array, ids: jax.Array,
                   lengths: jax.Array, budgets: jax.Array) -> DecodeState:
        group, bucket = ids.shape
        self._traced("extend", group, bucket)
        cache = state.cache
        take = lambda x: jnp.take(x, rows, axis=0, mode="clip")  # noqa: E731
        sub = KVCache(k=tuple(map(take, cache.k)), v=tuple(map(take, cache.v)), valid=take(cache.valid),
                      length=take(cache.length))
        # Feed the pending token, then all but the last span token, which becomes the new pending one.
        chunk = jnp.concatenate([take(state.tokens)[:, None], ids[:, :-1]], axis=1)  # [group, bucket]
        positions = take(state.positions)[:, None] + jnp.arange(bucket)
        mask = jnp.arange(bucket)[None] < lengths[:, None]
        _, sub = self._model(params)(chunk, positions, mask, sub)
        last = jnp.take_along_axis(ids, (lengths - 1)[:, None], axis=1)[:, 0]
        put = lambda x, value: x.at[rows].set(value, mode="drop")  # noqa: E731
        cache = KVCache(k=tuple(map(put, cache.k, sub.k)), v=tuple(map(put, cache.v, sub.v)),
                        valid=put(cache.valid, sub.valid), length=put(cache.length, sub.length))
        return dataclasses.replace(
            state, cache=cache, tokens=put(state.tokens, last),
            positions=put(state.positions, take(state.positions) + lengths),
            active=put(state.active, True), budget=put(state.budget, budgets),
            stop_state=put(state.stop_state, 0), stop_reason=put(state.stop_reason, RUNNING),
            stop_index=put(state.stop_index, -1))

    def _needed_fn(self, state: DecodeState) -> jax.Array:
        """Cache positions the next `generate` may touch: the longest slot's plus `decode_steps`.
        Every slot counts, not only the active ones: a stopped slot waiting for its tool output
        must keep its cache, and a step writes (masked) at every slot's length."""
        return jnp.max(state.cache.length) + self.config.decode_steps

    def _generate_fn(self, params: nnx.State, state: DecodeState, window: int) -> tuple[DecodeState, StepOutput]:
        self._traced("generate", self.config.decode_steps, window)
        full = state.cache
        if window < full.max_len:  # attend over the first `window` positions; written back below
            cut = lambda x: x[:, :, :window]  # noqa: E731
            state = dataclasses.replace(state, cache=KVCache(k=tuple(map(cut, full.k)), v=tuple(map(cut, full.v)),
                                                             valid=full.valid[:, :window], length=full.length))

        def step(carry: tuple[nnx.State, DecodeState], _: None) -> tuple[tuple, tuple[jax.Array, ...]]:
            # The weights ride in the carry, unchanged: under `nnx.remat` (model.remat=True) a module
            # must be built from values of the scan's own trace, not closed over from jit's.
            params, state = carry
            model = self._model(params)
            hidden, cache = model(state.tokens[:, None], state.positions[:, None], state.active[:, None],
                                  state.cache)
            logits = model.logits(hidden)[:, 0]  # [slots, vocab]
            keys = jax.vmap(lambda seed, n: jax.random.fold_in(jax.random.wrap_key_data(seed), n))(
                state.seeds, state.num_sampled)
            new, logprobs = sample(logits, keys, state.temperature, state.top_k, state.top_p)
            emitted = state.active
            klass = self._token_class[new]  # [slots]
            completed = self._completed[state.stop_state, klass]  # [slots]: stop index or NO_STOP
            stop_state = jnp.where(emitted, self._next_state[state.stop_state, klass], state.stop_state)
            is_eos = jnp.isin(new, self._eos)
            budget = state.budget - emitted
            reason = jnp.where(is_eos, STOP_EOS, jnp.where(completed >= 0, STOP_SEQUENCE,
                                                         jnp.where(budget <= 0, STOP_BUDGET, RUNNING)))
            finished = emitted & (reason != RUNNING)
            state = dataclasses.replace(
                state, cache=cache, tokens=jnp.where(emitted, new, state.tokens),
                positions=state.positions + emitted, active=emitted & ~finished, budget=budget,
                num_sampled=state.num_sampled + emitted, stop_state=stop_state,
                stop_reason=jnp.where(finished, reason, state.stop_reason),
                stop_index=jnp.where(finished & (reason == STOP_SEQUENCE), completed, state.stop_index))
            return (params, state), (new, logprobs, emitted)

        (_, state), (tokens, logprobs, emitted) = jax.lax.scan(step, (params, state), None,
                                                               length=self.config.decode_steps)
        if window < full.max_len:
            put = lambda buf, part: jax.lax.dynamic_update_slice_in_dim(buf, part, 0, axis=2)  # noqa: E731
            cache = state.cache
            state = dataclasses.replace(state, cache=KVCache(k=tuple(map(put, full.k, cache.k)),
                                                             v=tuple(map(put, full.v, cache.v)),
                                                             valid=jax.lax.dynamic_update_slice_in_dim(
                                                                 full.valid, cache.valid, 0, axis=1),
                                                             length=cache.length))
        return state, StepOutput(tokens=tokens, logprobs=logprobs, emitted=emitted)

    def _state_shardings(self) -> DecodeState | None:
        """KV cache: slots over the batch axes, KV heads over tensor; per-slot vectors over batch."""
        if self.mesh is None:
            return None
        abstract = jax.eval_shape(self._init_fn)
        self.compile_counts.clear()  # eval_shape traced once; that is not a compilation

        # Typed Any: each sharding stands in for an array of the DecodeState pytree it mirrors.
        def spec(axes: tuple[str | None, ...], shape: tuple[int, ...]) -> Any:
            assert self.mesh is not None  # checked above
            return NamedSharding(self.mesh, logical_to_spec(axes, self.rules, shape, self.mesh))

        def per_slot(x: jax.ShapeDtypeStruct) -> Any:
            return spec(("batch",) + (None,) * (x.ndim - 1), x.shape)

        kv = lambda x: spec(("batch", "kv_heads", "cache_length", "head_dim"), x.shape)  # noqa: E731
        cache = KVCache(k=tuple(map(kv, abstract.cache.k)), v=tuple(map(kv, abstract.cache.v)),
                        valid=spec(("batch", "cache_length"), abstract.cache.valid.shape),
                        length=per_slot(abstract.cache.length))
        rest = {f.name: per_slot(getattr(abstract, f.name)) for f in dataclasses.fields(DecodeState)
                if f.name != "cache"}
        return DecodeState(cache=cache, **rest)


def _check_kernel_shapes(attention: str, config: EngineConfig, mesh: Mesh | None, rules: Rules) -> None:
    """Refuse, at construction, shapes the Pallas kernels cannot block: under `splash` a prefill runs
    splash attention (blocks of 128 positions) and a decode step the ragged kernel (blocks of 8+)."""
    with activation_sharding(mesh, rules, pin=False):
        if resolve_backend(attention) != "splash":
            return
    prefill = [b for b in config.prefill_buckets if b % SPLASH_BLOCKS[-1]]
    if prefill:
        raise ValueError(f"engine.prefill_buckets={config.prefill_buckets}: with model.attention={attention!r} on this "
                         f"platform a prefill runs splash attention, which needs multiples of {SPLASH_BLOCKS[-1]} "
                         f"({prefill} are not)")
    caches = [n for n in (config.max_cache_len, *config.decode_windows) if n % DECODE_BLOCKS[-1]]
    if caches:
        raise ValueError(f"engine.max_cache_len={config.max_cache_len}, decode_windows={config.decode_windows}: the "
                         f"ragged decode kernel needs multiples of {DECODE_BLOCKS[-1]} ({caches} are not)")


def _sampling_arrays(sampling: SamplingParams) -> tuple[jax.Array, jax.Array, jax.Array]:
    return (jnp.float32(sampling.temperature), jnp.int32(sampling.top_k), jnp.float32(sampling.top_p))
