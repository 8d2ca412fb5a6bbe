"""Sharded parity on 8 fake CPU devices, and the rules -> shardings mapping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import padded_batch
from flax import nnx
from jax.sharding import PartitionSpec as P

from ssp_jax.models.decoder import Decoder
from ssp_jax.models.hf_import import load_hf_decoder
from ssp_jax.models.sharding import DEFAULT_RULES, MeshConfig, logical_to_spec, make_mesh, shard_batch, shard_model

# What DEFAULT_RULES must produce on a fsdp=4 x tensor=2 mesh.
EXPECTED_SPECS = {
    ("embed",): P("tensor", "fsdp"),
    ("lm_head",): P("fsdp", "tensor"),
    ("final_norm", "scale"): P(None),
    ("layers", 0, "attn", "wq"): P("fsdp", "tensor", None),
    ("layers", 0, "attn", "wk"): P("fsdp", "tensor", None),
    ("layers", 0, "attn", "wo"): P("tensor", None, "fsdp"),
    ("layers", 1, "attn", "bq"): P("tensor", None),
    ("layers", 1, "mlp", "gate"): P("fsdp", "tensor"),
    ("layers", 1, "mlp", "down"): P("tensor", "fsdp"),
}


def forward(model: Decoder, tokens, mask, positions) -> np.ndarray:
    fn = nnx.jit(lambda m, t, p, a: m.logits(m(t, p, a)[0]))
    return np.asarray(fn(model, tokens, positions, mask))


def test_sharded_forward_equals_single_device(hf_checkpoint):
    assert jax.device_count() == 8
    _, path = hf_checkpoint("qwen2")
    mesh = make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
    single, _ = load_hf_decoder(path)
    sharded, _ = load_hf_decoder(path, mesh=mesh)
    flat = dict(nnx.to_flat_state(nnx.state(sharded, nnx.Param)))
    for key, spec in EXPECTED_SPECS.items():
        assert flat[key].get_value().sharding.spec == spec, key
    assert len(flat[("embed",)].get_value().addressable_shards) == 8
    tokens, mask, positions = (jnp.asarray(x) for x in padded_batch())
    ref = forward(single, tokens, mask, positions)
    # Batch of 3 does not divide data*fsdp=4; pad to 4 rows to shard it.
    batch = {k: jnp.concatenate([v, v[:1]]) for k, v in dict(t=tokens, m=mask, p=positions).items()}
    batch = shard_batch(batch, mesh, DEFAULT_RULES)
    assert batch["t"].sharding.spec == P(("data", "fsdp"), None)
    got = forward(sharded, batch["t"], batch["m"], batch["p"])[:3]
    real = np.asarray(mask).astype(bool)
    assert np.abs(got - ref)[real].max() <= 1e-5


def test_shard_model_moves_existing_model(hf_checkpoint):
    _, path = hf_checkpoint("llama")
    model, _ = load_hf_decoder(path)
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    shard_model(model, mesh, DEFAULT_RULES)
    assert model.layers[0].mlp.up[...].sharding.spec == P("fsdp", "tensor")


def test_explicit_sizes_may_use_a_subset_of_devices():
    mesh = make_mesh(MeshConfig(data=1, fsdp=2, tensor=1))
    assert mesh.devices.size == 2 and dict(mesh.shape) == {"data": 1, "fsdp": 2, "tensor": 1}


def test_rules_edge_cases():
    mesh = make_mesh(MeshConfig(data=1, fsdp=2, tensor=4))
    # 2 KV heads cannot split over tensor=4: replicated rather than an XLA error.
    assert logical_to_spec(("embed", "kv_heads", "head_dim"), DEFAULT_RULES, (64, 2, 16), mesh) == P("fsdp", None, None)
    # A mesh axis is used at most once per array.
    rules = (("a", "tensor"), ("b", ("fsdp", "tensor")))
    assert logical_to_spec(("a", "b"), rules) == P("tensor", "fsdp")
    with pytest.raises(KeyError, match="'nope' has no sharding rule"):
        logical_to_spec(("nope",), DEFAULT_RULES)


@pytest.mark.parametrize("cfg,message", [
    (MeshConfig(data=16, fsdp=1, tensor=1), "needs 16 devices but 8"),
    (MeshConfig(data=-1, fsdp=-1, tensor=1), "at most one -1"),
    (MeshConfig(data=3, fsdp=-1, tensor=1), "do not divide"),
])
def test_mesh_config_errors(cfg, message):
    with pytest.raises(ValueError, match=message):
        make_mesh(cfg)
