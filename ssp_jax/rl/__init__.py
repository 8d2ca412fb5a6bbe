"""RL for a decoder policy: batches, advantage estimators, policy losses and the compiled learner.

Knows nothing of retrieval or the SSP game (RLConfig only names each role's estimator and
mini-batch count); `selfplay/` turns trajectories into `RLBatch`es.
"""
