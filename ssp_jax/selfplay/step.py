"""One round of the Search Self-Play game (SSP.md sections 1-3), without the RL update.

answers -> proposer rollouts -> rule filters -> RAG check -> solver questions (invalid slots
refilled from the pool, else a dummy) -> solver rollouts -> rewards. The result carries every
trajectory with its reward and a `trainable` flag, which the trainer turns into RL batches.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
from flax import nnx

from ssp_jax.agent import prompts
from ssp_jax.agent.rollout import RolloutRequest, RolloutRunner
from ssp_jax.agent.tags import last_tag
from ssp_jax.agent.trajectory import Trajectory
from ssp_jax.data.gold import AnswerRecord
from ssp_jax.engine.sampling import GREEDY, SamplingParams
from ssp_jax.retrieval.base import Passage
from ssp_jax.retrieval.document_set import DocumentSet
from ssp_jax.selfplay.documents import Fitted, fit_passages, passages_text, proposer_blocks, rag_passages
from ssp_jax.selfplay.filters import FAILURES, check_proposal
from ssp_jax.selfplay.finish import finish_shares, finish_warnings
from ssp_jax.selfplay.judge import Verdicts, judge_misses
from ssp_jax.selfplay.pool import PoolQuestion, QuestionPool, is_dummy
from ssp_jax.selfplay.rewards import (
    PROPOSER_REWARD_SHAPES,
    SOLVE_RATES,
    exact_match,
    final_answer,
    proposer_reward,
    solver_reward,
)
from ssp_jax.tokenizer import ChatTemplate, Tokenizer

PROPOSER_MODES = ("selfplay", "frozen", "fixed", "oracle")
RAG_READERS = ("read", "search")


@dataclasses.dataclass(frozen=True)
class SelfPlayConfig:
    """The game's knobs; defaults are SSP.md's."""

    batch_size: int = 256  # answers, hence proposer trajectories, per step
    solver_samples: int = 5  # solver rollouts per question (the GRPO group)
    # Rollout sampling of both roles (SSP.md: temperature 1, no top-k / top-p filter). Whatever they
    # are, the engine reports log-probs under the untempered, unfiltered policy.
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    # The proposer's own temperature, when set. A weak proposer copies names more reliably closer to
    # greedy, so more of its questions are valid; the solver keeps `temperature` for exploration.
    proposer_temperature: float | None = None
    # Sampling that is not the policy's own distribution (a temperature other than 1, top-k, top-p)
    # makes the rollouts off-policy for the PPO ratio and the KL, which use the untempered,
    # unfiltered log-probs, and nothing corrects for it. Refused unless this says it is meant.
    off_policy_sampling: bool = False
    rag_check: bool = True
    # "read": SSP.md's tool-less reader answers from the documents in its prompt. "search": the
    # reader plays the solver, but its searches see only those documents (a `DocumentSet`), so a
    # policy too small to compose hops in one forward pass can still follow a chain hop by hop.
    rag_reader: str = "read"
    num_distractor_blocks: int = 4
    reader_max_tokens: int = 70
    # The reading reader's prompt budget: five blocks of 2-4 searches x top-3 ~100-word passages
    # (~430 Qwen tokens per search) come to ~9k tokens, over the rollout's 4,096. Documents beyond
    # it are shortened evenly (`fit_passages`) and counted (reader/cut_*).
    reader_max_prompt_tokens: int = 12288
    # A role's share of trajectories ending on a limit (not a stop string or EOS) above which a
    # warning names the budget to raise (selfplay/finish.py).
    finish_warning_share: float = 0.05
    min_question_words: int = 10
    max_question_chars: int = 1000  # the reference's cap on a question's length
    min_searches: int = 2
    pool_clear_every: int = 10
    pool_max_repeats: int = 0  # slots one pool question may refill per step; 0 = no limit (SSP.md)
    proposer_reward: str = "one_minus_s"  # or "four_s_one_minus_s"
    # The proposer's s: "solved", the share of solver rollouts rewarded above 0 (the reference's
    # count), or "mean_reward" (a spammed correct answer counts spam_reward, not 1).
    solve_rate: str = "solved"
    max_answer_tags: int = 10
    spam_reward: float = 0.25
    num_examples: int = 3  # example questions shown to the proposer
    # Controls for the co-evolution claim (SSP.md section 6): "selfplay" is SSP; "frozen" proposes
    # (and RAG-checks) with the initial weights and updates the solver only; "fixed" draws the
    # solver's questions from one set of `fixed_set_size` valid questions made by the frozen
    # proposer before training; "oracle" (micro world only) gives the solver `batch_size` fresh,
    # correct questions from the world generator every step: what a perfect proposer would give,
    # so it bounds what SSP can teach the solver.
    proposer_mode: str = "selfplay"
    fixed_set_size: int = 64

    def __post_init__(self) -> None:
        for name in ("batch_size", "solver_samples", "reader_max_tokens", "reader_max_prompt_tokens",
                     "pool_clear_every", "max_question_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"selfplay.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_distractor_blocks < 0 or self.num_examples < 0 or self.pool_max_repeats < 0:
            raise ValueError("selfplay.num_distractor_blocks, num_examples and pool_max_repeats must be >= 0")
        if self.proposer_mode not in PROPOSER_MODES:
            raise ValueError(f"selfplay.proposer_mode={self.proposer_mode!r}; expected one of {PROPOSER_MODES}")
        if self.rag_reader not in RAG_READERS:
            raise ValueError(f"selfplay.rag_reader={self.rag_reader!r}; expected one of {RAG_READERS}")
        for name in ("temperature", "proposer_temperature"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"selfplay.{name} must be >= 0, got {getattr(self, name)}")
        if self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"selfplay.top_k={self.top_k} must be >= 0 and top_p={self.top_p} in (0, 1]")
        off_policy = [f"{name}={value}" for name, value, own in (
            ("temperature", self.temperature, 1.0), ("proposer_temperature", self.proposer_temperature, 1.0),
            ("top_k", self.top_k, 0), ("top_p", self.top_p, 1.0)) if value is not None and value != own]
        if off_policy and not self.off_policy_sampling:
            raise ValueError(f"selfplay.{', '.join(off_policy)}: rollouts would be sampled from a tempered or "
                             "filtered distribution while the PPO ratio and the KL use the policy's own log-probs, "
                             "with nothing to correct for it; set selfplay.off_policy_sampling=True to train on "
                             "them knowingly")
        if not 0.0 <= self.finish_warning_share <= 1.0:
            raise ValueError(f"selfplay.finish_warning_share must be in [0, 1], got {self.finish_warning_share}")
        if self.fixed_set_size < 1:
            raise ValueError(f"selfplay.fixed_set_size must be >= 1, got {self.fixed_set_size}")
        if self.solve_rate not in SOLVE_RATES:
            raise ValueError(f"selfplay.solve_rate={self.solve_rate!r}; known: {SOLVE_RATES.names()}")
        if self.proposer_reward not in PROPOSER_REWARD_SHAPES:
            raise ValueError(f"selfplay.proposer_reward={self.proposer_reward!r}; "
                             f"known: {PROPOSER_REWARD_SHAPES.names()}")

    def sampling(self, role: str) -> SamplingParams:
        """The rollout sampling of `role` ("proposer" or "solver")."""
        own = self.proposer_temperature if role == "proposer" else None
        return SamplingParams(temperature=self.temperature if own is None else own, top_k=self.top_k, top_p=self.top_p)


@dataclasses.dataclass
class Proposals:
    """The proposer's half of a round: its trajectories, and per answer the valid question or None."""

    trajectories: list[Trajectory]  # one per answer
    questions: list[PoolQuestion | None]  # per answer: its question if valid, else None
    metrics: dict[str, float]


