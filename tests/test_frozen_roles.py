"""A frozen RAG reader with a tokenizer of its own, and the LLM judge in training, in the micro world.

The reader is the micro world's warm start under another numbering of its BPE vocabulary, with the
embedding rows moved to match: the same model, but no token id means the same thing to it as to the
policy. Only text crosses the role boundary (documents and question in, answer text out), so its
RAG check reads exactly what the policy-as-reader reads. A shared token id anywhere would make it
read garbage. The judge is the warm start itself, loaded as a frozen model.
"""

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from ssp_jax.agent.trajectory import Trajectory
from ssp_jax.config import load_config
from ssp_jax.data.gold import AnswerRecord
from ssp_jax.models.hf_import import export_hf_decoder, load_hf_decoder
from ssp_jax.selfplay.filters import ProposalCheck
from ssp_jax.selfplay.rewards import exact_match
from ssp_jax.selfplay.step import reader_answer
from ssp_jax.tokenizer import TOKENIZER_FILE
from ssp_jax.train import Trainer
from ssp_jax.worlds.microworld import World

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "configs"))
import tiny  # noqa: E402

# As tests/test_warmstart.py: a warm start built in seconds.
SMALL = dict(enabled=True, num_solver=6, num_proposer=4, num_reader=4, passage_repeats=1)
SFT = dict(steps=3, batch_size=4, length_buckets=(2048,), warmup_steps=1)


def micro_config(**extra):
    config = tiny.get_config()
    config.mesh.fsdp = 1
    config.train.steps = 1
    config.model.warm_start.update(SMALL)
    config.model.sft.update(SFT)
    for key, value in extra.items():
        section, field = key.split(".")
        config[section][field] = value
    return load_config(config)


def renumbered_copy(source: Path, target: Path) -> dict[int, int]:
    """`source` with its BPE tokens numbered in reverse (added and special tokens keep their ids) and
    the embedding rows (and output columns) moved to match; returns old id -> new id."""
    tokenizer = json.loads((source / TOKENIZER_FILE).read_text())
    added = {t["id"] for t in tokenizer["added_tokens"]}
    movable = sorted(i for i in tokenizer["model"]["vocab"].values() if i not in added)
    new_id = dict(zip(movable, reversed(movable)))
    tokenizer["model"]["vocab"] = {t: new_id.get(i, i) for t, i in tokenizer["model"]["vocab"].items()}
    model, hf_config = load_hf_decoder(source)
    rows = np.arange(model.cfg.vocab_size)
    rows[list(new_id.values())] = list(new_id.keys())  # new row i holds old row rows[i]
    model.embed.value = model.embed.value[rows]  # [vocab, embed]
    if not model.cfg.tie_embeddings:
        model.lm_head.value = model.lm_head.value[:, rows]  # [embed, vocab]
    export_hf_decoder(model, target, hf_config=hf_config)
    for path in source.glob("*.json"):
        if path.name not in ("config.json", "model.safetensors.index.json"):
            shutil.copy(path, target / path.name)
    (target / TOKENIZER_FILE).write_text(json.dumps(tokenizer))
    return new_id


@pytest.fixture(scope="module")
def trainers(tmp_path_factory):
    """(the policy reads and EM alone scores; a renumbered frozen reader reads and the warm start judges)."""
    workdir = tmp_path_factory.mktemp("micro")
    shared = Trainer(micro_config(), workdir)  # builds and caches the warm start
    warm = workdir / "warm_start"
    renumbered = renumbered_copy(warm, workdir / "renumbered_reader")
    own = Trainer(micro_config(**{"reader.path": str(workdir / "renumbered_reader"), "judge.path": str(warm)}), workdir)
    return shared, own, renumbered


def proposals(trainer: Trainer, count: int = 6):
    """Rule-valid proposals of held-out questions, each with the passages a search for it finds."""
    world = World(trainer.config.data.microworld)
    questions = world.heldout_questions("dev")[:count]
    found = trainer.game.runner.retriever.search([q.question for q in questions], 3)
    return ([Trajectory(i, 0, [], passages=[passages]) for i, passages in enumerate(found)],
            [AnswerRecord(list(q.golden_answers), 2) for q in questions],
            [ProposalCheck(q.question, ()) for q in questions])


