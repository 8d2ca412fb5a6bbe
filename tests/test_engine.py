"""The slot engine against transformers `generate` and against full-forward recomputation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import build_hf_model
from flax import nnx

from ssp_jax.engine.engine import STOP_BUDGET, STOP_EOS, STOP_SEQUENCE, Engine, EngineConfig
from ssp_jax.engine.sampling import GREEDY, SamplingParams, sample
from ssp_jax.engine.stops import StopAutomaton
from ssp_jax.models.decoder import positions_from_mask
from ssp_jax.models.hf_import import load_hf_decoder
from ssp_jax.models.sharding import MeshConfig, make_mesh

CONFIG = EngineConfig(num_slots=4, max_cache_len=96, prefill_buckets=(16, 32), extend_buckets=(8, 16),
                      extend_group=2, decode_steps=6)
PROMPTS = [list(np.random.default_rng(0).integers(1, 256, n)) for n in (5, 11, 3, 17)]


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    reference = build_hf_model("qwen2", tied=False)
    path = tmp_path_factory.mktemp("qwen2")
    reference.save_pretrained(path)
    model, _ = load_hf_decoder(path)
    return reference, model, path


def run_to_completion(engine: Engine, params, state, num_slots: int):
    """Generate until no slot is active; per-slot (tokens, logprobs)."""
    tokens, logprobs = [[] for _ in range(num_slots)], [[] for _ in range(num_slots)]
    while np.asarray(state.active).any():
        state, out = engine.generate(params, state)
        t, lp, e = np.asarray(out.tokens), np.asarray(out.logprobs), np.asarray(out.emitted)
        for s in range(num_slots):
            tokens[s] += t[e[:, s], s].tolist()
            logprobs[s] += lp[e[:, s], s].tolist()
    return state, tokens, logprobs


def full_forward_logprobs(model, ids: list[int]) -> np.ndarray:
    """log p(ids[i] | ids[:i]) for i >= 1, from one uncached forward."""
    tokens = jnp.asarray([ids], jnp.int32)
    mask = jnp.ones_like(tokens)
    hidden, _ = model(tokens, positions_from_mask(mask), mask)
    return np.asarray(model.token_logprobs(hidden[:, :-1], tokens[:, 1:]))[0]


@pytest.mark.slow
def test_greedy_matches_transformers_generate(qwen2):
    reference, model, _ = qwen2
    engine = Engine(model, CONFIG)
    params = nnx.state(model)
    state = engine.init_decode_state()
    for slot, prompt in enumerate(PROMPTS):
        state = engine.insert(engine.prefill(params, prompt), state, slot, seed=slot, sampling=GREEDY, budget=20)
    state, ours, _ = run_to_completion(engine, params, state, len(PROMPTS))
    assert (np.asarray(state.stop_reason) == STOP_BUDGET).all()
    # transformers: the same prompts in ONE left-padded batch.
    width = max(map(len, PROMPTS))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in PROMPTS])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in PROMPTS])
    with torch.no_grad():
        out = reference.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20, do_sample=False,
                                 eos_token_id=None, pad_token_id=0)
    assert ours == out[:, width:].tolist()


@pytest.mark.slow
def test_sampled_logprobs_and_extend_match_full_forward(qwen2):
    """Sample, stop, extend with 'tool' tokens, sample again: every sampled token's log-prob equals
    a full forward of the finished sequence (this exercises prefill, decode and extend paths)."""
    _, model, _ = qwen2
    engine = Engine(model, CONFIG)
    params = nnx.state(model)
    state = engine.init_decode_state()
    for slot, prompt in enumerate(PROMPTS):
        state = engine.insert(engine.prefill(params, prompt), state, slot, seed=10 + slot,
                              sampling=SamplingParams(temperature=1.0), budget=7 + slot)
    state, first, first_lp = run_to_completion(engine, params, state, 4)
    tools = [list(np.random.default_rng(s).integers(1, 256, 3 + 4 * s)) for s in range(3)]  # slot 3 idle
    state = engine.extend(params, state, [0, 1, 2], tools, [9, 5, 12])
    state, second, second_lp = run_to_completion(engine, params, state, 4)
    assert [len(x) for x in second] == [9, 5, 12, 0]
    for slot in range(4):
        tool = tools[slot] if slot < 3 else []
        seq = PROMPTS[slot] + first[slot] + tool + second[slot]
        ref = full_forward_logprobs(model, seq)
        n_prompt, n_first = len(PROMPTS[slot]), len(first[slot])
        sampled_at = list(range(n_prompt, n_prompt + n_first)) + list(
            range(n_prompt + n_first + len(tool), len(seq)))
        np.testing.assert_allclose(first_lp[slot] + second_lp[slot], ref[np.array(sampled_at) - 1], atol=1e-4)


@pytest.mark.slow  # over 2 s
def test_decode_windows_sample_what_the_whole_cache_samples(qwen2):
    """With `decode_windows`, `generate` attends over the smallest window holding every slot's cache
    (slots of 5-17 prompt tokens, then a tool span and more tokens, cross the windows): the same
    tokens and log-probs as attending over the whole cache, a stopped slot's cache kept intact."""
    _, model, _ = qwen2
    params = nnx.state(model)
    runs = {}
    for windows in ((), (24, 48)):
        engine = Engine(model, dataclasses.replace(CONFIG, decode_windows=windows))
        state = engine.warmup(params)
        for slot, prompt in enumerate(PROMPTS):
            state = engine.insert(engine.prefill(params, prompt), state, slot, seed=10 + slot,
                                  sampling=SamplingParams(temperature=1.0), budget=7 + slot)
        state, first, first_lp = run_to_completion(engine, params, state, 4)
        tools = [list(np.random.default_rng(s).integers(1, 256, 3 + 4 * s)) for s in range(3)]
        state = engine.extend(params, state, [0, 1, 2], tools, [9, 5, 12])
        state, second, second_lp = run_to_completion(engine, params, state, 4)
        runs[windows] = (first, second, first_lp + second_lp, dict(engine.compile_counts))
    (a_first, a_second, a_lp, counts), (b_first, b_second, b_lp, windowed) = runs.values()
    assert (a_first, a_second) == (b_first, b_second)
    np.testing.assert_allclose(np.concatenate([np.asarray(x) for x in b_lp]),
                               np.concatenate([np.asarray(x) for x in a_lp]), atol=1e-6)
    assert counts["generate"] == 1 and windowed["generate"] == 3  # windows 24, 48 and the whole 96


