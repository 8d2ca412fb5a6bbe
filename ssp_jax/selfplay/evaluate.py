"""Greedy solver evaluation on a QA set (SSP.md section 6 protocol: greedy, <= 10 turns, top-3).

Used for periodic evaluation during training and, per question, for the micro world's before /
after report; `python -m ssp_jax.eval` builds on it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from ssp_jax.agent import prompts
from ssp_jax.agent.rollout import RolloutRequest, RolloutRunner
from ssp_jax.agent.tags import last_tag
from ssp_jax.data.gold import QAItem
from ssp_jax.engine.sampling import GREEDY
from ssp_jax.selfplay.rewards import exact_match, f1_score, generated_text
from ssp_jax.tokenizer import ChatTemplate, Tokenizer


@dataclasses.dataclass(frozen=True)
class QAResult:
    """One graded answer: the prediction, EM, F1, searches made and finish reason, and the judge's
    verdict when one was asked."""

    item: QAItem
    prediction: str | None
    em: float
    f1: float
    searches: int
    finish_reason: str
    judge: float | None = None  # EM with an LLM-judge fallback (ssp_jax/selfplay/judge.py); None = not judged


def load_qa_jsonl(path: str | Path) -> list[QAItem]:
    """FlashRAG-style jsonl: {"question": str, "golden_answers": [str, ...]} per line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: QA file not found (expected jsonl with question and golden_answers)")
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            items.append(QAItem(str(record["question"]), record["golden_answers"], int(record.get("hops", 0))))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{number}: expected question and golden_answers ({e})") from e
    return items


def subsample(items: Sequence[QAItem], limit: int, seed: int) -> list[QAItem]:
    """At most `limit` items, a fixed-seed sample kept in file order (all of them when fewer), so
    every run and checkpoint is scored on the same questions."""
    if len(items) <= limit:
        return list(items)
    keep = np.random.default_rng(seed).choice(len(items), limit, replace=False)
    return [items[i] for i in sorted(keep)]


def evaluate(runner: RolloutRunner, tokenizer: Tokenizer, chat: ChatTemplate, params: nnx.State,
             items: Sequence[QAItem], templates: prompts.PromptTemplates = prompts.DEFAULT_TEMPLATES,
             *, progress: bool = False) -> list[QAResult]:
    """One greedy solver trajectory per question, scored by EM and F1 of its last `<answer>`."""
    requests = [RolloutRequest(
        chat.render_ids(tokenizer, prompts.solver_messages(item.question, templates)),
        sampling=GREEDY) for item in items]
    results = []
    for item, traj in zip(items, runner.run(params, requests, progress=progress)):
        prediction = last_tag(generated_text(traj.response_text), "answer").content
        results.append(QAResult(item, prediction, float(exact_match(prediction, item.golden_answers)),
                                f1_score(prediction, item.golden_answers), len(traj.queries), traj.finish_reason))
    return results


def result_record(result: QAResult) -> dict[str, Any]:
    """One question's result as a JSON-ready dict (the per-question eval files)."""
    golds = ([result.item.golden_answers] if isinstance(result.item.golden_answers, str)
             else list(result.item.golden_answers))
    return {"question": result.item.question, "golden_answers": golds, "hops": result.item.hops,
            "prediction": result.prediction, "em": result.em, "f1": result.f1, "searches": result.searches,
            "finish_reason": result.finish_reason, "judge": result.judge}


def summarize(results: Sequence[QAResult], prefix: str = "eval") -> dict[str, float]:
    """Mean EM / F1 / searches (and judged accuracy when every result is judged), overall and per
    hop count when known."""
    out = {f"{prefix}/em": float(np.mean([r.em for r in results])),
           f"{prefix}/f1": float(np.mean([r.f1 for r in results])),
           f"{prefix}/searches": float(np.mean([r.searches for r in results]))}
    if results and all(r.judge is not None for r in results):
        out[f"{prefix}/judge"] = float(np.mean([r.judge for r in results]))
    for hops in sorted({r.item.hops for r in results if r.item.hops}):
        out[f"{prefix}/em_{hops}hop"] = float(np.mean([r.em for r in results if r.item.hops == hops]))
    return out
