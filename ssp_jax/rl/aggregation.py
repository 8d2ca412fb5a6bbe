"""How a mini-batch's per-token losses become one number, registered by name (`rl.loss_aggregation`).

An aggregation gives each row of a mini-batch a weight from the loss mask alone; the loss is then
sum over rows b and trained tokens t of w_b * x_bt. Weights are computed once per mini-batch on the
host, so a micro-batch's share is exact whatever rows it holds, and the micro-batch gradients sum
to the mini-batch's.

- `token_mean`: every trained token of the mini-batch weighs the same (w_b = 1 / tokens), so long
  trajectories weigh more.
- `seq_mean_token_mean`: the mean over sequences of each sequence's token-mean (w_b = 1 / (rows x
  tokens_b)). This is what the reference (veRL, one sequence per micro-batch per GPU, a token-mean
  in each) optimises in effect, so it is the default.
- `seq_mean_token_sum`: the mean over sequences of each sequence's token-sum (w_b = 1 / rows).

Rows without a trained token (padding) get weight 0 and are not counted among the rows.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ssp_jax.registry import Registry

AGGREGATIONS: Registry[Callable[[np.ndarray], np.ndarray]] = Registry("loss_aggregation")


def _tokens_and_rows(loss_mask: np.ndarray) -> tuple[np.ndarray, float]:
    """Trained tokens per row [rows], and the rows that have any (at least 1, so nothing divides by 0)."""
    tokens = np.asarray(loss_mask, np.float64).sum(axis=1)
    return tokens, max(float((tokens > 0).sum()), 1.0)


@AGGREGATIONS.register("token_mean")
def token_mean(loss_mask: np.ndarray) -> np.ndarray:
    """loss_mask [rows, T] -> row weights [rows]: 1 / the mini-batch's trained tokens."""
    tokens, _ = _tokens_and_rows(loss_mask)
    return np.full(len(tokens), 1.0 / max(tokens.sum(), 1.0), np.float32)


@AGGREGATIONS.register("seq_mean_token_mean")
def seq_mean_token_mean(loss_mask: np.ndarray) -> np.ndarray:
    """1 / (rows with a trained token x the row's trained tokens); 0 for a row without one."""
    tokens, rows = _tokens_and_rows(loss_mask)
    return np.where(tokens > 0, 1.0 / (rows * np.maximum(tokens, 1.0)), 0.0).astype(np.float32)


@AGGREGATIONS.register("seq_mean_token_sum")
def seq_mean_token_sum(loss_mask: np.ndarray) -> np.ndarray:
    """1 / rows with a trained token; 0 for a row without one."""
    tokens, rows = _tokens_and_rows(loss_mask)
    return np.where(tokens > 0, 1.0 / rows, 0.0).astype(np.float32)
