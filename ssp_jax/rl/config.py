"""RL hyper-parameters: every default of SSP.md §4, validated once at start-up.

A bad value fails here, naming the field, rather than as a NaN or a shape error inside jit.
"""

from __future__ import annotations

import dataclasses
import typing

from ssp_jax.rl.advantages import ADVANTAGES
from ssp_jax.rl.aggregation import AGGREGATIONS
from ssp_jax.rl.losses import LOSSES

BEHAVIOUR_LOGPROBS = ("recompute", "engine")


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """Every RL hyper-parameter with SSP.md's default: the optimizer, the PPO-clip loss terms (the loss
    reads them through `LossParams`), the advantage estimators by registered name, and the schedule."""

    # AdamW: lr reached linearly over `warmup_steps` updates, then constant.
    lr: float = 1e-6
    warmup_steps: int = 5
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0  # global-norm clip
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    # PPO-clip (asymmetric), dual clip for negative advantages, log-ratio clamp.
    eps_low: float = 0.2
    eps_high: float = 0.285
    dual_clip: float = 3.0
    log_ratio_clamp: float = 20.0
    # k3 KL to the frozen reference, added to the loss.
    kl_coef: float = 0.01
    kl_clamp: float = 10.0
    # Registered names (see `LOSSES`, `ADVANTAGES`, `AGGREGATIONS`).
    loss: str = "ppo_clip"
    # How a mini-batch's token losses combine (rl/aggregation.py): "seq_mean_token_mean" is what the
    # reference optimises in effect (a token-mean per sequence, averaged over sequences);
    # "token_mean" weighs every trained token alike; "seq_mean_token_sum".
    loss_aggregation: str = "seq_mean_token_mean"
    # Per-role multipliers of the loss. The reference's proposer loss is scaled by 256 / 640 = 0.4,
    # from its mini-batch arithmetic (256 proposer rows counted against 640 per update).
    proposer_loss_scale: float = 0.4
    solver_loss_scale: float = 1.0
    solver_advantage: str = "grpo"
    proposer_advantage: str = "reinforce"
    # Optimisation schedule: optimizer steps per update = ppo_epochs * mini_batches.
    ppo_epochs: int = 1
    solver_mini_batches: int = 2
    proposer_mini_batches: int = 1
    micro_batch_size: int = 0  # rows per gradient-accumulation step; 0 = the whole mini-batch
    logprob_chunk: int = 0  # positions per vocabulary-projection chunk; 0 = unchunked
    # Behaviour log-probs for the PPO ratio: "recompute" them with the training forward, or take the
    # "engine"'s (the same untempered policy log-probs, from the KV-cached decode: one forward fewer).
    behaviour_logprobs: str = "recompute"
    # Padded sequence lengths of the log-prob and update passes; a batch pads to the smallest that
    # holds its longest trajectory, so the largest must reach engine.max_cache_len.
    length_buckets: tuple[int, ...] = (1024, 2048, 4096, 8192, 12288)
    # XLA compiler options of the learner's programs (log-probs, micro-batch, optimizer step), as
    # (name, value) pairs. On TPU, ("xla_tpu_enable_latency_hiding_scheduler", "false") stops the
    # scheduler from running every layer's rematerialised forward early, which kept all layers'
    # activations alive (docs/training-at-scale.md, "Will it fit?"). () = XLA's defaults.
    xla_options: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value, kind = getattr(self, field.name), hints[field.name]
            if kind not in (int, float, str, bool):
                continue
            ok = isinstance(value, (int, float) if kind is float else kind) and not isinstance(value, bool)
            if not ok:
                raise TypeError(f"RLConfig.{field.name} must be {kind.__name__}, got {value!r}")
        positive = ("lr", "max_grad_norm", "adam_eps", "log_ratio_clamp", "kl_clamp", "ppo_epochs",
                    "solver_mini_batches", "proposer_mini_batches", "proposer_loss_scale", "solver_loss_scale")
        non_negative = ("warmup_steps", "weight_decay", "eps_low", "eps_high", "kl_coef", "micro_batch_size",
                        "logprob_chunk")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"RLConfig.{name} must be > 0, got {getattr(self, name)!r}")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"RLConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("adam_b1", "adam_b2", "eps_low"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"RLConfig.{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.dual_clip <= 1 + self.eps_high:
            raise ValueError(f"RLConfig.dual_clip={self.dual_clip} must exceed 1 + eps_high = {1 + self.eps_high} "
                             "(it bounds ratios the ordinary clip already lets through)")
        if self.behaviour_logprobs not in BEHAVIOUR_LOGPROBS:
            raise ValueError(f"RLConfig.behaviour_logprobs={self.behaviour_logprobs!r}; expected one of "
                             f"{BEHAVIOUR_LOGPROBS}")
        if not self.length_buckets or any(b < 1 for b in self.length_buckets) or \
                list(self.length_buckets) != sorted(self.length_buckets):
            raise ValueError(f"RLConfig.length_buckets={self.length_buckets!r} must be positive, ascending, non-empty")
        if any(len(pair) != 2 or not all(isinstance(x, str) for x in pair) for pair in self.xla_options):
            raise ValueError(f"RLConfig.xla_options={self.xla_options!r} must be (name, value) pairs of strings, "
                             'e.g. (("xla_tpu_enable_latency_hiding_scheduler", "false"),)')
        if self.loss_aggregation not in AGGREGATIONS:
            raise ValueError(f"RLConfig.loss_aggregation={self.loss_aggregation!r} is not registered; "
                             f"known: {AGGREGATIONS.names()}")
        if self.loss not in LOSSES:
            raise ValueError(f"RLConfig.loss={self.loss!r} is not registered; known: {LOSSES.names()}")
        for name in ("solver_advantage", "proposer_advantage"):
            if getattr(self, name) not in ADVANTAGES:
                raise ValueError(f"RLConfig.{name}={getattr(self, name)!r} is not registered; "
                                 f"known: {ADVANTAGES.names()}")

