"""An LLM judge for answers that exact match rejects: SSP.md's "EM with a judge fallback".

A frozen judge model (an HF checkpoint, often larger than the policy) reads the question, the gold
answers and the prediction, and replies yes or no. It is asked only where EM failed and there is a
prediction to judge, so the judged accuracy is never below EM and costs one short greedy
generation per miss. A reply that is neither yes nor no counts as "not correct" and is logged, so
a judge with the wrong prompt format shows up instead of silently scoring 0.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Sequence

from flax import nnx

from ssp_jax.agent.rollout import RolloutRequest, RolloutRunner
from ssp_jax.data.gold import Gold
from ssp_jax.engine.sampling import GREEDY
from ssp_jax.selfplay.evaluate import QAResult
from ssp_jax.tokenizer import ChatTemplate, Tokenizer

JUDGE_PROMPT = """\
Question: {question}
Gold answers: {golden_answers}
Predicted answer: {prediction}
Does the predicted answer mean the same as one of the gold answers? Reply with yes or no."""
YES, NO = ("yes", "correct", "true"), ("no", "incorrect", "false")
Case = tuple[str, Gold, str]  # (question, golden_answers, prediction)


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
    """The optional LLM judge: a frozen checkpoint asked a yes/no question when EM fails. An empty
    `path` means no judge; the prompt must name the three fields it fills."""

    path: str = ""  # judge HF checkpoint dir; empty = no judge (EM and F1 only)
    tokenizer_path: str = ""  # tokenizer.json or its dir; empty = the judge checkpoint's
    chat_template: str = ""  # empty = the policy's `chat_template`
    prompt: str = JUDGE_PROMPT  # fields: {question}, {golden_answers}, {prediction}
    max_tokens: int = 8

    def __post_init__(self) -> None:
        missing = [f for f in ("{question}", "{golden_answers}", "{prediction}") if f not in self.prompt]
        if missing:
            raise ValueError(f"judge.prompt must contain {missing}")
        if self.max_tokens < 1:
            raise ValueError(f"judge.max_tokens must be >= 1, got {self.max_tokens}")


def parse_verdict(text: str) -> bool | None:
    """The judge's first word, case and punctuation ignored: True for yes, False for no, else None."""
    words = re.findall(r"[a-z]+", text.lower())
    if words and words[0] in YES:
        return True
    if words and words[0] in NO:
        return False
    return None


def judge_prompt(template: str, question: str, golden_answers: Gold, prediction: str) -> str:
    golds = [golden_answers] if isinstance(golden_answers, str) else list(golden_answers)
    return template.format(question=question, golden_answers="; ".join(golds), prediction=prediction)


class Judge:
    """Greedy yes/no verdicts of a frozen judge model, through a tool-less rollout runner."""

    def __init__(self, runner: RolloutRunner, tokenizer: Tokenizer, chat: ChatTemplate, params: nnx.State,
                 prompt: str = JUDGE_PROMPT) -> None:
        self.runner, self.tokenizer, self.chat, self.params, self.prompt = runner, tokenizer, chat, params, prompt

    def verdicts(self, cases: Sequence[Case]) -> list[bool | None]:
        """One verdict per (question, golden_answers, prediction)."""
        requests = [RolloutRequest(self.chat.render_ids(self.tokenizer, [
            {"role": "user", "content": judge_prompt(self.prompt, *case)}]), sampling=GREEDY) for case in cases]
        return [parse_verdict(t.response_text) for t in self.runner.run(self.params, requests)]

    def __call__(self, results: Sequence[QAResult]) -> list[QAResult]:
        return with_judge(results, self.verdicts)


def with_judge(results: Sequence[QAResult], verdicts: Callable[[list[Case]], list[bool | None]]) -> list[QAResult]:
    """`results` with `judge` set: 1 where EM holds, else the verdict on the prediction (0 when there
    is none, or the reply was neither yes nor no). `verdicts` is asked about the misses only."""
    asked = [i for i, r in enumerate(results) if not r.em and r.prediction]
    replies = verdicts([(results[i].item.question, results[i].item.golden_answers, results[i].prediction or "")
                        for i in asked])
    if len(replies) != len(asked):
        raise ValueError(f"judge gave {len(replies)} verdicts for {len(asked)} answers")
    unparsed = sum(v is None for v in replies)
    if unparsed:
        logging.warning("judge: %d of %d replies were neither yes nor no (scored as not correct)", unparsed, len(asked))
    judged = {i: float(v is True) for i, v in zip(asked, replies, strict=True)}
    return [dataclasses.replace(r, judge=judged.get(i, r.em)) for i, r in enumerate(results)]
