"""The learner: one compiled, sharded update per batch (mini-batch steps x micro-batch accumulation).

Per update, `ppo_epochs` passes run over `mini_batches` contiguous row blocks; each block is one
AdamW step whose gradient is summed over micro-batches with `lax.scan`. Every micro-batch loss is
normalised by the whole mini-batch's masked-token count, so the summed gradient is exactly the
gradient of the mini-batch token-mean, whatever `micro_batch_size` is.

Params and optimizer state are laid out by the logical-axis rules and donated to the update;
batches split over the "batch" rule. Shapes are static per (rows, length, mini_batches), so a
fixed padded shape compiles once (`compile_counts`). The compiled functions live in `LearnerSteps`,
which needs only the model's structure, so `ssp_jax.aot` can compile them for a TPU topology
without materialising weights.
"""

from __future__ import annotations

import collections
import logging
from typing import Any, cast

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from ssp_jax.models.decoder import Decoder, token_logprobs
from ssp_jax.models.shapes import batch_shards
from ssp_jax.models.sharding import (
    DEFAULT_RULES,
    Rules,
    constrain,
    shard_batch,
    state_shardings,
    traced_with_activation_sharding,
)
from ssp_jax.rl.batch import RLBatch
from ssp_jax.rl.config import RLConfig
from ssp_jax.rl.losses import get_loss, token_count


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
        self.logprobs = jax.jit(traced_with_activation_sharding(self._logprobs_fn, mesh, rules))
        self.update = jax.jit(traced_with_activation_sharding(self._update_fn, mesh, rules), static_argnums=2,
                              donate_argnums=0,
                              out_shardings=(self.state_shardings, None))

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
        """Log-probs [rows, T], `micro_batch_size` rows at a time (`lax.scan`), so that the activations
        of a forward pass without gradients never exceed those of one accumulation step."""
        self._traced("logprobs", *tokens.shape)
        rows = tokens.shape[0]
        micro = self.cfg.micro_batch_size or rows
        n = rows // micro

        def forward(carried: nnx.State, chunk: tuple[jax.Array, jax.Array]) -> tuple[nnx.State, jax.Array]:
            # The weights ride in the carry, not the closure: NNX refuses Variables of an outer trace.
            model = nnx.merge(self._model_graphdef, carried, self._model_rest)
            return carried, cast(jax.Array, token_logprobs(model, *chunk, self.cfg.logprob_chunk))  # [micro, T]

        # [rows, T] -> [n, micro, T]: chunk j takes every n-th row, as the update's micro-batches do,
        # so each device keeps its own rows.
        split = lambda x: x.reshape(micro, n, *x.shape[1:]).swapaxes(0, 1)  # noqa: E731
        _, out = jax.lax.scan(forward, params, (split(tokens), split(attention_mask)))  # [n, micro, T]
        return out.swapaxes(0, 1).reshape(rows, -1)

    def _micro_loss(self, params: nnx.State, micro: RLBatch, num_tokens: jax.Array):
        model = nnx.merge(self._model_graphdef, params, self._model_rest)
        logp, entropy = token_logprobs(model, micro.tokens, micro.attention_mask, self.cfg.logprob_chunk,
                                       with_entropy=True)
        loss, metrics = self._loss(logp, micro, self.cfg, num_tokens=num_tokens)
        # Reported, not trained on (SSP uses no entropy bonus); normalised like the loss metrics.
        entropy = jnp.sum(jax.lax.stop_gradient(entropy) * micro.loss_mask) / num_tokens
        return loss, {**metrics, "loss": loss, "entropy": entropy}

    def _update_fn(self, state: nnx.State, batch: RLBatch, mini_batches: int) -> tuple[nnx.State, dict]:
        rows, length = batch.tokens.shape
        self._traced("update", rows, length, mini_batches)
        mini = rows // mini_batches
        micro = self.cfg.micro_batch_size or mini

        def split(x: jax.Array) -> jax.Array:
            # [rows, ...] -> [mini_batches, n_micro, micro, ...]. Mini-batches are contiguous blocks
            # (groups stay together); micro-batch j takes every n_micro-th row of its block, so a
            # device's rows stay on it and no micro-batch lands on a subset of devices.
            x = x.reshape(mini_batches, micro, mini // micro, *x.shape[1:]).swapaxes(1, 2)
            return constrain(x, (None, None, "batch", "length")[:x.ndim])  # traced under activation_sharding

        minis = jax.tree.map(split, batch)

        def optimizer_step(state: nnx.State, mini: RLBatch) -> tuple[nnx.State, dict]:
            # Pin the loop carry to the rules' layout (propagation alone re-shards e.g. norm scales).
            model, optimizer = nnx.merge(self._graphdef, self._constrain_state(state))
            params = nnx.state(model, nnx.Param)
            num_tokens = token_count(mini.loss_mask)  # the whole mini-batch's count

            def accumulate(carry, micro_batch: RLBatch):
                grads, sums = carry
                (_, metrics), g = jax.value_and_grad(self._micro_loss, has_aux=True)(
                    params, micro_batch, num_tokens)
                grads = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), grads, g)
                return (self._constrain_params(grads), jax.tree.map(jnp.add, sums, metrics)), None

            zeros = self._constrain_params(jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params))
            # Loss metrics are normalised by num_tokens (the loss contract), so they sum over micro-batches.
            _, metric_shapes = jax.eval_shape(self._micro_loss, params, jax.tree.map(lambda x: x[0], mini),
                                              num_tokens)
            no_metrics = jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype), metric_shapes)
            (grads, sums), _ = jax.lax.scan(accumulate, (zeros, no_metrics), mini)
            lr = self._schedule(optimizer.step[...])
            grad_norm = optax.global_norm(grads)
            # Accumulated in fp32, applied in the parameters' own dtype: AdamW's moments were made
            # from the parameters, and fp32 gradients would promote bf16 moments inside the loop.
            optimizer.update(model, jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params))
            return nnx.state((model, optimizer)), {**sums, "grad_norm": grad_norm, "lr": lr}

        def epoch(state: nnx.State, _: None) -> tuple[nnx.State, dict]:
            return jax.lax.scan(optimizer_step, state, minis)

        state, per_step = jax.lax.scan(epoch, state, None, length=self.cfg.ppo_epochs)  # [epochs, minis]
        metrics = {k: v.mean() for k, v in per_step.items()}
        metrics["lr"] = per_step["lr"][-1, -1]
        metrics["tokens"] = jnp.sum(batch.loss_mask)
        return state, metrics

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

    @property
    def step(self) -> int:
        """Optimizer steps taken so far."""
        return int(self.optimizer.step[...])

    def logprobs(self, params_or_model: nnx.State | Decoder, batch: RLBatch) -> jax.Array:
        """Per-token log-probs [B, T] of `batch.tokens` under the given weights (behaviour or reference)."""
        params = nnx.state(params_or_model, nnx.Param) if isinstance(params_or_model, nnx.Module) else params_or_model
        self._steps.check_rows(batch.tokens.shape[0])
        tokens, mask = self._place_batch((batch.tokens, batch.attention_mask))
        return self._steps.logprobs(params, tokens, mask)

    def update(self, batch: RLBatch, *, mini_batches: int = 1) -> dict[str, float]:
        """`ppo_epochs` x `mini_batches` optimizer steps on `batch`; returns metrics averaged over steps.

        Metrics: loss, pg_loss, kl, clip_frac, dual_clip_frac, ratio, entropy (token-means), grad_norm
        (before clipping), lr (of the last step), tokens (trained tokens in the batch).
        """
        self._steps.check_update(batch.tokens.shape[0], mini_batches)
        state = nnx.state((self.model, self.optimizer))
        new_state, metrics = self._steps.update(state, self._place_batch(batch), mini_batches)
        nnx.update((self.model, self.optimizer), new_state)
        return {k: float(v) for k, v in jax.device_get(metrics).items()}

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
