"""Bad checkpoints get errors that name the file and the tensor."""

import json

import numpy as np
import pytest

from ssp_jax.models.hf_import import load_hf_decoder


def test_unsupported_model_type(hf_checkpoint):
    _, path = hf_checkpoint("qwen2")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match=r"config\.json: model_type='gpt2' is not supported"):
        load_hf_decoder(path)


def test_missing_config(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "config.json")):
        load_hf_decoder(tmp_path)


def test_missing_shard_file(hf_checkpoint):
    _, path = hf_checkpoint("qwen3", max_shard_size="50KB")
    index = json.loads((path / "model.safetensors.index.json").read_text())
    name, file = sorted(index["weight_map"].items())[-1]
    (path / file).unlink()
    with pytest.raises(FileNotFoundError, match=rf"{file} does not exist .*as holding tensor '"):
        load_hf_decoder(path)


def test_shape_mismatch_names_file_and_tensor(hf_checkpoint):
    _, path = hf_checkpoint("llama")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "intermediate_size": 128}))
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor "
                                         r"'model\.layers\.0\.mlp\.(gate|up|down)_proj\.weight' "
                                         r"has shape \(\d+, \d+\); config\.json implies"):
        load_hf_decoder(path)


def test_missing_tensor(hf_checkpoint):
    _, path = hf_checkpoint("qwen2", tied=True)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    with pytest.raises(ValueError, match="tensor 'lm_head.weight' is missing"):
        load_hf_decoder(path)


def test_corrupt_safetensors(hf_checkpoint):
    _, path = hf_checkpoint("qwen2")
    (path / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(64))
    with pytest.raises(ValueError, match=r"model\.safetensors: cannot read safetensors"):
        load_hf_decoder(path)