@dataclasses.dataclass
class GameResult:
    """One full round, ready for RL: both roles' trajectories and rewards, which solver groups may be
    trained (dummy questions may not), and the round's metrics."""

    proposer: list[Trajectory]  # one per answer (none in the fixed-set control)
    proposer_rewards: np.ndarray  # [batch]
    solver: list[Trajectory]  # batch * solver_samples, grouped by question
    solver_rewards: np.ndarray  # [batch, solver_samples]
    solver_trainable: np.ndarray  # [batch] bool: False for dummy-question groups (zero advantage)
    metrics: dict[str, float]


class SelfPlayGame:
    """One round of SSP (SSP.md section 3): the proposer writes questions for its answers, rule filters
    and the RAG check keep the honest ones, the solver answers each several times, and both roles are
    rewarded against each other. It plays; the learner in `rl/` trains."""

    def __init__(self, config: SelfPlayConfig, tokenizer: Tokenizer, chat: ChatTemplate, runner: RolloutRunner,
                 reader: RolloutRunner, templates: prompts.PromptTemplates = prompts.DEFAULT_TEMPLATES, *,
                 reader_chat: ChatTemplate | None = None, judge: Verdicts | None = None):
        """`runner` rolls out both roles with search; `reader` runs the RAG check, with its own
        tokenizer (the runner's) and `reader_chat` (default: the policy's `chat`). `judge`: verdicts on
        the answers exact match rejects, for the solver's reward and the RAG check (None: EM only)."""
        self.config, self.tokenizer, self.chat = config, tokenizer, chat
        self.runner, self.reader, self.templates = runner, reader, templates
        self.reader_chat, self.judge = reader_chat or chat, judge

    def _reader_prompt_ids(self, messages: prompts.Conversation) -> list[int]:
        """The reader's prompt in its own tokenizer and template: only text crosses the role boundary."""
        return self.reader_chat.render_ids(self.reader.tokenizer, messages)

    def propose(self, params: nnx.State, reader_params: nnx.State, answers: Sequence[AnswerRecord],
                rng: np.random.Generator, seed: int) -> Proposals:
        """Proposer rollouts, rule filters and (if enabled) the RAG check: which questions are valid."""
        cfg = self.config
        sampling = cfg.sampling("proposer")
        start = time.perf_counter()
        trajectories = self.runner.run(params, [
            RolloutRequest(self.chat.render_ids(self.tokenizer, prompts.proposer_messages(
                a.gold, a.search_turns, a.examples[:cfg.num_examples], self.templates)),
                           seed=seed * 1_000_003 + i, sampling=sampling, meta=a)
            for i, a in enumerate(answers)])
        rollout_s = time.perf_counter() - start
        start = time.perf_counter()
        checks = [check_proposal(t.response_text, t.queries, a.gold, min_words=cfg.min_question_words,
                                 min_searches=cfg.min_searches, max_chars=cfg.max_question_chars)
                  for t, a in zip(trajectories, answers)]
        rule_valid = [c.valid for c in checks]
        rag_pass, reader_metrics = (self._rag_check(reader_params, trajectories, answers, checks, rng)
                                    if cfg.rag_check else (rule_valid, {}))
        valid = [r and p for r, p in zip(rule_valid, rag_pass)]
        questions = [PoolQuestion(cast(str, c.question), a.gold) if v else None  # valid: it has a question
                     for c, a, v in zip(checks, answers, valid)]
        metrics = {
            "time/proposer_rollout": rollout_s,
            "time/rag_check": time.perf_counter() - start,
            "selfplay/valid_rate": float(np.mean(valid)),
            "selfplay/valid_questions": float(sum(valid)),
            "selfplay/rule_valid_rate": float(np.mean(rule_valid)),
            "selfplay/rag_pass_rate": float(np.mean([p for p, r in zip(rag_pass, rule_valid) if r]
                                                    or [0.0])),  # type: ignore[list-item]  # bools, or 0.0
            **{f"selfplay/valid_rate_{turns}turns": float(np.mean([v for v, a in zip(valid, answers)
                                                                  if a.search_turns == turns]))
               for turns in sorted({a.search_turns for a in answers})},
            **_filter_breakdown(checks),
            **_trajectory_stats("proposer", trajectories, self.tokenizer),
            **reader_metrics,
        }
        return Proposals(trajectories, questions, metrics)

    def play(self, params: nnx.State, reader_params: nnx.State, answers: Sequence[AnswerRecord],
             pool: QuestionPool, rng: np.random.Generator, seed: int, *, proposer_params: nnx.State | None = None,
             fixed: bool = False) -> GameResult:
        """One round. `proposer_params` (default `params`) play the proposer; `fixed=True` skips
        proposing and draws every solver question from `pool` (the fixed-question-set control)."""
        cfg = self.config
        if fixed:
            proposals = Proposals([], [None] * len(answers), {})
        else:
            proposals = self.propose(params if proposer_params is None else proposer_params, reader_params, answers,
                                     rng, seed)
        fresh = [q for q in proposals.questions if q is not None]
        refills = iter(pool.sample(len(answers) - len(fresh), rng, max_repeats=cfg.pool_max_repeats))
        questions = [q if q is not None else next(refills) for q in proposals.questions]
        if not fixed:
            pool.add(fresh)

        start = time.perf_counter()
        solver = self.runner.run(params, [
            RolloutRequest(self.chat.render_ids(self.tokenizer, prompts.solver_messages(q.question, self.templates)),
                           num_samples=cfg.solver_samples, seed=seed * 1_000_003 + len(answers) + i,
                           sampling=cfg.sampling("solver"), meta=q)
            for i, q in enumerate(questions)])
        solver_s = time.perf_counter() - start

        finals = [final_answer(t.response_text) for t in solver]
        judged = judge_misses(  # a dummy group is never trained: its answers go unjudged
            [(t.meta.question, t.meta.gold, None if is_dummy(t.meta) else f) for t, f in zip(solver, finals)],
            [exact_match(f, t.meta.gold) for t, f in zip(solver, finals)], self.judge)
        solver_rewards = np.array([solver_reward(t.response_text, t.meta.gold, max_answer_tags=cfg.max_answer_tags,
                                                 spam_reward=cfg.spam_reward, judged=correct)
                                   for t, correct in zip(solver, judged.correct)],
                                  np.float32).reshape(len(questions), cfg.solver_samples)
        solve_rate = SOLVE_RATES.get(cfg.solve_rate)(solver_rewards)  # [batch]
        proposer_rewards = np.array([proposer_reward(q is not None, float(s), cfg.proposer_reward)
                                     for q, s in zip(proposals.questions, solve_rate)] if proposals.trajectories
                                    else [], np.float32)
        trainable = np.array([not is_dummy(q) for q in questions])
        metrics = {
            **proposals.metrics,
            "time/solver_rollout": solver_s,
            "selfplay/pool_size": float(len(pool)),
            "selfplay/dummy_groups": float((~trainable).sum()),
            "solver/reward": float(solver_rewards.mean()),
            **({"proposer/reward": float(proposer_rewards.mean())} if len(proposer_rewards) else {}),
            **_trajectory_stats("solver", solver, self.tokenizer),
            **(judged.metrics("solver") if self.judge else {}),
        }
        for message in finish_warnings(metrics, cfg.finish_warning_share, reader_reads=cfg.rag_reader == "read"):
            logging.warning("%s", message)
        return GameResult(proposals.trajectories, proposer_rewards, solver, solver_rewards, trainable, metrics)

    def reader_request(self, question: str, passages: Sequence[Passage]) -> tuple[RolloutRequest, Fitted]:
        """The RAG check's greedy request for `question` over `passages`, as `rag_reader` says: the
        reader prompt showing them (shortened to the reader's prompt budget), or the solver prompt
        searching only them; with what was cut to fit."""
        if self.config.rag_reader == "search":
            return (RolloutRequest(self._reader_prompt_ids(prompts.solver_messages(question, self.templates)),
                                   sampling=GREEDY, retriever=DocumentSet(passages)), Fitted(list(passages), 0, 0))

        def prompt_ids(shown: Sequence[Passage]) -> list[int]:
            return self._reader_prompt_ids(prompts.reader_messages(passages_text(shown), question, self.templates))

        fitted = fit_passages(passages, prompt_ids, self.reader.config.max_prompt_tokens, self.reader.tokenizer)
        return RolloutRequest(prompt_ids(fitted.passages), sampling=GREEDY), fitted

    def _rag_check(self, reader_params: nnx.State, proposer: list[Trajectory], answers: Sequence[AnswerRecord],
                   checks: list[Any], rng: np.random.Generator) -> tuple[list[bool], dict[str, float]]:
        """Can the reader answer each rule-valid question from the retrieved documents alone? With
        the reader's metrics: finish reasons, prompt lengths and what was cut to fit its budget."""
        blocks = [proposer_blocks(t) for t in proposer]
        todo = [i for i, c in enumerate(checks) if c.valid]
        built = [self.reader_request(checks[i].question, rag_passages(
            blocks[i], blocks[:i] + blocks[i + 1:], self.config.num_distractor_blocks, rng)) for i in todo]
        passed = [False] * len(proposer)
        readers = self.reader.run(reader_params, [request for request, _ in built])
        replies = [reader_answer(traj.response_text) for traj in readers]
        judged = judge_misses([(checks[i].question, answers[i].gold, reply) for i, reply in zip(todo, replies)],
                              [exact_match(reply, answers[i].gold) for i, reply in zip(todo, replies)], self.judge)
        for i, ok in zip(todo, judged.correct):
            passed[i] = ok
        lengths = [len(request.prompt_ids) for request, _ in built]
        metrics = {
            **finish_shares("reader", readers),
            "reader/prompts": float(len(built)),
            "reader/prompt_tokens_median": float(np.median(lengths)) if lengths else 0.0,
            "reader/prompt_tokens_max": float(max(lengths, default=0)),
            "reader/cut_prompts": float(sum(f.cut_passages > 0 for _, f in built)),
            "reader/cut_passages": float(sum(f.cut_passages for _, f in built)),
            "reader/cut_tokens": float(sum(f.cut_tokens for _, f in built)),
            **(judged.metrics("rag") if self.judge else {}),
        }
        return passed, metrics


