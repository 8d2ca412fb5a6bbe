"""Multi-turn search rollouts driven by a really trained tiny searcher and a scripted retriever."""

import jax.numpy as jnp
import numpy as np
import pytest
import search_world as world
from flax import nnx

from ssp_jax.agent import trajectory as tj
from ssp_jax.agent.prompts import PromptTemplates
from ssp_jax.agent.rollout import RolloutConfig, RolloutRequest, RolloutRunner, text_stops
from ssp_jax.data.gold import AnswerRecord
from ssp_jax.engine.engine import Engine, EngineConfig
from ssp_jax.engine.sampling import GREEDY, SamplingParams
from ssp_jax.models.decoder import positions_from_mask
from ssp_jax.retrieval.document_set import DocumentSet
from ssp_jax.selfplay.filters import ProposalCheck
from ssp_jax.selfplay.pool import PoolQuestion, QuestionPool
from ssp_jax.selfplay.rewards import exact_match, final_answer
from ssp_jax.selfplay.step import SelfPlayConfig, SelfPlayGame
from ssp_jax.tokenizer import ChatTemplate, information_block

ENGINE = EngineConfig(num_slots=4, max_cache_len=320, prefill_buckets=(32,), extend_buckets=(64,),
                      extend_group=2, decode_steps=8)
ROLLOUT = RolloutConfig(topk=1, retrieval_backoff_s=0.0)


@pytest.fixture(scope="module")
def searcher():
    model, tokenizer = world.trained_searcher()
    engine = Engine(model, ENGINE, stops=text_stops(tokenizer, ROLLOUT.stop_strings, model.cfg.vocab_size),
                    eos_ids=[tokenizer.eos_id])
    return model, tokenizer, engine


def runner(searcher, retriever: object = "scripted", **overrides) -> RolloutRunner:
    _, tokenizer, engine = searcher
    config = RolloutConfig(**{**ROLLOUT.__dict__, **overrides})
    retriever = world.ScriptedRetriever() if retriever == "scripted" else retriever
    return RolloutRunner(engine, tokenizer, retriever, config)


def requests(tokenizer, keys, **kwargs) -> list[RolloutRequest]:
    return [RolloutRequest(tokenizer.encode(world.prompt_text(k)), meta=k, **kwargs) for k in keys]


@pytest.mark.slow
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


def test_a_request_s_own_retriever_answers_its_searches(searcher):
    """The RAG check's searching reader: a request with a `DocumentSet` is answered from those
    passages only, on a tool-less runner, while other requests still use the runner's retriever."""
    model, tokenizer, _ = searcher
    key = next(k for k in world.KEYS if len(list(iter_chain(k))) == 2)
    chain = [key, *iter_chain(key)]
    distractors = [world._passage(k) for k in world.KEYS[40:44]]
    full = DocumentSet([world._passage(k) for k in chain] + distractors)
    missing_hop = DocumentSet([world._passage(k) for k in chain[:2]] + distractors)
    scripted = world.ScriptedRetriever()
    own = [RolloutRequest(tokenizer.encode(world.prompt_text(key)), sampling=GREEDY, retriever=r)
           for r in (full, missing_hop)]
    shared = requests(tokenizer, world.KEYS[1:2], sampling=GREEDY)
    with_set, without_hop, plain = runner(searcher, scripted).run(nnx.state(model), own + shared)
    expected = "".join(text for text, _ in world.demo_response(key)).removesuffix("<|endoftext|>")
    assert with_set.response_text == expected and with_set.queries == chain
    assert without_hop.passages[2][0].id != chain[2]  # the last hop's passage is not in its set
    assert without_hop.answer.content != with_set.answer.content
    assert plain.finish_reason == tj.FINISH_ANSWER
    assert {q for call in scripted.calls for q in call} == set(plain.queries)  # only `plain` used it
    (toolless,) = runner(searcher, retriever=None).run(nnx.state(model), own[:1])
    assert toolless.response_text == expected


class RawChat(ChatTemplate):
    """The searcher's training format: one user message wrapped as it was in its demos."""

    name, end_of_turn = "raw", "<|im_end|>"

    def _render(self, messages, add_generation_prompt):
        return f"<|im_start|>{messages[-1]['content']}<|im_end|>"


@pytest.mark.parametrize("hide_last_hop", [False, True])
def test_searching_rag_reader_passes_only_questions_its_documents_answer(searcher, hide_last_hop):
    """`rag_reader="search"`: the reader follows the chain through the proposer's documents (plus a
    distractor block) and passes the question only when every hop's passage is among them."""
    model, tokenizer, engine = searcher
    key = next(k for k in world.KEYS if len(list(iter_chain(k))) == 2)
    chain = [key, *iter_chain(key)]
    own = [world._passage(k) for k in (chain[:2] if hide_last_hop else chain)]
    proposals = [tj.Trajectory(0, 0, [], passages=[[p] for p in own]),
                 tj.Trajectory(1, 0, [], passages=[[world._passage(k)] for k in world.KEYS[40:43]])]
    checks = [ProposalCheck(key, ()), ProposalCheck(None, ("no_question",))]
    answers = [AnswerRecord(world.successor(chain[-1])[1], 2), AnswerRecord("none", 2)]
    templates = PromptTemplates(solver="find {question}")
    game = SelfPlayGame(SelfPlayConfig(rag_reader="search", num_distractor_blocks=1), tokenizer, RawChat(),
                        runner(searcher, retriever=None), runner(searcher, retriever=None), templates)
    passed, _ = game._rag_check(nnx.state(model), proposals, answers, checks, np.random.default_rng(0))
    assert passed == [not hide_last_hop, False]  # an invalid proposal is never read


