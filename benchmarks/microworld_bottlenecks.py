"""Where the micro-world game loses its signal: the three skills SSP needs, measured on a policy.

Why: SSP can only teach the solver from questions that pass the RAG check, so when held-out EM does
not move, the question is which skill is missing. On the dev split (the tuning split) this
measures, for the policy a workdir starts from (its warm start; the reader is `reader.path`
when that is set):
1. Solver: greedy EM with the real retriever, and with one that returns an unrelated passage for
   every query. The gap is how much the solver's answers depend on what it reads.
2. Reader (the RAG check's; `selfplay.rag_reader` says whether it reads the documents in its prompt
   or searches only them): EM on the gold dev questions, given the documents a
   correct proposer retrieves (the answer's passage and every searched hop's, as in the warm
   start's reader demos) plus the configured distractor blocks. Both phrasings: the held-out
   templates and the proposer's `goal_question`. This is the pass rate of a perfect proposer.
3. Proposer: rule-valid and RAG-pass rates of one batch of proposals (`--answers` answers).
4. Solver failure modes: each greedy dev trajectory's searches against the gold chain (`classify`).

Usage (from the repo root; a first use of a workdir builds its world and warm start):
    python -m benchmarks.microworld_bottlenecks --workdir DIR [--config configs/microworld.py]
        [--set model.sft.steps=1600 ...] [--answers 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ssp_jax.agent import prompts
from ssp_jax.agent.rollout import RolloutRequest, RolloutRunner
from ssp_jax.agent.tags import last_tag
from ssp_jax.config import Config, load_config
from ssp_jax.data.answers import answers_for_step
from ssp_jax.data.gold import QAItem
from ssp_jax.engine.sampling import GREEDY
from ssp_jax.retrieval.base import Passage
from ssp_jax.selfplay.documents import rag_passages
from ssp_jax.selfplay.evaluate import evaluate, summarize
from ssp_jax.selfplay.rewards import exact_match, generated_text
from ssp_jax.selfplay.step import reader_answer
from ssp_jax.train import Trainer
from ssp_jax.worlds.microworld import Question, World
from ssp_jax.worlds.warmstart.demos import goal_question


class UnrelatedRetriever:
    """Top-k passages drawn at random (fixed seed), whatever the query."""

    def __init__(self, passages: Sequence[Passage], seed: int = 0) -> None:
        self.passages, self.rng = list(passages), random.Random(seed)

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        return [[self.rng.choice(self.passages) for _ in range(k)] for _ in queries]


def classify(gold_ids: Sequence[str], got_ids: Sequence[str | None], correct: bool) -> str:
    """Where a solver trajectory left its question's gold chain, from the top passage of each search:
    "correct"; "read_wrong" (every gold passage retrieved in order, wrong answer); "stopped_early"
    (on the chain, too few searches); else "off_chain_at_hop<k>" (search k retrieved the wrong passage)."""
    if correct:
        return "correct"
    if list(got_ids[:len(gold_ids)]) == list(gold_ids):
        return "read_wrong"
    if len(got_ids) < len(gold_ids) and list(got_ids) == list(gold_ids[:len(got_ids)]):
        return "stopped_early"
    hop = next(i for i, (got, gold) in enumerate(zip(got_ids, gold_ids)) if got != gold)
    return f"off_chain_at_hop{hop + 1}"


def failure_modes(trainer: Trainer, questions: Sequence[Question]) -> dict[str, dict[str, int]]:
    """Counts of `classify` per hop count, over greedy solver trajectories with the real retriever."""
    game = trainer.game
    conversations = [prompts.solver_messages(q.question, game.templates) for q in questions]
    requests = [RolloutRequest(game.chat.render_ids(game.tokenizer, c), sampling=GREEDY) for c in conversations]
    counts: dict[str, dict[str, int]] = {}
    for question, traj in zip(questions, game.runner.run(trainer.learner.params, requests)):
        answer = last_tag(generated_text(traj.response_text), "answer").content
        got = [passages[0].id if passages else None for passages in traj.passages]
        mode = classify([hop.passage_id for hop in question.chain], got, exact_match(answer, question.golden_answers))
        by_mode = counts.setdefault(f"{question.hops}hop", {})
        by_mode[mode] = by_mode.get(mode, 0) + 1
    return counts


def config_file(path: str, overrides: Sequence[str]) -> Config:
    """The typed config of a configs/*.py file with `key=json_value` overrides."""
    spec = importlib.util.spec_from_file_location("ssp_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for item in overrides:
        key, value = item.split("=", 1)
        *parents, last = key.split(".")
        node = config
        for name in parents:
            node = node[name]
        node[last] = json.loads(value)
    return load_config(config)


def correct_proposer_documents(world: World, question: Question, passages: dict[str, Passage]) -> list[Passage]:
    """What a backwards-searching proposer retrieves for `question`: the answer's passage, then each
    hop's passage from the end (the start entity is read from the second hop's back-reference)."""
    hops = question.chain[1:] if len(question.chain) > 1 else question.chain
    return [passages[question.answer_id]] + [passages[hop.passage_id] for hop in reversed(hops)]


def reader_em(trainer: Trainer, world: World, questions: Sequence[Question], phrasing: str,
              num_distractor_blocks: int, seed: int) -> dict[str, float]:
    passages = {p["id"]: Passage(p["id"], p["contents"]) for p in world.passages()}
    blocks = [correct_proposer_documents(world, q, passages) for q in questions]
    rng = np.random.default_rng(seed)
    requests = []
    for i, question in enumerate(questions):
        text = question.question if phrasing == "heldout" else goal_question(world, question.chain)
        requests.append(trainer.game.reader_request(text, rag_passages(
            blocks[i], blocks[:i] + blocks[i + 1:], num_distractor_blocks, rng))[0])
    outputs = trainer.game.reader.run(trainer.reader_params(trainer.learner.params), requests)
    hits = [float(exact_match(reader_answer(o.response_text), q.golden_answers)) for o, q in zip(outputs, questions)]
    result = {"em": float(np.mean(hits))}
    for hops in sorted({q.hops for q in questions}):
        result[f"em_{hops}hop"] = float(np.mean([h for h, q in zip(hits, questions) if q.hops == hops]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--config", default="configs/microworld.py")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides key=json_value")
    parser.add_argument("--answers", type=int, default=64, help="proposals in the proposer measurement")
    parser.add_argument("--json", default="")
    args = parser.parse_args()

    config = config_file(args.config, args.set)
    trainer = Trainer(config, Path(args.workdir))
    world = World(config.data.microworld)
    dev = world.heldout_questions("dev")
    items = [QAItem(q.question, q.golden_answers, q.hops) for q in dev]
    params, runner = trainer.learner.params, trainer.game.runner
    unrelated = RolloutRunner(trainer.engine, runner.tokenizer,
                              UnrelatedRetriever([Passage(p["id"], p["contents"]) for p in world.passages()]),
                              runner.config)
    chat, templates = trainer.game.chat, trainer.game.templates
    report: dict[str, Any] = {"questions": len(dev)}
    for name, solver in (("solver_real_retrieval", runner), ("solver_unrelated_retrieval", unrelated)):
        results = evaluate(solver, runner.tokenizer, chat, params, items, templates)
        report[name] = {k.split("/", 1)[1]: v for k, v in summarize(results).items()}
    for phrasing in ("heldout", "goal"):
        report[f"reader_gold_{phrasing}"] = reader_em(trainer, world, dev, phrasing,
                                                      config.selfplay.num_distractor_blocks, config.seed)
    answers = answers_for_step(trainer.answers, 0, args.answers, config.data.shuffle_seed)
    proposals = trainer.game.propose(params, trainer.reader_params(params), answers,
                                     np.random.default_rng(config.seed), seed=1)
    report["proposer"] = {k.split("/", 1)[1]: v for k, v in proposals.metrics.items()
                          if k in ("selfplay/rule_valid_rate", "selfplay/rag_pass_rate", "selfplay/valid_rate")}
    report["solver_failure_modes"] = failure_modes(trainer, dev)
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