@pytest.mark.slow
def test_a_reader_with_its_own_tokenizer_reads_what_the_policy_reads(trainers):
    shared, own, renumbered = trainers
    policy_tok, reader_tok = shared.game.tokenizer, own.game.reader.tokenizer
    assert reader_tok is not policy_tok and own.game.tokenizer.token_to_id("Doc") == policy_tok.token_to_id("Doc")
    ids = policy_tok.encode("Which river flows through the capital? <search>")
    assert reader_tok.encode("Which river flows through the capital? <search>") == [renumbered.get(i, i) for i in ids]
    assert sum(i in renumbered for i in ids) >= 5  # most of them moved
    trajectories, answers, checks = proposals(shared)
    passages = trajectories[0].passages[0]
    (a, _), (b, _) = (t.game.reader_request(checks[0].question, passages) for t in (shared, own))
    assert a.prompt_ids != b.prompt_ids and policy_tok.decode(a.prompt_ids) == reader_tok.decode(b.prompt_ids)
    params = shared.learner.rollout_params(shared.learner.params)
    requests = [t.game.reader_request(c.question, p.passages[0])[0] for t, c, p in
                [(t, c, p) for t in (shared, own) for c, p in zip(checks, trajectories)]]
    read = shared.game.reader.run(shared.reader_params(params), requests[:len(checks)])
    read_own = own.game.reader.run(own.reader_params(params), requests[len(checks):])
    assert [r.response_text for r in read] == [r.response_text for r in read_own]
    assert any(r.response_text.strip() for r in read)  # it wrote something to compare


@pytest.mark.slow
def test_the_judge_is_asked_about_em_misses_only_and_never_lowers_a_pass(trainers, caplog):
    shared, own, _ = trainers
    trajectories, answers, checks = proposals(shared)
    rng = lambda: np.random.default_rng(0)  # noqa: E731 - the same distractors for both checks
    params = shared.learner.rollout_params(shared.learner.params)
    em_pass, em_metrics = shared.game._rag_check(shared.reader_params(params), trajectories, answers, checks, rng())
    judged_pass, metrics = own.game._rag_check(own.reader_params(params), trajectories, answers, checks, rng())
    assert all(j or not e for e, j in zip(em_pass, judged_pass))  # a judge never fails what EM passed
    assert "judge/rag_calls" not in em_metrics
    # The reader reads the same text either way, so the misses the judge was asked about are the
    # policy's non-empty replies that EM rejected.
    requests = [shared.game.reader_request(c.question, t.passages[0])[0] for c, t in zip(checks, trajectories)]
    replies = [reader_answer(r.response_text) for r in shared.game.reader.run(shared.reader_params(params), requests)]
    misses = sum(bool(reply) and not exact_match(reply, a.gold) for reply, a in zip(replies, answers))
    assert misses > 0 and metrics["judge/rag_calls"] == misses
    assert metrics["judge/rag_flips"] + metrics["judge/rag_unparsed"] <= misses
    assert sum(judged_pass) - sum(em_pass) == metrics["judge/rag_flips"]


@pytest.mark.slow
def test_a_training_step_with_a_frozen_reader_and_judge(trainers):
    """One step of the whole loop reports the judge's work for both roles and trains as usual."""
    _, own, _ = trainers
    metrics = own.train_step()
    for role in ("solver", "rag"):
        for what in ("calls", "flips", "unparsed"):
            assert math.isfinite(metrics[f"judge/{role}_{what}"])
    assert metrics["judge/solver_flips"] <= metrics["judge/solver_calls"]
    assert metrics["judge/rag_flips"] <= metrics["judge/rag_calls"] <= metrics["selfplay/rule_valid_rate"] * 4
    assert math.isfinite(metrics["solver/loss"]) and math.isfinite(metrics["proposer/loss"])
