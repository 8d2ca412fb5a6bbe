"""The warm-start checkpoint: built once from demonstrations, cached, and used by the trainer."""

import sys
from pathlib import Path

import pytest

from ssp_jax.config import load_config
from ssp_jax.models.hf_import import load_hf_decoder
from ssp_jax.retrieval.index import load_retriever
from ssp_jax.tokenizer import Tokenizer, get_chat_template
from ssp_jax.train import Trainer
from ssp_jax.worlds.microworld import World, WorldConfig
from ssp_jax.worlds.prepare import prepare_microworld
from ssp_jax.worlds.warmstart.build import WarmStartConfig, warm_start_checkpoint
from ssp_jax.worlds.warmstart.demos import DemoFormat
from ssp_jax.worlds.warmstart.sft import SFTConfig

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "configs"))
import tiny  # noqa: E402

FMT = DemoFormat(get_chat_template("chatml"))
SMALL = dict(enabled=True, num_solver=6, num_proposer=4, num_reader=4, passage_repeats=1)
SFT = dict(steps=3, batch_size=4, length_buckets=(2048,), warmup_steps=1)


@pytest.mark.slow
def test_checkpoint_is_built_once_with_the_world_tokenizer(tmp_path):
    world = World(WorldConfig())
    _, index = prepare_microworld(tmp_path / "world", WorldConfig())
    init = tiny.get_config().model.init.to_dict()
    path = warm_start_checkpoint(tmp_path / "warm", world, load_retriever(index), init, WarmStartConfig(**SMALL),
                                 SFTConfig(**SFT), fmt=FMT, progress=False)
    model, hf_config = load_hf_decoder(path)
    tokenizer = Tokenizer.load(path)
    assert model.cfg.vocab_size >= tokenizer.vocab_size and hf_config["eos_token_id"] == tokenizer.eos_id
    assert len(tokenizer.encode("</search>")) == 1  # tags are single tokens of the world's BPE
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert warm_start_checkpoint(path, world, load_retriever(index), init, WarmStartConfig(**SMALL),
                                 SFTConfig(**SFT), fmt=FMT) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp  # cached, not rebuilt


@pytest.mark.slow
def test_trainer_uses_the_warm_start(tmp_path):
    config = tiny.get_config()
    config.mesh.fsdp = 1
    config.model.warm_start.update(SMALL)
    config.model.sft.update({**SFT, "length_buckets": (2048,)})
    trainer = Trainer(load_config(config), tmp_path)
    assert (tmp_path / "warm_start" / "config.json").is_file()
    assert trainer.learner.model.cfg.vocab_size % 64 == 0 and trainer.learner.model.cfg.vocab_size > 512


def test_bad_solver_thoughts_are_named():
    with pytest.raises(ValueError, match="model.warm_start.solver_thoughts must be one of"):
        WarmStartConfig(solver_thoughts="steps")


@pytest.mark.parametrize("field, value, expected", [("proposer_thoughts", "plan", "must be one of"),
                                                    ("proposer_chains", 0, "must be >= 1")])
def test_bad_proposer_demo_fields_are_named(field, value, expected):
    with pytest.raises(ValueError, match=f"model.warm_start.{field} {expected}"):
        WarmStartConfig(**{field: value})