def test_prefix_sharing_and_per_slot_prng(qwen2):
    """One prefill serves several slots; a slot's samples depend only on its seed, not on its
    slot index or on what the other slots do."""
    _, model, _ = qwen2
    engine = Engine(model, CONFIG)
    params = nnx.state(model)
    prefix = engine.prefill(params, PROMPTS[1])
    sampling = SamplingParams(temperature=1.0)
    state = engine.init_decode_state()
    for slot, seed in enumerate([7, 8, 7]):
        state = engine.insert(prefix, state, slot, seed=seed, sampling=sampling, budget=12)
    state = engine.insert(engine.prefill(params, PROMPTS[0]), state, 3, seed=7, sampling=GREEDY, budget=3)
    _, tokens, _ = run_to_completion(engine, params, state, 4)
    assert tokens[0] == tokens[2] != tokens[1]
    state = engine.insert(prefix, engine.init_decode_state(), 2, seed=7, sampling=sampling, budget=12)
    _, alone, _ = run_to_completion(engine, params, state, 4)
    assert alone[2] == tokens[0]
    assert engine.compile_counts["prefill"] == 1  # both prompts fall in the 16-token bucket


@pytest.mark.slow
def test_token_sequence_stops_and_eos(qwen2):
    _, model, _ = qwen2
    probe = Engine(model, CONFIG)
    params = nnx.state(model)
    state = probe.insert(probe.prefill(params, PROMPTS[0]), probe.init_decode_state(), 0, seed=0,
                         sampling=GREEDY, budget=12)
    _, greedy, _ = run_to_completion(probe, params, state, 4)
    greedy = greedy[0]
    # A two-token stop sequence ending at greedy position 5, and EOS = the token at position 3.
    vocab = model.cfg.vocab_size
    stops = Engine(model, CONFIG, stops=StopAutomaton.for_token_sequences([[999, 998], greedy[4:6]], vocab))
    state = stops.insert(stops.prefill(params, PROMPTS[0]), stops.init_decode_state(), 0, seed=0,
                         sampling=GREEDY, budget=12)
    state, out, _ = run_to_completion(stops, params, state, 4)
    first_match = next(i for i in range(1, 6) if greedy[i - 1:i + 1] == greedy[4:6])
    assert out[0] == greedy[:first_match + 1]
    assert int(state.stop_reason[0]) == STOP_SEQUENCE and int(state.stop_index[0]) == 1
    eos = Engine(model, CONFIG, eos_ids=[greedy[3]])
    state = eos.insert(eos.prefill(params, PROMPTS[0]), eos.init_decode_state(), 0, seed=0,
                       sampling=GREEDY, budget=12)
    state, out, _ = run_to_completion(eos, params, state, 4)
    assert out[0] == greedy[:greedy.index(greedy[3]) + 1] and int(state.stop_reason[0]) == STOP_EOS


@pytest.mark.slow
def test_no_recompilation_after_warmup(qwen2):
    _, model, _ = qwen2
    engine = Engine(model, CONFIG)
    params = nnx.state(model)
    state = engine.warmup(params)
    compiled = dict(engine.compile_counts)
    rng = np.random.default_rng(3)
    for round_ in range(3):
        for slot in range(4):
            prompt = list(rng.integers(1, 256, rng.integers(1, 33)))
            state = engine.insert(engine.prefill(params, prompt), state, slot, seed=round_,
                                  sampling=SamplingParams(temperature=1.0, top_k=5, top_p=0.9),
                                  budget=int(rng.integers(1, 10)))
        state, _, _ = run_to_completion(engine, params, state, 4)
        spans = [list(rng.integers(1, 256, rng.integers(1, 17))) for _ in range(3)]
        state = engine.extend(params, state, [0, 1, 3], spans, [2, 2, 2])
        state, _, _ = run_to_completion(engine, params, state, 4)
    assert dict(engine.compile_counts) == compiled
    assert compiled == {"init": 1, "prefill": 2, "insert": 2, "generate": 1, "extend": 2}


