"""The learner: compiled, sharded steps that run one update per batch (mini-batch optimizer steps
over micro-batch gradient accumulation).

Per update, `ppo_epochs` passes run over `mini_batches` contiguous row blocks; each block is one
AdamW step (`apply`) on the fp32 gradient summed over its micro-batches (`accumulate`). Every
micro-batch loss is normalised by the whole mini-batch's masked-token count, so the summed gradient
is exactly the gradient of the mini-batch token-mean, whatever `micro_batch_size` is and however
the block's rows are grouped. So the host groups rows of similar length (`plan_micro_batches`) and
pads each micro-batch only to its own length bucket, not every row to the batch's longest.

Params and optimizer state are laid out by the logical-axis rules and donated to `apply`; batches
split over the "batch" rule. `accumulate` compiles once per (micro-batch rows, length bucket) and
`apply` once (`compile_counts`). The compiled functions live in `LearnerSteps`, which needs only
the model's structure, so `ssp_jax.aot` can compile them for a TPU topology without
materialising weights.
"""

from __future__ import annotations

import collections
import logging
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from ssp_jax.distributed import host_value
from ssp_jax.models.decoder import Decoder, token_logprobs
from ssp_jax.models.shapes import batch_shards
from ssp_jax.models.sharding import (
    DEFAULT_RULES,
    Rules,
    shard_batch,
    state_shardings,
    traced_with_activation_sharding,
)
from ssp_jax.rl.aggregation import AGGREGATIONS
from ssp_jax.rl.batch import RLBatch, plan_micro_batches, take_rows
from ssp_jax.rl.config import RLConfig
from ssp_jax.rl.losses import get_loss


def learning_rate(cfg: RLConfig) -> optax.Schedule:
    """lr * min(1, (count + 1) / warmup_steps): update k (from 1) uses k/warmup of lr.

    Unlike HF's constant-with-warm-up (used by veRL), whose first update has lr 0, the first
    update already moves; update `warmup_steps` and later use lr.
    """
    warmup = max(cfg.warmup_steps, 1)
    return lambda count: cfg.lr * jnp.minimum(1.0, (count + 1.0) / warmup)


def make_optimizer(cfg: RLConfig) -> optax.GradientTransformation:
    """Global-norm clip, then AdamW (decoupled weight decay on every parameter, like torch AdamW)."""
    return optax.chain(
        optax.clip_by_global_norm(cfg.max_grad_norm),
        optax.adamw(learning_rate(cfg), b1=cfg.adam_b1, b2=cfg.adam_b2, eps=cfg.adam_eps,
                    weight_decay=cfg.weight_decay))


