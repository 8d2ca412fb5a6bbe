"""A pool of earlier valid questions that refills the slots of invalid proposals (SSP.md section 3).

Invalid questions are not sent to the solver, but the solver batch keeps a fixed shape: each such
slot takes a question from this pool instead. The pool is cleared every `clear_every` steps so
the refills track the current proposer rather than an old, easier one. When the pool is empty
the slot gets `DUMMY_QUESTION`; the trainer must give that group zero advantage (`is_dummy`),
since its rewards say nothing about the policy's questions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import numpy as np

from ssp_jax.data.gold import Gold, as_answer_list


@dataclasses.dataclass(frozen=True)
class PoolQuestion:
    """A question with its gold answer(s); `gold` is normalised to a tuple of strings."""

    question: str
    gold: tuple[str, ...]
    dummy: bool = False

    def __init__(self, question: str, gold: Gold, dummy: bool = False) -> None:
        object.__setattr__(self, "question", question)
        object.__setattr__(self, "gold", tuple(as_answer_list(gold)))
        object.__setattr__(self, "dummy", dummy)


# A harmless, answerable placeholder that keeps the solver batch full when nothing else is left.
DUMMY_QUESTION = PoolQuestion("This is a placeholder question with no real content: reply with the word none.",
                              "none", dummy=True)


def is_dummy(question: PoolQuestion) -> bool:
    """True for the placeholder, whose group the trainer must give zero advantage."""
    return question.dummy


class QuestionPool:
    """Earlier valid questions, sampled to refill invalid slots and cleared periodically."""

    def __init__(self, clear_every: int = 10, records: Iterable[PoolQuestion] = ()) -> None:
        if clear_every < 1:
            raise ValueError(f"clear_every must be >= 1, got {clear_every}")
        self.clear_every = clear_every
        self._records: list[PoolQuestion] = []
        self.add(records)

    def __len__(self) -> int:
        return len(self._records)

    def add(self, records: Iterable[PoolQuestion]) -> None:
        """Append valid questions; the placeholder is refused, as it was never a real question."""
        records = list(records)
        if any(is_dummy(record) for record in records):
            raise ValueError("the dummy question cannot be added to the pool")
        self._records.extend(records)

    def sample(self, n: int, rng: np.random.Generator, max_repeats: int = 0) -> list[PoolQuestion]:
        """Exactly `n` questions: distinct while `n <= len(self)`; beyond that, every question
        appears before any repeats (whole shuffled passes, then a partial one). With
        `max_repeats > 0` no question appears more than that many times and the remaining slots
        get `DUMMY_QUESTION`, so a small pool cannot fill a whole batch with one question (the
        solver would overfit it). An empty pool yields `n` copies of `DUMMY_QUESTION`."""
        if n < 0 or max_repeats < 0:
            raise ValueError(f"cannot sample {n} questions with max_repeats={max_repeats}")
        size = len(self._records)
        if not size:
            return [DUMMY_QUESTION] * n
        drawn = min(n, max_repeats * size) if max_repeats else n
        passes, rest = divmod(drawn, size)
        order = [int(i) for _ in range(passes) for i in rng.permutation(size)]
        order += [int(i) for i in rng.choice(size, rest, replace=False)]
        return [self._records[i] for i in order] + [DUMMY_QUESTION] * (n - drawn)

    def maybe_clear(self, step: int) -> bool:
        """Empty the pool when `step` is a multiple of `clear_every`; call once at the start of
        each step. Returns whether it cleared."""
        if step % self.clear_every:
            return False
        self._records.clear()
        return True

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state for checkpoints."""
        return {"clear_every": self.clear_every,
                "records": [{"question": r.question, "gold": list(r.gold)} for r in self._records]}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> QuestionPool:
        return cls(state["clear_every"], (PoolQuestion(r["question"], r["gold"]) for r in state["records"]))
