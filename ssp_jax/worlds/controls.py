"""The experiment controls that replace the proposer (SSP.md section 6, `selfplay.proposer_mode`):
"oracle" questions from the micro world's generator, and a "fixed" set of the frozen proposer's
valid questions. They isolate what co-evolution adds; a production run never uses them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flax import nnx

from ssp_jax.data.answers import answers_for_step
from ssp_jax.data.gold import AnswerRecord
from ssp_jax.selfplay.pool import PoolQuestion, QuestionPool
from ssp_jax.selfplay.step import SelfPlayGame
from ssp_jax.worlds.microworld import World

FIXED_SET_ROUNDS = 50  # proposer rounds the fixed-set control may spend collecting its questions
FIXED_SET_SEED = 1 << 30  # rollout seeds of those rounds, apart from every training step's
ORACLE_SEED = 1000  # the oracle control's example questions, apart from the warm start's (seed model.seed)


class OracleQuestions:
    """What a perfect proposer would give: `batch_size` correct generated questions per step, from
    outside dev/test, none repeated until the world's example chains run out."""

    def __init__(self, world: World, batch_size: int, steps: int, seed: int) -> None:
        self.batch_size = batch_size
        self.questions = [PoolQuestion(q.question, q.golden_answers)
                          for q in world.example_questions(batch_size * steps, seed=ORACLE_SEED + seed)]

    def for_step(self, step: int) -> list[PoolQuestion]:
        size, n = self.batch_size, len(self.questions)
        return [self.questions[(step * size + i) % n] for i in range(size)]


def fill_fixed_set(pool: QuestionPool, game: SelfPlayGame, params: nnx.State, answers: Sequence[AnswerRecord], *,
                   size: int, batch_size: int, seed: int, shuffle_seed: int) -> None:
    """Fill `pool` to `size` valid questions proposed (and RAG-checked) with the frozen `params`, a
    batch of answers per round; once, before the first step (the pool is checkpointed, so a resume
    reuses the same set). Raises after `FIXED_SET_ROUNDS` rounds that fall short."""
    rounds = 0
    while len(pool) < size:
        if rounds == FIXED_SET_ROUNDS:
            raise RuntimeError(f"the frozen proposer made only {len(pool)} valid questions in {rounds} "
                               f"rounds; lower selfplay.fixed_set_size={size}")
        batch = answers_for_step(answers, rounds, batch_size, shuffle_seed + 1)
        proposals = game.propose(params, params, batch, np.random.default_rng([seed, rounds, 1]),
                                 seed=FIXED_SET_SEED + rounds)
        pool.add(q for q in proposals.questions if q is not None)
        rounds += 1
