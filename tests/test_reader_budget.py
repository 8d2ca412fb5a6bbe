"""The RAG check at paper-size documents, on the real Qwen2.5 BPE and real Wikipedia passages: the
reader's prompt is fitted to its own budget and everything cut or overflowing is counted."""

import numpy as np
import pytest
from test_documents import wiki_blocks

from ssp_jax.agent.rollout import RolloutConfig, RolloutRunner, text_stops
from ssp_jax.agent.trajectory import Trajectory
from ssp_jax.data.gold import AnswerRecord
from ssp_jax.engine.engine import Engine, EngineConfig
from ssp_jax.selfplay.filters import ProposalCheck
from ssp_jax.selfplay.finish import finish_warnings
from ssp_jax.selfplay.step import SelfPlayConfig, SelfPlayGame
from ssp_jax.tokenizer import ChatMLTemplate

QUESTION = "Which composer wrote the symphony that premiered in the city where the treaty was signed in 1815?"


def rag_check(random_qwen, tokenizer, budget, searches=3):
    """Five proposer trajectories of `searches` x top-3 real passages, all with a valid question,
    RAG-checked by a random full-vocabulary reader under prompt budget `budget`."""
    model, params = random_qwen
    reader_cfg = RolloutConfig(max_turns=1, max_response_tokens=4, max_prompt_tokens=budget)
    engine = Engine(model, EngineConfig(num_slots=5, max_cache_len=4096 + 16, prefill_buckets=(2048, 4096),
                                        extend_buckets=(16,), extend_group=1, decode_steps=4),
                    stops=text_stops(tokenizer, reader_cfg.stop_strings, model.cfg.vocab_size),
                    eos_ids=[tokenizer.eos_id])
    reader = RolloutRunner(engine, tokenizer, None, reader_cfg)
    game = SelfPlayGame(SelfPlayConfig(num_distractor_blocks=4, reader_max_tokens=4), tokenizer, ChatMLTemplate(),
                        reader, reader)
    blocks = wiki_blocks(5, searches)
    proposals = [Trajectory(i, 0, [], passages=[block[s * 3:(s + 1) * 3] for s in range(searches)])
                 for i, block in enumerate(blocks)]
    checks = [ProposalCheck(QUESTION, ())] * 5
    answers = [AnswerRecord("Beethoven", searches)] * 5
    return game._rag_check(params, proposals, answers, checks, np.random.default_rng(0))


@pytest.mark.slow
def test_documents_over_the_budget_are_cut_and_counted_never_overflow(random_qwen, qwen_tokenizer):
    """Before: five blocks of 3 searches (~6.5k tokens) overflowed the 4,096 prompt budget, the
    reader finished as "prompt too long" with empty text and nothing recorded why."""
    _, metrics = rag_check(random_qwen, qwen_tokenizer, budget=4096)
    assert metrics["reader/prompts"] == 5 and metrics["reader/finish_prompt_too_long"] == 0.0
    assert 4000 < metrics["reader/prompt_tokens_max"] <= 4096
    assert metrics["reader/cut_prompts"] == 5 and metrics["reader/cut_passages"] == 5 * 5 * 3 * 3
    assert metrics["reader/cut_tokens"] > 5 * (6000 - 4096)
    assert sum(v for k, v in metrics.items() if k.startswith("reader/finish_")) == pytest.approx(1.0)


@pytest.mark.slow
def test_prompt_within_the_budget_is_untouched(random_qwen, qwen_tokenizer):
    _, metrics = rag_check(random_qwen, qwen_tokenizer, budget=4096, searches=1)
    assert metrics["reader/cut_prompts"] == metrics["reader/cut_tokens"] == 0
    assert 1500 < metrics["reader/prompt_tokens_median"] <= metrics["reader/prompt_tokens_max"] < 4096


def test_a_question_that_cannot_fit_is_counted_and_warned(random_qwen, qwen_tokenizer):
    _, metrics = rag_check(random_qwen, qwen_tokenizer, budget=20)
    assert metrics["reader/finish_prompt_too_long"] == 1.0
    (warning,) = [m for m in finish_warnings(metrics, 0.05, reader_reads=True) if "prompt_too_long" in m]
    assert "raise selfplay.reader_max_prompt_tokens" in warning
