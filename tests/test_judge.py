"""The LLM-judge fallback: verdict parsing, prompts, config checks and the EM-or-verdict rule,
by hand; then `python -m ssp_jax.eval` with a real (tiny) judge model writes the judged column."""

import json

import pytest
import search_world as world
from test_eval_cli import LIMIT, SHARD, bare_template, tiny_config, write_benchmarks  # noqa: F401 - fixture

from ssp_jax.agent.prompts import PromptTemplates
from ssp_jax.config import load_config
from ssp_jax.data.gold import QAItem
from ssp_jax.eval import markdown_table, results_table, run_eval
from ssp_jax.selfplay.evaluate import QAResult, summarize
from ssp_jax.selfplay.judge import JudgeConfig, judge_messages, judge_misses, parse_verdict, with_judge


@pytest.mark.parametrize("reply, verdict", [
    ("Yes.", True), ("  yes, it is the same city", True), ("CORRECT", True), ("True", True),
    ("No", False), ("no - the gold is Paris", False), ("Incorrect.", False), ("Wrong", False),
    ("", None), ("maybe", None), ("The answer is yes", None), ("<think>yes</think>", None)])
def test_parse_verdict_reads_the_first_word(reply, verdict):
    assert parse_verdict(reply) is verdict


def test_judge_prompt_lists_every_gold():
    templates = PromptTemplates(judge="Q={question} G={golden_answers} P={prediction}")
    assert judge_messages(templates, "who?", ["Ada", "A. Lovelace"], "Lovelace") == [
        {"role": "user", "content": "Q=who? G=Ada; A. Lovelace P=Lovelace"}]
    with_system = PromptTemplates(judge_system="You judge.", judge="Q={question} G={golden_answers} P={prediction}")
    assert judge_messages(with_system, "who?", "Ada", "x") == [
        {"role": "system", "content": "You judge."}, {"role": "user", "content": "Q=who? G=Ada P=x"}]


def test_judge_config_names_a_bad_field():
    with pytest.raises(ValueError, match=r"'judge' and 'judge_system' must use the fields"):
        PromptTemplates(judge="{question} {golden_answers}")
    with pytest.raises(ValueError, match="judge.max_tokens"):
        JudgeConfig(max_tokens=0)


def test_judge_misses_asks_once_per_miss_and_counts_calls_and_flips():
    """EM hits are never asked and never lowered; misses without a prediction are never asked."""
    cases = [("q0", "Paris", "Paris"), ("q1", "Paris", "the French capital"), ("q2", "Paris", "Rome"),
             ("q3", "Paris", None), ("q4", "Paris", "garbled"), ("q5", "Paris", "")]
    em = [True, False, False, False, False, False]
    asked = []

    def verdicts(batch):
        asked.append(batch)
        return [True, False, None]

    judged = judge_misses(cases, em, verdicts)
    assert asked == [[("q1", "Paris", "the French capital"), ("q2", "Paris", "Rome"), ("q4", "Paris", "garbled")]]
    assert judged.correct == [True, True, False, False, False, False]
    assert (judged.calls, judged.flips, judged.unparsed) == (3, 1, 1)
    assert judged.metrics("rag") == {"judge/rag_calls": 3.0, "judge/rag_flips": 1.0, "judge/rag_unparsed": 1.0}
    assert judge_misses(cases, em, None).correct == em  # no judge: EM
    assert judge_misses(cases[:1], em[:1], verdicts).calls == 0 and len(asked) == 1  # nothing to ask: no call


def result(question, prediction, em):
    return QAResult(QAItem(question, ["gold"]), prediction, em, em, 1, "answer")


def test_with_judge_asks_only_about_misses_and_never_lowers_em():
    results = [result("q0", "gold", 1.0), result("q1", "synonym", 0.0), result("q2", "wrong", 0.0),
               result("q3", None, 0.0), result("q4", "garbled", 0.0)]
    asked = []

    def verdicts(cases):
        asked.extend(cases)
        return [True, False, None]

    judged = with_judge(results, verdicts)
    assert asked == [("q1", ["gold"], "synonym"), ("q2", ["gold"], "wrong"), ("q4", ["gold"], "garbled")]
    assert [r.judge for r in judged] == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert [r.em for r in judged] == [r.em for r in results]
    assert summarize(judged)["eval/judge"] == pytest.approx(0.4)
    assert "eval/judge" not in summarize(results)  # unjudged results report no judge score
    with pytest.raises(ValueError, match="2 verdicts for 3 answers"):
        with_judge(results, lambda cases: [True, True])


def test_table_has_a_judge_column_only_when_judged():
    judged = {"x": with_judge([result("q", "gold", 1.0), result("r", "near", 0.0)], lambda cases: [True])}
    table = results_table(judged)
    assert table["mean"] == pytest.approx({"em": 0.5, "f1": 0.5, "judge": 1.0})
    markdown = markdown_table(table)
    assert "| EM + judge |" in markdown and "| x | 2 | 0.500 | 0.500 | 1.000 | 1.00 |" in markdown
    plain = results_table({"x": [result("q", "gold", 1.0)]})
    assert "judge" not in plain["mean"] and "judge" not in markdown_table(plain)


@pytest.mark.slow
def test_eval_with_a_judge_model_writes_and_resumes_the_judged_column(tmp_path, caplog):
    """The tiny searcher as its own judge: a real engine pass over every miss. It never replies yes
    or no, so the judged score equals EM, and every record carries it."""
    config, specs = tiny_config(), write_benchmarks(tmp_path)
    with config.unlocked():  # a prompt that fits the tiny engine's 32-token prefill bucket
        config.judge.path = str(world.ASSET)
        config.prompts.judge = "{question} {golden_answers} {prediction}"
        config.judge_engine.update(num_slots=4, max_cache_len=320, prefill_buckets=(32,), extend_buckets=(64,),
                                   extend_group=2, decode_steps=8)
    out = tmp_path / "out"
    table = run_eval(load_config(config), world.ASSET, list(specs.values()), out, limit=LIMIT, shard_size=SHARD,
                     retriever=world.ScriptedRetriever())
    for row in table["benchmarks"].values():
        assert row["judge"] == row["em"] and 0 < row["em"] < 1
    assert "replies were neither yes nor no" in caplog.text  # the judge model really was asked
    records = [json.loads(line) for path in sorted(out.glob("*/shard_*.jsonl"))
               for line in path.read_text().splitlines()]
    assert {r["judge"] for r in records} == {0.0, 1.0}
    assert "EM + judge" in (out / "results.md").read_text()
    assert run_eval(load_config(config), world.ASSET, list(specs.values()), out, limit=LIMIT, shard_size=SHARD,
                    retriever=world.ScriptedRetriever()) == table  # read back from the shards
    with config.unlocked():
        config.judge.max_tokens = 4
    with pytest.raises(ValueError, match=r"other \['judge'\]"):  # a judged and an unjudged run never mix
        run_eval(load_config(config), world.ASSET, list(specs.values()), out, limit=LIMIT, shard_size=SHARD)