class LearnerSteps:
    """The learner's compiled functions, built from the structure of the model and its optimizer
    alone, so they accept either concrete modules or abstract ones from `nnx.eval_shape`.

    `Learner` runs them on real weights; `ssp_jax.aot` lowers them on `jax.ShapeDtypeStruct`s for a
    TPU topology this machine does not have. `update` donates its state argument.
    """

    def __init__(self, model: Decoder, optimizer: nnx.Optimizer, cfg: RLConfig, *, mesh: Mesh | None = None,
                 rules: Rules = DEFAULT_RULES):
        self.cfg, self.mesh, self.rules = cfg, mesh, rules
        self._graphdef, state = nnx.split((model, optimizer))
        # Two filters give exactly three parts; flax types the result as a variadic tuple.
        self._model_graphdef, params, self._model_rest = cast(tuple[nnx.GraphDef[Decoder], nnx.State, nnx.State],
                                                              nnx.split(model, nnx.Param, ...))
        self._schedule = learning_rate(cfg)
        self._loss = get_loss(cfg.loss)
        self.state_shardings = None if mesh is None else state_shardings(state, mesh, rules)
        self.param_shardings = None if mesh is None else state_shardings(params, mesh, rules)
        self.compile_counts: collections.Counter[str] = collections.Counter()
        # Traced under the rules' activation layout (models/sharding.py: why it matters).
        options = dict(cfg.xla_options) or None
        self.logprobs = jax.jit(traced_with_activation_sharding(self._logprobs_fn, mesh, rules),
                                compiler_options=options)
        self.accumulate = jax.jit(traced_with_activation_sharding(self._accumulate_fn, mesh, rules),
                                  donate_argnums=1, out_shardings=(self.param_shardings, None),
                                  compiler_options=options)
        self.apply = jax.jit(self._apply_fn, donate_argnums=0, out_shardings=(self.state_shardings, None),
                             compiler_options=options)
        self._zero_grads = jax.jit(self._zero_grads_fn, out_shardings=self.param_shardings)
        self.compute_dtype = model.cfg.compute_dtype
        self.rollout_params = jax.jit(self._rollout_params_fn, out_shardings=self.param_shardings)
        self._metric_names: tuple[str, ...] | None = None

    def batch_shards(self) -> int:
        """Devices a batch's rows are split over (the mesh axes of the "batch" rule)."""
        return batch_shards(self.mesh, self.rules)

    def check_rows(self, rows: int) -> None:
        if rows % self.batch_shards():
            raise ValueError(f"a batch of {rows} rows does not split over the mesh's {self.batch_shards()} "
                             "batch shards; pad it with pack_batch(batch_multiple=...)")
        if self.cfg.micro_batch_size and rows % self.cfg.micro_batch_size:
            raise ValueError(f"a batch of {rows} rows is not a multiple of RLConfig.micro_batch_size="
                             f"{self.cfg.micro_batch_size}; pad it with pack_batch(batch_multiple=...)")

    def check_update(self, rows: int, mini_batches: int) -> None:
        """Shape errors of `update`, raised before tracing with the field to change."""
        self.check_rows(rows)
        if mini_batches < 1 or rows % mini_batches:
            raise ValueError(f"a batch of {rows} rows does not split into mini_batches={mini_batches}")
        mini = rows // mini_batches
        micro = self.cfg.micro_batch_size or mini
        if mini % micro:
            raise ValueError(f"mini-batch of {mini} rows ({rows} / mini_batches={mini_batches}) is not a "
                             f"multiple of RLConfig.micro_batch_size={micro}")
        if micro % self.batch_shards():
            raise ValueError(f"RLConfig.micro_batch_size={micro} is not a multiple of the {self.batch_shards()} "
                             "batch shards of the mesh")

    # -- compiled bodies --------------------------------------------------------------------------

    def _traced(self, name: str, *shape: int) -> None:
        """Runs only while tracing: one increment per compilation."""
        self.compile_counts[name] += 1
        logging.info("learner: compiling %s %s (#%d)", name, shape, self.compile_counts[name])

    def _logprobs_fn(self, params: nnx.State, tokens: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """Log-probs [rows, T] of one micro-batch (`Learner.logprobs` splits a batch into them)."""
        self._traced("logprobs", *tokens.shape)
        model = nnx.merge(self._model_graphdef, params, self._model_rest)
        return cast(jax.Array, token_logprobs(model, tokens, attention_mask, self.cfg.logprob_chunk))

    def _micro_loss(self, params: nnx.State, micro: RLBatch, weights: jax.Array, scale: jax.Array):
        """(`scale` x the loss, to differentiate; the metrics, unscaled). weights: [rows], the
        mini-batch's loss aggregation (`rl/aggregation.py`); scale: the role's loss scale."""
        model = nnx.merge(self._model_graphdef, params, self._model_rest)
        logp, entropy = token_logprobs(model, micro.tokens, micro.attention_mask, self.cfg.logprob_chunk,
                                       with_entropy=True)
        loss, metrics = self._loss(logp, micro, self.cfg, weights=weights)
        # Reported, not trained on (SSP uses no entropy bonus); weighted like the loss metrics.
        entropy = jnp.sum(jax.lax.stop_gradient(entropy) * micro.loss_mask * weights[:, None])
        return scale * loss, {**metrics, "loss": loss, "entropy": entropy}

    def zero_carry(self, params: nnx.State, micro: RLBatch) -> tuple[nnx.State, dict[str, jax.Array]]:
        """(fp32 zero gradients laid out like the params, zero loss metrics): what `accumulate` starts
        each mini-batch from. `micro` (any micro-batch) names the loss's metrics, traced once."""
        if self._metric_names is None:
            rows = jnp.ones(micro.advantages.shape, jnp.float32)
            self._metric_names = tuple(jax.eval_shape(self._micro_loss, params, micro, rows, jnp.float32(1))[1])
        return self._zero_grads(params), {name: jnp.zeros((), jnp.float32) for name in self._metric_names}

    def _rollout_params_fn(self, params: nnx.State) -> nnx.State:
        """The weights in the compute dtype. Every use casts them to it anyway, so sampling from
        these is exact; cast once per rollout phase, a decode step reads half the bytes of fp32
        master weights (docs/performance.md, "Projected SSP step")."""
        self._traced("rollout_params")
        floating = lambda x: jnp.issubdtype(x.dtype, jnp.floating)  # noqa: E731
        return jax.tree.map(lambda x: x.astype(self.compute_dtype) if floating(x) else x, params)

    def _zero_grads_fn(self, params: nnx.State) -> nnx.State:
        return jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)

    def _accumulate_fn(self, params: nnx.State, carry: tuple[nnx.State, dict], micro: RLBatch,
                       weights: jax.Array, scale: jax.Array) -> tuple[nnx.State, dict]:
        """Add one micro-batch's gradient (fp32) and loss metrics to the carry. Its rows' `weights`
        [rows] come from the whole mini-batch, so the sum is the mini-batch loss's gradient."""
        self._traced("accumulate", *micro.tokens.shape)
        grads, sums = carry
        (_, metrics), g = jax.value_and_grad(self._micro_loss, has_aux=True)(self._constrain_params(params),
                                                                             micro, weights, scale)
        grads = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), grads, g)
        return self._constrain_params(grads), jax.tree.map(jnp.add, sums, metrics)

    def _apply_fn(self, state: nnx.State, grads: nnx.State, sums: dict) -> tuple[nnx.State, dict]:
        """One AdamW step with the accumulated gradients; the metrics of the step. Gradients with a
        NaN or an infinity are not applied (as the reference skips them): the state, the step
        counter included, stays as it was, and `skipped_nonfinite` counts it."""
        self._traced("apply")
        state = self._constrain_state(state)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(grad_norm)

        def step(state: nnx.State) -> nnx.State:
            model, optimizer = nnx.merge(self._graphdef, state)
            params = nnx.state(model, nnx.Param)
            # Accumulated in fp32, applied in the parameters' own dtype: AdamW's moments were made
            # from the parameters, and fp32 gradients would promote bf16 moments.
            optimizer.update(model, jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params))
            return nnx.state((model, optimizer))

        lr = self._schedule(nnx.merge(self._graphdef, state)[1].step[...])
        state = jax.lax.cond(finite, step, lambda state: state, state)
        return state, {**sums, "grad_norm": grad_norm, "lr": lr, "skipped_nonfinite": 1.0 - finite}

    # -- layout constraints (inside jit) ------------------------------------------------------------

    def _constrain_params(self, tree: nnx.State) -> nnx.State:
        if self.mesh is None:
            return tree
        return jax.lax.with_sharding_constraint(tree, self.param_shardings)

    def _constrain_state(self, state: nnx.State) -> nnx.State:
        if self.mesh is None:
            return state
        return jax.lax.with_sharding_constraint(state, self.state_shardings)