@pytest.mark.slow
def test_sharded_engine_matches_single_device(qwen2):
    """Prefill, decode and extend on a mesh equal one device. The extend group (4 slots) splits over
    the 4 devices of the batch axes: each computes its own slot's span (the activation pins)."""
    _, model, path = qwen2
    mesh = make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
    sharded, _ = load_hf_decoder(path, mesh=mesh)
    config = dataclasses.replace(CONFIG, extend_group=4)
    spans = [list(np.random.default_rng(slot).integers(1, 256, 4 + 3 * slot)) for slot in range(4)]
    results = []
    for engine, params in ((Engine(model, config), nnx.state(model)),
                           (Engine(sharded, config, mesh=mesh), nnx.state(sharded))):
        state = engine.init_decode_state()
        for slot, prompt in enumerate(PROMPTS):
            state = engine.insert(engine.prefill(params, prompt), state, slot, seed=slot, sampling=GREEDY,
                                  budget=10)
        state, first, _ = run_to_completion(engine, params, state, 4)
        state = engine.extend(params, state, [0, 1, 2, 3], spans, [6] * 4)
        state, second, logprobs = run_to_completion(engine, params, state, 4)
        results.append((first, second, logprobs))
        if engine.mesh is not None:
            assert state.cache.k[0].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"), "tensor", None, None)
    assert results[0][:2] == results[1][:2]
    for one, other in zip(results[0][2], results[1][2]):
        np.testing.assert_allclose(one, other, atol=1e-4)


@pytest.mark.slow
def test_remat_policy_generates_like_plain(qwen2):
    """Training configs rematerialise layers (model.remat); the same module must still decode."""
    _, model, path = qwen2
    remat, _ = load_hf_decoder(path, remat=True)
    results = []
    for m in (model, remat):
        engine, params = Engine(m, CONFIG), nnx.state(m)
        state = engine.insert(engine.prefill(params, PROMPTS[0]), engine.init_decode_state(), 0, seed=0,
                              sampling=GREEDY, budget=8)
        results.append(run_to_completion(engine, params, state, 1)[1])
    assert results[0] == results[1] and len(results[0][0]) == 8


@pytest.mark.slow
def test_sample_filters_by_hand():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 4))
    keys = jax.random.split(jax.random.key(0), 4)
    temperature = jnp.array([0.0, 1.0, 1.0, 1.0])
    top_k = jnp.array([0, 1, 0, 2])
    top_p = jnp.array([1.0, 1.0, 0.5, 1.0])
    tokens, logprobs = sample(logits, keys, temperature, top_k, top_p)
    assert tokens[:3].tolist() == [0, 0, 0]  # greedy; top-k 1; top-p 0.5 keeps only the 0.5 token
    assert tokens[3] in (0, 1)
    np.testing.assert_allclose(logprobs, np.log([0.5, 0.5, 0.5, [0.5, 0.3][int(tokens[3])]]), rtol=1e-6)
    n = 400
    draws, _ = sample(jnp.repeat(logits[:1], n, 0), jax.random.split(jax.random.key(1), n), jnp.ones(n),
                      jnp.full(n, 2), jnp.ones(n))
    assert set(draws.tolist()) == {0, 1} and 0.55 < float((draws == 0).mean()) < 0.7  # renormalised 0.625
    # An all-greedy step (evaluation) takes the branch that draws no random bits: the same argmax.
    greedy, greedy_logprobs = sample(logits[::-1], keys, jnp.zeros(4), jnp.zeros(4, jnp.int32), jnp.ones(4))
    assert greedy.tolist() == [0, 0, 0, 0]
    np.testing.assert_allclose(greedy_logprobs, np.log([0.5] * 4), rtol=1e-6)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)


def test_engine_implements_the_slot_engine_contract(qwen2) -> None:
    """`Engine` offers every method of `api.SlotEngine` with the same signature, and the attributes;
    the rollout loop and the JetStream adapter are typed against the contract alone."""
    import inspect

    from ssp_jax.engine.api import SlotEngine

    methods = [n for n, v in vars(SlotEngine).items() if inspect.isfunction(v) and not n.startswith("_")]
    assert set(methods) == {"init_decode_state", "prefill_bucket", "extend_bucket", "prefill", "insert", "extend",
                            "generate", "warmup"}
    for name in methods:
        assert inspect.signature(getattr(Engine, name)) == inspect.signature(getattr(SlotEngine, name)), name
    assert set(SlotEngine.__annotations__) == {"config", "stops", "eos_ids"}
    engine = Engine(qwen2[1], CONFIG)
    assert all(hasattr(engine, a) for a in SlotEngine.__annotations__)
