"""RL batches from one round of the game: each role's advantages, its padded batch, and both roles'
behaviour and reference log-probs, all computed under the same weights before either update
(SSP.md section 4: the proposer is updated first, so the solver's old log-probs must not see it)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ssp_jax.models.shapes import batch_shards
from ssp_jax.rl.advantages import get_advantage
from ssp_jax.rl.batch import RLBatch, pack_batch
from ssp_jax.rl.update import Learner
from ssp_jax.selfplay.step import GameResult


def game_batches(game: GameResult, learner: Learner, *, train_proposer: bool) -> tuple[RLBatch | None,
                                                                                        RLBatch | None]:
    """(proposer batch, solver batch) with advantages and old/reference log-probs; a role with no
    trajectories, or the proposer when `train_proposer` is False (the controls), gets None.

    Rows are padded to a multiple of mini-batches x lcm(micro-batch, batch shards) and lengths to
    `rl.length_buckets`. With `rl.behaviour_logprobs="engine"` the old log-probs are the engine's."""
    rl = learner.cfg
    proposer_adv = (np.asarray(get_advantage(rl.proposer_advantage)(game.proposer_rewards[:, None]))[:, 0]
                    if len(game.proposer_rewards) else game.proposer_rewards)  # [batch]
    solver_adv = np.asarray(get_advantage(rl.solver_advantage)(game.solver_rewards))  # [batch, samples]
    solver_adv = np.where(game.solver_trainable[:, None], solver_adv, 0.0).reshape(-1)
    from_engine = rl.behaviour_logprobs == "engine"
    shards = batch_shards(learner.mesh, learner.rules)
    batches: list[RLBatch | None] = []
    for trajs, advantages, mini, trained in ((game.proposer, proposer_adv, rl.proposer_mini_batches, train_proposer),
                                             (game.solver, solver_adv, rl.solver_mini_batches, True)):
        if not trajs or not trained:
            batches.append(None)
            continue
        engine = [[0.0] * len(t.prompt_ids) + t.logprobs for t in trajs] if from_engine else None
        batches.append(pack_batch([t.tokens for t in trajs], [[0] * len(t.prompt_ids) + t.loss_mask for t in trajs],
                                  engine, advantages, rl.length_buckets,
                                  batch_multiple=mini * math.lcm(rl.micro_batch_size or 1, shards)))
    with_logprobs = [None if batch is None else dataclasses.replace(
        batch, old_logprobs=batch.old_logprobs if from_engine else learner.logprobs(learner.params, batch),
        ref_logprobs=learner.logprobs(learner.reference_params, batch)) for batch in batches]
    return with_logprobs[0], with_logprobs[1]