class Learner:
    """Owns the policy, its AdamW state and a frozen reference copy; runs compiled updates.

    The policy module is updated in place; arrays from an earlier `params` are donated by each
    update, so fetch `learner.params` again after updating (e.g. for the sampling engine).
    """

    def __init__(self, model: Decoder, cfg: RLConfig, *, mesh: Mesh | None = None,
                 rules: Rules = DEFAULT_RULES, reference_params: nnx.State | None = None):
        self.cfg, self.mesh, self.rules = cfg, mesh, rules
        self.model = model
        self.optimizer = nnx.Optimizer(model, make_optimizer(cfg), wrt=nnx.Param)
        self._steps = LearnerSteps(model, self.optimizer, cfg, mesh=mesh, rules=rules)
        self.compile_counts = self._steps.compile_counts
        if mesh is not None:
            state = nnx.state((model, self.optimizer))
            nnx.update((model, self.optimizer), jax.device_put(state, self._steps.state_shardings))
        # A copy, never the policy's own buffers: those are donated by every update.
        reference = self.params if reference_params is None else reference_params
        self.reference_params = self._place_params(jax.tree.map(jnp.copy, reference))

    # -- public API -------------------------------------------------------------------------------

    @property
    def params(self) -> nnx.State:
        return nnx.state(self.model, nnx.Param)

    def rollout_params(self, params: nnx.State) -> nnx.State:
        """`params` (the policy's or the reference's) as the engine samples with them: in the model's
        compute dtype, laid out as the params are; `params` itself when they are stored in it."""
        if all(x.dtype == self._steps.compute_dtype or not jnp.issubdtype(x.dtype, jnp.floating)
               for x in jax.tree.leaves(params)):
            return params
        return self._steps.rollout_params(params)

    @property
    def step(self) -> int:
        """Optimizer steps taken so far."""
        return int(self.optimizer.step[...])

    def logprobs(self, params_or_model: nnx.State | Decoder, batch: RLBatch) -> np.ndarray:
        """Per-token log-probs [B, T] of `batch.tokens` under the given weights (behaviour or reference).

        Rows run `micro_batch_size` at a time, longest first, each micro-batch padded only to the
        length bucket of its own longest row; all-padding micro-batches are not run (their
        log-probs are 0, as on any padding)."""
        params = nnx.state(params_or_model, nnx.Param) if isinstance(params_or_model, nnx.Module) else params_or_model
        rows, width = batch.tokens.shape
        self._steps.check_rows(rows)
        tokens, mask = host_value(batch.tokens), host_value(batch.attention_mask)
        lengths = mask.sum(axis=1)  # [rows]
        plan = plan_micro_batches(lengths, 1, self.cfg.micro_batch_size or rows, self.cfg.length_buckets, width)[0]
        runs = [(m, self._steps.logprobs(params, *self._place_batch((tokens[m.rows, :m.width],
                                                                      mask[m.rows, :m.width]))))
                for m in plan if lengths[m.rows].any()]
        out = np.zeros((rows, width), np.float32)
        for m, logp in runs:  # all dispatched before the first is read
            out[m.rows, :m.width] = host_value(logp)
        return out

    def update(self, batch: RLBatch, *, mini_batches: int = 1, loss_scale: float = 1.0) -> dict[str, float]:
        """`ppo_epochs` x `mini_batches` optimizer steps on `batch`; returns metrics averaged over steps.
        Each mini-batch's loss is aggregated by `rl.loss_aggregation` and multiplied by `loss_scale`
        (the role's, e.g. `rl.proposer_loss_scale`; the metrics are reported unscaled).

        Each mini-batch (a contiguous block of rows) runs as micro-batches of `micro_batch_size`
        rows, longest first, each padded to its own length bucket (`plan_micro_batches`); a
        micro-batch with no trained token is skipped (its gradient is zero). Metrics: loss,
        pg_loss, kl, clip_frac, dual_clip_frac, ratio, entropy (token-means), grad_norm (before
        clipping), lr (of the last step), tokens (trained tokens in the batch), pad_frac (the share
        of the positions the forward passes computed that were padding), skipped_nonfinite (the
        share of optimizer steps whose gradients held a NaN or an infinity, and were not applied),
        skipped_micro_batches (micro-batches of one epoch not run for holding no trained token).
        """
        rows, width = batch.tokens.shape
        self._steps.check_update(rows, mini_batches)
        host = jax.tree.map(host_value, batch)
        lengths = host.attention_mask.sum(axis=1)  # [rows]
        plan = plan_micro_batches(lengths, mini_batches, self.cfg.micro_batch_size or rows // mini_batches,
                                  self.cfg.length_buckets, width)
        aggregate = AGGREGATIONS.get(self.cfg.loss_aggregation)
        weights = np.zeros(rows, np.float32)  # [rows]: each row's share of its mini-batch's loss
        minis, computed, real, skipped = [], 0, 0, 0
        for block in plan:
            members = np.concatenate([m.rows for m in block])
            weights[members] = aggregate(host.loss_mask[members])
            kept = [m for m in block if host.loss_mask[m.rows].any()] or block[:1]
            skipped += len(block) - len(kept)
            minis.append([(self._place_batch(take_rows(host, m)), self._place_batch(weights[m.rows]))
                          for m in kept])
            computed += sum(len(m.rows) * m.width for m in kept)
            real += sum(int(lengths[m.rows].sum()) for m in kept)
        per_step = []
        for _ in range(self.cfg.ppo_epochs):
            for micros in minis:
                params = self.params
                carry = self._steps.zero_carry(params, micros[0][0])
                for micro, micro_weights in micros:
                    carry = self._steps.accumulate(params, carry, micro, micro_weights, np.float32(loss_scale))
                new_state, metrics = self._steps.apply(nnx.state((self.model, self.optimizer)), *carry)
                nnx.update((self.model, self.optimizer), new_state)
                per_step.append(metrics)
        per_step = jax.device_get(per_step)
        out = {k: float(np.mean([m[k] for m in per_step])) for k in per_step[0]}
        out.update(lr=float(per_step[-1]["lr"]), tokens=float(host.loss_mask.sum()),
                   pad_frac=1.0 - real / computed, skipped_micro_batches=float(skipped))
        return out

    def state(self) -> dict[str, Any]:
        """Checkpointable pure-dict pytree: policy params, optimizer state (with step), reference params."""
        return {"policy": nnx.to_pure_dict(self.params),
                "optimizer": nnx.to_pure_dict(nnx.state(self.optimizer)),
                "reference": nnx.to_pure_dict(self.reference_params)}

    def restore(self, tree: dict[str, Any]) -> None:
        """Load a `state()` pytree (e.g. from orbax), placing it with this learner's shardings."""
        state = nnx.state((self.model, self.optimizer))
        nnx.replace_by_pure_dict(state[0], tree["policy"])
        nnx.replace_by_pure_dict(state[1], tree["optimizer"])
        if self.mesh is None:
            nnx.update((self.model, self.optimizer), jax.tree.map(jnp.asarray, state))
        else:
            nnx.update((self.model, self.optimizer), jax.device_put(state, self._steps.state_shardings))
        nnx.replace_by_pure_dict(self.reference_params, tree["reference"])
        self.reference_params = self._place_params(self.reference_params)

    # -- placement --------------------------------------------------------------------------------

    def _place_batch(self, tree: Any) -> Any:
        if self.mesh is None:
            return jax.tree.map(jnp.asarray, tree)
        return shard_batch(tree, self.mesh, self.rules)

    def _place_params(self, params: nnx.State) -> nnx.State:
        if self.mesh is None:
            return jax.tree.map(jnp.asarray, params)
        return jax.device_put(params, self._steps.param_shardings)
