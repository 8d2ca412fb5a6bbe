"""`python -m ssp_jax.eval`: the tiny searcher over tiny benchmark files, from an HF and an orbax
checkpoint, matching a direct `evaluate` call; resumed runs recompute only missing shards."""

import json

import pytest
import search_world as world
from flax import nnx
from test_evaluate import BareTemplate, chain_end

from ssp_jax.agent.prompts import PromptTemplates
from ssp_jax.agent.rollout import RolloutConfig, RolloutRunner
from ssp_jax.checkpoint import Checkpointer
from ssp_jax.config import base_config, load_config
from ssp_jax.data.gold import QAItem
from ssp_jax.engine.engine import EngineConfig
from ssp_jax.eval import evaluate_benchmarks, run_eval
from ssp_jax.models.policy import Policy
from ssp_jax.models.sharding import DEFAULT_RULES
from ssp_jax.selfplay.evaluate import QAResult, evaluate, load_qa_jsonl, subsample, summarize
from ssp_jax.tokenizer import CHAT_TEMPLATES
from ssp_jax.wiring import make_engine

LIMIT, SHARD = 4, 2


@pytest.fixture(autouse=True)
def bare_template(monkeypatch):
    """The searcher's training format, selectable as config.chat_template = "bare"."""
    monkeypatch.setitem(CHAT_TEMPLATES, "bare", BareTemplate)


def tiny_config():
    config = base_config()
    config.chat_template = "bare"
    config.prompts.solver = "find {question}"
    config.rollout.topk, config.rollout.retrieval_backoff_s = 1, 0.0
    for key, value in dict(num_slots=4, max_cache_len=320, prefill_buckets=(32,), extend_buckets=(64,),
                           extend_group=2, decode_steps=8).items():
        config.engine[key] = value
    return config


def write_benchmarks(tmp_path):
    """alpha: 6 questions (subsampled to 4 -> 2 shards), beta: 3 questions (all kept -> 2 shards);
    every other gold answer is wrong so EM is neither 0 nor 1."""
    specs = {}
    for name, keys in (("alpha", world.KEYS[:6]), ("beta", world.KEYS[10:13])):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"question": k, "golden_answers": [
            world.successor(chain_end(k))[1] if i % 2 else "wrong answer"]}) + "\n" for i, k in enumerate(keys)))
        specs[name] = str(path)
    return specs


def direct_results(config, items):
    model, tokenizer = world.trained_searcher()
    rollout = RolloutConfig(topk=1, retrieval_backoff_s=0.0)
    engine = make_engine(Policy(model, tokenizer, {}, world.ASSET), "bare",
                         EngineConfig(**{k: tuple(v) if isinstance(v, list) else v
                                         for k, v in config.engine.to_dict().items()}),
                         rollout, mesh=None, rules=DEFAULT_RULES)
    runner = RolloutRunner(engine, tokenizer, world.ScriptedRetriever(), rollout)
    templates = PromptTemplates(**{**config.prompts.to_dict(), "solver": "find {question}"})
    return evaluate(runner, tokenizer, BareTemplate(), nnx.state(model, nnx.Param), items, templates)


@pytest.mark.slow
def test_table_matches_direct_evaluate_and_resume_redoes_one_shard(tmp_path):
    config, specs = tiny_config(), write_benchmarks(tmp_path)
    out = tmp_path / "out"
    table = run_eval(load_config(config), world.ASSET, list(specs.values()), out, limit=LIMIT, shard_size=SHARD,
                     retriever=world.ScriptedRetriever())

    for name, path in specs.items():
        items = subsample(load_qa_jsonl(path), LIMIT, config.seed)
        expected = summarize(direct_results(config, items), name)
        row = table["benchmarks"][name]
        assert row["n"] == len(items) == (4 if name == "alpha" else 3)
        assert row["em"] == pytest.approx(expected[f"{name}/em"])
        assert row["f1"] == pytest.approx(expected[f"{name}/f1"])
        assert row["searches"] == pytest.approx(expected[f"{name}/searches"])
        assert 0 < row["em"] < 1
    assert table["mean"]["em"] == pytest.approx((table["benchmarks"]["alpha"]["em"] +
                                                 table["benchmarks"]["beta"]["em"]) / 2)
    assert json.loads((out / "results.json").read_text()) == table
    markdown = (out / "results.md").read_text()
    assert "| alpha | 4 |" in markdown and "| beta | 3 |" in markdown and "**mean**" in markdown

    shards = sorted(out.glob("*/shard_*.jsonl"))
    assert [p.relative_to(out).as_posix() for p in shards] == [
        "alpha/shard_00000.jsonl", "alpha/shard_00001.jsonl", "beta/shard_00000.jsonl", "beta/shard_00001.jsonl"]
    before = {p: p.stat().st_mtime_ns for p in shards}
    redo = out / "beta" / "shard_00000.jsonl"
    redo_questions = [json.loads(line)["question"] for line in redo.read_text().splitlines()]
    redo.unlink()
    retriever = world.ScriptedRetriever()
    assert run_eval(load_config(config), world.ASSET, list(specs.values()), out, limit=LIMIT, shard_size=SHARD,
                    retriever=retriever) == table
    assert {p for p in shards if p.stat().st_mtime_ns != before[p]} == {redo}
    assert sorted(q for call in retriever.calls[:1] for q in call) == sorted(redo_questions)  # first turn only

    with pytest.raises(ValueError, match=r"other \['limit'\]"):
        run_eval(load_config(config), world.ASSET, list(specs.values()), out, limit=LIMIT + 1, shard_size=SHARD)


@pytest.mark.slow
def test_orbax_checkpoint_gives_the_same_table_as_hf(tmp_path):
    """A training run's orbax policy, loaded into the config's (random-init) model shape."""
    config, specs = tiny_config(), write_benchmarks(tmp_path)
    hf = run_eval(load_config(config), world.ASSET, list(specs.values()), tmp_path / "hf", limit=LIMIT,
                  shard_size=SHARD, retriever=world.ScriptedRetriever())
    model, _ = world.trained_searcher()
    run = tmp_path / "run"
    saver = Checkpointer(run / "checkpoints")
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    saver.save(7, {"policy": params, "optimizer": {"unused": params}, "reference": params}, {"step": 7})
    saver.close()
    hf_config = json.loads((world.ASSET / "config.json").read_text())
    with config.unlocked():
        config.model.init = {k: v for k, v in hf_config.items() if k not in ("torch_dtype", "rope_scaling")}
    orbax = run_eval(load_config(config), run / "checkpoints", list(specs.values()), tmp_path / "orbax", limit=LIMIT,
                     shard_size=SHARD, retriever=world.ScriptedRetriever())
    assert (run / "random_init" / "config.json").is_file()  # the shape came from config.model.init
    assert orbax == hf


def test_evaluate_benchmarks_solves_only_missing_shards(tmp_path):
    items = [QAItem(f"q{i}", "a") for i in range(5)]
    calls = []

    def solve(batch):
        calls.append([item.question for item in batch])
        return [QAResult(item, "a", 1.0, 1.0, 1, "answer") for item in batch]

    evaluate_benchmarks({"x": items}, solve, tmp_path, shard_size=2)
    assert calls == [["q0", "q1"], ["q2", "q3"], ["q4"]]
    (tmp_path / "x" / "shard_00001.jsonl").unlink()
    table = evaluate_benchmarks({"x": items}, solve, tmp_path, shard_size=2)
    assert calls[3:] == [["q2", "q3"]]
    assert table["benchmarks"]["x"]["n"] == 5 and table["mean"] == {"em": 1.0, "f1": 1.0}
