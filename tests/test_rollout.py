"""Multi-turn search rollouts driven by a really trained tiny searcher and a scripted retriever."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import search_world as world
from ssp_jax.agent import trajectory as tj
from ssp_jax.agent.rollout import RolloutConfig, RolloutRequest, RolloutRunner, stop_token_sequences
from ssp_jax.engine.engine import Engine, EngineConfig
from ssp_jax.engine.sampling import GREEDY, SamplingParams
from ssp_jax.models.decoder import positions_from_mask
from ssp_jax.tokenizer import information_block

ENGINE = EngineConfig(num_slots=4, max_cache_len=320, prefill_buckets=(32,), extend_buckets=(64,),
                      extend_group=2, decode_steps=8)
ROLLOUT = RolloutConfig(topk=1, retrieval_backoff_s=0.0)


@pytest.fixture(scope="module")
def searcher():
    model, tokenizer = world.trained_searcher()
    engine = Engine(model, ENGINE, stop_sequences=stop_token_sequences(tokenizer, ROLLOUT.stop_strings),
                    eos_ids=[tokenizer.eos_id])
    return model, tokenizer, engine


def runner(searcher, retriever: object = "scripted", **overrides) -> RolloutRunner:
    _, tokenizer, engine = searcher
    config = RolloutConfig(**{**ROLLOUT.__dict__, **overrides})
    retriever = world.ScriptedRetriever() if retriever == "scripted" else retriever
    return RolloutRunner(engine, tokenizer, retriever, config)


def requests(tokenizer, keys, **kwargs) -> list[RolloutRequest]:
    return [RolloutRequest(tokenizer.encode(world.prompt_text(k)), meta=k, **kwargs) for k in keys]


def test_greedy_rollouts_follow_the_chain_across_turns(searcher):
    model, tokenizer, _ = searcher
    keys = world.KEYS[:12]  # 1-3 hops each; 12 trajectories on 4 slots: slots are recycled
    trajs = runner(searcher).run(nnx.state(model), requests(tokenizer, keys, sampling=GREEDY))
    assert [t.meta for t in trajs] == keys
    for key, traj in zip(keys, trajs):
        expected = "".join(text for text, _ in world.demo_response(key)).removesuffix("<|endoftext|>")
        assert traj.finish_reason == tj.FINISH_ANSWER and traj.stop_string == "</answer>"
        assert traj.response_text == expected
        assert traj.num_turns == len(traj.queries) + 1 == 2 + len(list(iter_chain(key)))
        assert traj.answer.content == world.successor(chain_end(key))[1]
        assert_masks_mark_exactly_the_information_blocks(tokenizer, traj)


def test_sampled_logprobs_match_a_full_forward(searcher):
    model, tokenizer, _ = searcher
    trajs = runner(searcher).run(nnx.state(model), requests(
        tokenizer, world.KEYS[:6], num_samples=2, seed=5, sampling=SamplingParams(temperature=1.0)))
    assert len(trajs) == 12 and any(len(t.queries) >= 2 for t in trajs)
    width = max(len(t.tokens) for t in trajs)
    tokens = np.zeros((len(trajs), width), np.int32)
    mask = np.zeros_like(tokens)
    for i, t in enumerate(trajs):
        tokens[i, :len(t.tokens)], mask[i, :len(t.tokens)] = t.tokens, 1
    forward = nnx.jit(lambda m, x, a: m.token_logprobs(m(x, positions_from_mask(a), a)[0][:, :-1], x[:, 1:]))
    ref = np.asarray(forward(model, jnp.asarray(tokens), jnp.asarray(mask)))
    for i, t in enumerate(trajs):
        start = len(t.prompt_ids) - 1  # ref[j] scores tokens[j + 1]
        trained = np.array(t.loss_mask, bool)
        recomputed = ref[i, start:start + len(t.response_ids)][trained]
        np.testing.assert_allclose(np.array(t.logprobs)[trained], recomputed, atol=1e-4)
        assert np.all(np.array(t.logprobs)[~trained] == 0.0)


def test_max_turns_and_length_limits(searcher):
    model, tokenizer, _ = searcher
    loop = requests(tokenizer, [world.LOOP_KEY] * 2, sampling=GREEDY)
    trajs = runner(searcher, max_turns=3).run(nnx.state(model), loop)
    for traj in trajs:
        assert traj.finish_reason == tj.FINISH_MAX_TURNS and traj.num_turns == 3 and len(traj.queries) == 2
        assert traj.response_text.endswith("</search>")
    trajs = runner(searcher, max_response_tokens=60).run(nnx.state(model), loop)
    for traj in trajs:
        assert traj.finish_reason == tj.FINISH_LENGTH and len(traj.response_ids) <= 60
    long_prompt = [RolloutRequest(list(range(1, 40)))]  # over the 32-token prompt limit below
    (traj,) = runner(searcher, max_prompt_tokens=32).run(nnx.state(model), long_prompt)
    assert traj.finish_reason == tj.FINISH_PROMPT_TOO_LONG and "39 tokens" in traj.error


def test_retriever_retry_then_recorded_failure(searcher):
    model, tokenizer, _ = searcher
    flaky = world.ScriptedRetriever(fail_first=2)
    trajs = runner(searcher, flaky).run(nnx.state(model), requests(tokenizer, world.KEYS[1:3], sampling=GREEDY))
    assert all(t.finish_reason == tj.FINISH_ANSWER for t in trajs)
    assert flaky.calls[0] == flaky.calls[2]  # the failed batch was retried as is
    down = world.ScriptedRetriever(always_fail=True)
    trajs = runner(searcher, down).run(nnx.state(model), requests(tokenizer, world.KEYS[:3], sampling=GREEDY))
    for traj in trajs:
        assert traj.finish_reason == tj.FINISH_RETRIEVER_ERROR
        assert "after 3 attempts" in traj.error and "scripted outage" in traj.error
    assert len(down.calls) == 3  # the three first searches were batched into one call, tried 3 times


def test_toolless_generation_never_searches(searcher):
    model, tokenizer, _ = searcher
    trajs = runner(searcher, retriever=None).run(nnx.state(model), requests(tokenizer, world.KEYS[:2], sampling=GREEDY))
    assert [t.finish_reason for t in trajs] == [tj.FINISH_RETRIEVER_ERROR] * 2
    assert all("no retriever" in t.error and not t.queries for t in trajs)
    (single_turn,) = runner(searcher, retriever=None, max_turns=1).run(
        nnx.state(model), requests(tokenizer, world.KEYS[:1], sampling=GREEDY))
    assert single_turn.finish_reason == tj.FINISH_MAX_TURNS and single_turn.error is None


def test_end_of_turn_is_not_part_of_the_response_text(searcher):
    """With no `</answer>` stop the searcher ends on EOS; the text (which the RAG check's reader
    answer is parsed from) must not carry the special token, or no answer would ever match."""
    model, tokenizer, _ = searcher
    stops = ("</search>",)
    engine = Engine(model, ENGINE, stop_sequences=stop_token_sequences(tokenizer, stops), eos_ids=[tokenizer.eos_id])
    config = RolloutConfig(**{**ROLLOUT.__dict__, "stop_strings": stops})
    (traj,) = RolloutRunner(engine, tokenizer, world.ScriptedRetriever(), config).run(
        nnx.state(model), requests(tokenizer, world.KEYS[:1], sampling=GREEDY))
    assert traj.finish_reason == tj.FINISH_EOS and traj.response_ids[-1] == tokenizer.eos_id
    assert traj.response_text.endswith("</answer>")
    assert traj.answer.content == world.successor(chain_end(world.KEYS[0]))[1]


def test_no_recompilation_across_many_rollouts(searcher):
    model, tokenizer, engine = searcher
    params = nnx.state(model)
    engine.warmup(params)
    compiled = dict(engine.compile_counts)
    keys = list(np.random.default_rng(0).choice(world.KEYS, 20))
    runner(searcher).run(params, requests(tokenizer, keys, num_samples=2, sampling=SamplingParams()))
    assert dict(engine.compile_counts) == compiled


def test_runner_rejects_mismatched_stops(searcher):
    model, tokenizer, _ = searcher
    engine = Engine(model, ENGINE, stop_sequences=[[1]])
    with pytest.raises(ValueError, match="stop sequences"):
        RolloutRunner(engine, tokenizer, world.ScriptedRetriever(), ROLLOUT)


def chain_end(key: str) -> str:
    return ([key] + list(iter_chain(key)))[-1]


def iter_chain(key: str):
    kind, nxt = world.successor(key)
    while kind == "next":
        yield nxt
        kind, nxt = world.successor(nxt)


def assert_masks_mark_exactly_the_information_blocks(tokenizer, traj: tj.Trajectory) -> None:
    """Mask-0 runs of the response are exactly the information blocks of the recorded passages."""
    runs, current = [], []
    for token, m in zip(traj.response_ids, traj.loss_mask):
        if m == 0:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    expected = [information_block([(p.title, p.text) for p in passages]) for passages in traj.passages]
    assert [tokenizer.decode(run) for run in runs] == expected
    assert sum(traj.loss_mask) == len(traj.response_ids) - sum(map(len, runs)) > 0
