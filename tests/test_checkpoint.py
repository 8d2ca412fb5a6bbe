"""Checkpoints restore sharded arrays and host state exactly, and corrupt ones fail clearly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from ssp_jax.checkpoint import Checkpointer, abstract_like
from ssp_jax.models.sharding import MeshConfig, make_mesh


def test_round_trip_keeps_values_and_shardings(tmp_path):
    mesh = make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
    sharding = NamedSharding(mesh, PartitionSpec("fsdp", "tensor"))
    arrays = {"w": jax.device_put(jnp.arange(32.0).reshape(8, 4), sharding), "count": jnp.array(7)}
    host = {"pool": [{"question": "q", "gold": ["a", "b"]}], "step": 3}
    ckpt = Checkpointer(tmp_path, max_to_keep=2)
    for step in (1, 2, 3):
        ckpt.save(step, jax.tree.map(lambda x: x + step, arrays), {**host, "step": step})
    assert ckpt.latest_step() == 3
    restored, restored_host = ckpt.restore(3, abstract_like(arrays))
    np.testing.assert_array_equal(restored["w"], arrays["w"] + 3)
    assert restored["w"].sharding == sharding and restored_host == {**host, "step": 3}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["2", "3"]  # max_to_keep


def test_corrupt_checkpoint_names_the_directory(tmp_path):
    ckpt = Checkpointer(tmp_path)
    ckpt.save(5, {"w": jnp.ones(4)}, {"step": 5})
    for path in (tmp_path / "5" / "arrays").rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"/5: checkpoint cannot be restored"):
        Checkpointer(tmp_path).restore(5, abstract_like({"w": jnp.ones(4)}))
