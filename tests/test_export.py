"""`python -m ssp_jax.export`: a training run's orbax policy becomes an HF checkpoint with the same
weights and a tokenizer, loadable by our importer (and so by transformers, see test_hf_parity)."""

import json

import jax
import numpy as np
import search_world as world
from flax import nnx

from ssp_jax.checkpoint import Checkpointer
from ssp_jax.config import base_config, load_config
from ssp_jax.export import export_policy
from ssp_jax.models.hf_import import load_hf_decoder
from ssp_jax.tokenizer import Tokenizer


def test_orbax_policy_exports_to_an_hf_checkpoint(tmp_path):
    model, _ = world.trained_searcher()
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    saver = Checkpointer(tmp_path / "run" / "checkpoints")
    saver.save(3, {"policy": params, "optimizer": {"unused": params}, "reference": params}, {"step": 3})
    saver.close()
    config = base_config()
    config.mesh.fsdp = 1
    hf_config = json.loads((world.ASSET / "config.json").read_text())
    config.model.init = {k: v for k, v in hf_config.items() if k not in ("torch_dtype", "rope_scaling")}
    out = export_policy(load_config(config), tmp_path / "run" / "checkpoints", tmp_path / "hf")
    exported, _ = load_hf_decoder(out)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(nnx.to_pure_dict(nnx.state(exported, nnx.Param)))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert Tokenizer.load(out).vocab_size > 0
