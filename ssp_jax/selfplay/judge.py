"""An LLM judge for answers that exact match rejects: SSP.md's "EM with a judge fallback".

A frozen judge model (an HF checkpoint, often larger than the policy, with its own tokenizer and
chat template) reads the question, the gold answers and the prediction, and replies yes or no. It
is asked only where EM failed and there is a prediction to judge, so a judged score is never below
EM and costs one short greedy generation per miss. Evaluation uses it for the "EM + judge" column;
training, when `config.judge.path` is set, for the solver's reward and the RAG check, as the
reference does. A reply that is neither yes nor no counts as "not correct" and is logged, so
a judge with the wrong prompt format shows up instead of silently scoring 0.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Sequence

from flax import nnx

from ssp_jax.agent.prompts import DEFAULT_TEMPLATES, Conversation, PromptTemplates
from ssp_jax.agent.rollout import RolloutRequest, RolloutRunner
from ssp_jax.data.gold import Gold
from ssp_jax.engine.sampling import GREEDY
from ssp_jax.models.policy import FrozenModelConfig
from ssp_jax.selfplay.evaluate import QAResult
from ssp_jax.tokenizer import ChatTemplate

YES, NO = ("yes", "correct", "true"), ("no", "incorrect", "false", "wrong")
Case = tuple[str, Gold, str]  # (question, golden_answers, prediction)
Verdicts = Callable[[list[Case]], list[bool | None]]  # one per case: yes, no, or neither


@dataclasses.dataclass(frozen=True)
class JudgeConfig(FrozenModelConfig):
    """The optional LLM judge (`config.judge`): a frozen checkpoint asked a yes/no question about an
    answer exact match rejected, in evaluation and, when set, in training (the solver's reward and
    the RAG check). An empty `path` means no judge. Its prompt is `config.prompts.judge`."""

    max_tokens: int = 8

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"judge.max_tokens must be >= 1, got {self.max_tokens}")


@dataclasses.dataclass(frozen=True)
class Judged:
    """EM, then the judge on the misses: which answers are correct, and what the judge did."""

    correct: list[bool]
    calls: int  # misses the judge was asked about (those with a prediction)
    flips: int  # of them, judged correct
    unparsed: int  # replies that were neither yes nor no (scored as not correct)

    def metrics(self, role: str) -> dict[str, float]:
        return {f"judge/{role}_calls": float(self.calls), f"judge/{role}_flips": float(self.flips),
                f"judge/{role}_unparsed": float(self.unparsed)}


def parse_verdict(text: str) -> bool | None:
    """The judge's first word, case and punctuation ignored: True for yes, False for no, else None."""
    words = re.findall(r"[a-z]+", text.lower())
    if words and words[0] in YES:
        return True
    if words and words[0] in NO:
        return False
    return None


def judge_messages(templates: PromptTemplates, question: str, golden_answers: Gold, prediction: str) -> Conversation:
    """The judge's conversation about one answer; the gold answers are listed joined by "; "."""
    golds = [golden_answers] if isinstance(golden_answers, str) else list(golden_answers)
    return templates.messages("judge", question=question, golden_answers="; ".join(golds), prediction=prediction)


def judge_misses(cases: Sequence[tuple[str, Gold, str | None]], em: Sequence[bool],
                 verdicts: Verdicts | None) -> Judged:
    """Correct where EM holds, else where `verdicts` says yes. The judge is asked about the misses
    with a prediction only, in one batch, so it can never lower what EM gave; no `verdicts`: EM."""
    asked = [i for i, (case, hit) in enumerate(zip(cases, em, strict=True)) if not hit and case[2]]
    if verdicts is None or not asked:
        return Judged(list(em), 0, 0, 0)
    replies = verdicts([(cases[i][0], cases[i][1], cases[i][2] or "") for i in asked])
    if len(replies) != len(asked):
        raise ValueError(f"judge gave {len(replies)} verdicts for {len(asked)} answers")
    unparsed = sum(v is None for v in replies)
    if unparsed:
        logging.warning("judge: %d of %d replies were neither yes nor no (scored as not correct)", unparsed, len(asked))
    correct = list(em)
    for i, verdict in zip(asked, replies):
        correct[i] = verdict is True
    return Judged(correct, len(asked), sum(v is True for v in replies), unparsed)


class Judge:
    """Greedy yes/no verdicts of a frozen judge model, through a tool-less rollout runner with the
    judge's own tokenizer (the runner's) and chat template: only text crosses the role boundary."""

    def __init__(self, runner: RolloutRunner, chat: ChatTemplate, params: nnx.State,
                 templates: PromptTemplates = DEFAULT_TEMPLATES) -> None:
        self.runner, self.chat, self.params, self.templates = runner, chat, params, templates

    def verdicts(self, cases: Sequence[Case]) -> list[bool | None]:
        """One verdict per (question, golden_answers, prediction)."""
        requests = [RolloutRequest(self.chat.render_ids(self.runner.tokenizer, judge_messages(self.templates, *case)),
                                   sampling=GREEDY) for case in cases]
        return [parse_verdict(t.response_text) for t in self.runner.run(self.params, requests)]

    def __call__(self, results: Sequence[QAResult]) -> list[QAResult]:
        return with_judge(results, self.verdicts)


def with_judge(results: Sequence[QAResult], verdicts: Verdicts) -> list[QAResult]:
    """`results` with `judge` set: 1 where EM holds, else the verdict on the prediction (0 when there
    is none, or the reply was neither yes nor no). `verdicts` is asked about the misses only."""
    judged = judge_misses([(r.item.question, r.item.golden_answers, r.prediction) for r in results],
                          [bool(r.em) for r in results], verdicts)
    return [dataclasses.replace(r, judge=float(c)) for r, c in zip(results, judged.correct)]
