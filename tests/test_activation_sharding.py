"""Training passes keep each device on its own rows: the compiled update and log-prob programs move
weights and gradients between devices, never activations (issue 22, item 1).

Without the `activation_*` constraints, XLA carried the embedding's layout (embed over `fsdp`) into
the residual stream, and the same programs all-gathered the batch and all-reduced activations over
`fsdp`: 33 of the update's collectives on this mesh carried the sequence dimension. The test reads
the compiled HLO on 8 fake CPU devices: a collective whose shape has the sequence length is one
that moves activations. The sequence length is chosen to differ from every model dimension.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssp_jax.models.decoder import Decoder, DecoderConfig
from ssp_jax.models.sharding import DEFAULT_RULES, MeshConfig, activation_sharding, constrain, make_mesh
from ssp_jax.projection import collectives
from ssp_jax.rl.batch import RLBatch
from ssp_jax.rl.config import RLConfig
from ssp_jax.rl.update import Learner

LENGTH = 40  # no model dimension, row count or shard size is 40
ROWS = 16
CFG = DecoderConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                    num_kv_heads=2, head_dim=16)


def batch(rng: np.random.Generator) -> RLBatch:
    tokens = rng.integers(1, CFG.vocab_size, (ROWS, LENGTH), dtype=np.int32)
    lengths = rng.integers(LENGTH // 2, LENGTH + 1, ROWS)
    mask = (np.arange(LENGTH) < lengths[:, None]).astype(np.int32)
    loss_mask = (mask * (np.arange(LENGTH) >= 8)).astype(np.float32)
    zeros = np.zeros((ROWS, LENGTH), np.float32)
    return RLBatch(tokens=tokens * mask, attention_mask=mask, loss_mask=loss_mask, old_logprobs=zeros,
                   ref_logprobs=zeros, advantages=rng.normal(size=ROWS).astype(np.float32))


@pytest.fixture(scope="module")
def sharded():
    mesh = make_mesh(MeshConfig(data=2, fsdp=4, tensor=1))
    learner = Learner(Decoder(CFG, rngs=nnx.Rngs(0)), RLConfig(), mesh=mesh, rules=DEFAULT_RULES)
    return learner, learner._place_batch(batch(np.random.default_rng(0)))


@pytest.mark.slow  # compiles the sharded steps
def test_update_moves_weights_and_gradients_only(sharded):
    learner, placed = sharded
    carry = learner._steps.zero_carry(learner.params, placed)
    ops = collectives(learner._steps.accumulate.lower(learner.params, carry, placed, placed.advantages,  # row weights
                                                      jnp.float32(1))
                      .compile().as_text())
    assert ops, "the FSDP update gathers weights and reduce-scatters gradients"
    assert not [op for op in ops if op.has_dim(LENGTH)]


@pytest.mark.slow  # compiles the sharded steps
def test_logprobs_move_weights_only(sharded):
    learner, placed = sharded
    ops = collectives(learner._steps.logprobs.lower(learner.params, placed.tokens, placed.attention_mask)
                      .compile().as_text())
    assert not [op for op in ops if op.has_dim(LENGTH)]


@pytest.mark.slow  # compiles the sharded steps
def test_pinned_logprobs_equal_single_device(sharded):
    learner, _ = sharded
    data = batch(np.random.default_rng(1))
    single = Learner(Decoder(CFG, rngs=nnx.Rngs(0)), RLConfig())
    np.testing.assert_allclose(np.asarray(learner.logprobs(learner.params, data)),
                               np.asarray(single.logprobs(single.params, data)), atol=2e-5)


def test_constrain_is_a_no_op_outside_activation_sharding():
    x = jnp.ones((8, LENGTH, 64))
    assert constrain(x, ("activation_batch", "activation_length", "activation_embed")) is x
    with activation_sharding(None, DEFAULT_RULES):  # no mesh: one device, nothing to pin
        assert constrain(x, ("activation_batch", "activation_length", "activation_embed")) is x


def test_rules_without_activation_axes_are_named():
    mesh = make_mesh(MeshConfig(data=2, fsdp=4, tensor=1))
    rules = tuple(r for r in DEFAULT_RULES if not r[0].startswith("activation_"))
    with activation_sharding(mesh, rules), pytest.raises(KeyError, match="'activation_batch' has no sharding rule"):
        jax.jit(lambda x: constrain(x, ("activation_batch", None, None)))(jnp.ones((8, LENGTH, 64)))