# The searcher's own prompt ("find <key>"); the other required fields are formatted to nothing.
SEARCHER_PROPOSER = "find {answer}{examples:.0}{num_searches!s:.0}"


def test_proposer_temperature_applies_to_the_proposer_only(searcher):
    """`selfplay.proposer_temperature=0` proposes greedily: the same trajectories under any seed,
    where the shared temperature (1.0, unset override) samples different ones per seed."""
    model, tokenizer, _ = searcher
    params = nnx.state(model)
    answers = [AnswerRecord(key, 2) for key in world.KEYS[:6]]

    def proposed(seed: int, **overrides) -> list[str]:
        game = SelfPlayGame(SelfPlayConfig(rag_check=False, **overrides), tokenizer, RawChat(), runner(searcher),
                            runner(searcher), PromptTemplates(proposer=SEARCHER_PROPOSER))
        return [t.response_text for t in game.propose(params, params, answers, np.random.default_rng(0), seed)
                .trajectories]

    greedy = dict(proposer_temperature=0.0, off_policy_sampling=True)
    assert proposed(1, **greedy) == proposed(2, **greedy)
    assert proposed(1) != proposed(2)


@pytest.mark.slow
def test_end_of_turn_is_not_part_of_the_response_text(searcher):
    """With no `</answer>` stop the searcher ends on EOS; the text (which the RAG check's reader
    answer is parsed from) must not carry the special token, or no answer would ever match."""
    model, tokenizer, _ = searcher
    stops = ("</search>",)
    engine = Engine(model, ENGINE, stops=text_stops(tokenizer, stops, model.cfg.vocab_size), eos_ids=[tokenizer.eos_id])
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
    engine = Engine(model, ENGINE, stops=text_stops(tokenizer, ("</search>",), model.cfg.vocab_size))
    with pytest.raises(ValueError, match="differ from RolloutConfig.stop_strings"):
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


class Judge:
    """Scripted verdicts that record what they were asked: yes to every answer."""

    def __init__(self):
        self.asked = []

    def __call__(self, cases):
        self.asked.extend(cases)
        return [True] * len(cases)


def test_the_judge_passes_rag_checks_that_exact_match_fails(searcher):
    """The reader follows the chain to its true end, but the gold is wrong for the second question:
    EM fails it, the judge is asked about that reply alone (never about the EM pass) and passes it."""
    model, tokenizer, _ = searcher
    keys = [k for k in world.KEYS if len(list(iter_chain(k))) == 1][:2]
    proposals = [tj.Trajectory(i, 0, [], passages=[[world._passage(k)] for k in [key, *iter_chain(key)]])
                 for i, key in enumerate(keys)]
    checks = [ProposalCheck(key, ()) for key in keys]
    answers = [AnswerRecord(world.successor(chain_end(keys[0]))[1], 2), AnswerRecord("a wrong gold", 2)]
    judge = Judge()

    def rag(verdicts):
        game = SelfPlayGame(SelfPlayConfig(rag_reader="search", num_distractor_blocks=0), tokenizer, RawChat(),
                            runner(searcher, retriever=None), runner(searcher, retriever=None),
                            PromptTemplates(solver="find {question}"), judge=verdicts)
        return game._rag_check(nnx.state(model), proposals, answers, checks, np.random.default_rng(0))

    assert rag(None)[0] == [True, False]
    passed, metrics = rag(judge)
    assert passed == [True, True]
    assert judge.asked == [(keys[1], "a wrong gold", world.successor(chain_end(keys[1]))[1])]
    assert (metrics["judge/rag_calls"], metrics["judge/rag_flips"], metrics["judge/rag_unparsed"]) == (1, 1, 0)


def test_the_judge_raises_solver_rewards_only_where_exact_match_failed(searcher):
    """The same solver rollouts scored by EM and by EM-then-judge: the judge is asked only about
    final answers EM rejected (half the golds are wrong), and only raises rewards."""
    model, tokenizer, _ = searcher
    keys = world.KEYS[:4]
    pool = [PoolQuestion(k, world.successor(chain_end(k))[1] if i % 2 else "a wrong gold") for i, k in enumerate(keys)]

    def play(verdicts):
        game = SelfPlayGame(SelfPlayConfig(rag_check=False, batch_size=4, solver_samples=2), tokenizer, RawChat(),
                            runner(searcher), runner(searcher, retriever=None),
                            PromptTemplates(solver="find {question}"), judge=verdicts)
        return game.play(nnx.state(model), nnx.state(model), [AnswerRecord("x", 2)] * 4, QuestionPool(10, pool),
                         np.random.default_rng(0), seed=0, fixed=True)

    judge = Judge()
    plain, judged = play(None), play(judge)
    assert [t.response_text for t in plain.solver] == [t.response_text for t in judged.solver]
    finals = [final_answer(t.response_text) for t in judged.solver]
    misses = [f is not None and not exact_match(f, t.meta.gold) for t, f in zip(judged.solver, finals)]
    assert sum(misses) >= 2 and judged.metrics["judge/solver_calls"] == len(judge.asked) == sum(misses)
    assert judged.metrics["judge/solver_flips"] == sum(misses) and "judge/solver_calls" not in plain.metrics
    np.testing.assert_array_equal(judged.solver_rewards.ravel(),
                                  np.where(misses, 1.0, plain.solver_rewards.ravel()))