_ANSWER_LABEL = re.compile(r"Answer[:：]\s*(.*)")


def reader_answer(response_text: str) -> str:
    """The reader's short answer: the last `<answer>` span if it wrote one; else what follows the
    last `Answer:` label (the reference's reader reasons first, then labels its answer); else its
    first non-empty line."""
    tagged = last_tag(response_text, "answer")
    if tagged.ok:
        assert tagged.content is not None  # `ok` means it has content
        return tagged.content
    labelled = [answer for m in _ANSWER_LABEL.finditer(response_text) if (answer := m.group(1).strip())]
    if labelled:
        return labelled[-1]
    for line in response_text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def _filter_breakdown(checks: Sequence[Any]) -> dict[str, float]:
    counts = Counter(f for c in checks for f in c.failures)
    return {f"selfplay/fail_{name}": counts[name] / max(len(checks), 1) for name in FAILURES}


def _trajectory_stats(role: str, trajs: Sequence[Trajectory], tokenizer: Tokenizer) -> dict[str, float]:
    """Per-role means, finish-reason shares, and the share of trajectories that wrote an
    `<information>` tag themselves: a stop string that failed to fire lets the policy invent its
    own search results (it should be 0)."""
    wrote = [any("<information>" in tokenizer.decode(span) for span in t.generated_spans()) for t in trajs]
    return {
        f"{role}/searches": float(np.mean([len(t.queries) for t in trajs])),
        f"{role}/response_tokens": float(np.mean([len(t.response_ids) for t in trajs])),
        f"{role}/generated_tokens": float(np.mean([sum(t.loss_mask) for t in trajs])),
        f"{role}/generated_information": float(np.mean(wrote)),
        **finish_shares(role, trajs),
    }
