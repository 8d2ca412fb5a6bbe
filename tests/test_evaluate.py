"""Greedy solver evaluation: EM/F1 summaries by hand, and a real run with the tiny searcher."""

import json

import pytest
import search_world as world
from flax import nnx

from ssp_jax.agent.prompts import DEFAULT_TEMPLATES, PromptTemplates
from ssp_jax.agent.rollout import RolloutConfig, RolloutRunner, text_stops
from ssp_jax.data.gold import QAItem
from ssp_jax.engine.engine import Engine, EngineConfig
from ssp_jax.selfplay.evaluate import QAResult, evaluate, load_qa_jsonl, summarize
from ssp_jax.tokenizer import ChatTemplate


class BareTemplate(ChatTemplate):
    """The searcher's training format: `<|im_start|>{content}<|im_end|>`, no role header."""

    name, end_of_turn = "bare", "<|im_end|>"

    def _render(self, messages, add_generation_prompt):
        return "".join(f"<|im_start|>{m['content']}<|im_end|>" for m in messages)


def test_summarize_by_hand():
    items = [QAItem("q1", "Paris", hops=1), QAItem("q2", ["Lyon", "Lyons"], hops=2), QAItem("q3", "x", hops=2)]
    results = [QAResult(items[0], "paris", 1.0, 1.0, 1, "answer"), QAResult(items[1], "lyons", 1.0, 1.0, 2, "answer"),
               QAResult(items[2], None, 0.0, 0.0, 0, "length")]
    assert summarize(results) == pytest.approx({"eval/em": 2 / 3, "eval/f1": 2 / 3, "eval/searches": 1.0,
                                                "eval/em_1hop": 1.0, "eval/em_2hop": 0.5})


def test_load_qa_jsonl_and_errors(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"question": "Who?", "golden_answers": ["A", "B"]}) + "\n\n")
    assert load_qa_jsonl(path) == [QAItem("Who?", ["A", "B"], 0)]
    path.write_text('{"question": "no answers"}\n')
    with pytest.raises(ValueError, match=r"qa\.jsonl:1: expected question and golden_answers"):
        load_qa_jsonl(path)


@pytest.mark.slow
def test_greedy_evaluation_with_the_tiny_searcher():
    model, tokenizer = world.trained_searcher()
    config = RolloutConfig(topk=1, retrieval_backoff_s=0.0)
    engine = Engine(model, EngineConfig(num_slots=4, max_cache_len=320, prefill_buckets=(32,), extend_buckets=(64,),
                                        extend_group=2, decode_steps=8),
                    stops=text_stops(tokenizer, config.stop_strings, model.cfg.vocab_size), eos_ids=[tokenizer.eos_id])
    runner = RolloutRunner(engine, tokenizer, world.ScriptedRetriever(), config)
    templates = PromptTemplates(proposer=DEFAULT_TEMPLATES.proposer, solver="find {question}",
                                reader=DEFAULT_TEMPLATES.reader)
    keys = world.KEYS[:6]
    gold = [world.successor(chain_end(k))[1] for k in keys]
    items = [QAItem(k, g if i % 2 else "wrong answer", hops=1) for i, (k, g) in enumerate(zip(keys, gold))]
    results = evaluate(runner, tokenizer, BareTemplate(), nnx.state(model), items, templates)
    assert [r.prediction for r in results] == gold
    assert [r.em for r in results] == [0.0, 1.0] * 3
    assert summarize(results)["eval/em"] == 0.5


def chain_end(key: str) -> str:
    kind, nxt = world.successor(key)
    while kind == "next":
        key = nxt
        kind, nxt = world.successor(key)
    return key
