"""The typed config tree: every shipped config loads, defaults are written once, and a bad field
(unknown, mistyped, or rejected by its section) fails naming `config.<section>.<field>`."""

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest

from ssp_jax.config import Config, ConfigError, base_config, load_config, override_error
from ssp_jax.engine.sampling import SamplingParams
from ssp_jax.wiring import _override_errors

REPO = Path(__file__).resolve().parents[1]


def config_file(name: str):
    spec = importlib.util.spec_from_file_location(f"config_{name}", REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.parametrize("name", ["microworld", "tiny", "wiki_rehearsal", "qwen2_5_7b", "qwen2_5_7b_reference"])
def test_every_shipped_config_loads(name):
    config = load_config(config_file(name))
    assert isinstance(config, Config)
    assert isinstance(config.rl.length_buckets, tuple) and isinstance(config.model.init, dict)


def test_base_config_is_the_dataclass_defaults():
    assert load_config(base_config()) == Config()
    assert load_config({}) == Config()  # a missing section keeps its defaults


def test_microworld_config_values_arrive_typed():
    config = load_config(config_file("microworld"))
    assert config.selfplay.proposer_temperature == 0.5  # an optional field, set by the file
    assert config.rl.length_buckets == (256, 384, 512, 768)
    assert config.data.search_turns == (2, 3) and config.model.warm_start.proposer_search_turns == (2, 3)
    assert config.model.init["intermediate_size"] == 384


def test_unknown_field_names_the_section_and_the_near_names():
    config = base_config()
    config.rl.unlock()
    config.rl.lrr = 1e-3
    with pytest.raises(ConfigError, match=r"^config\.rl has no field 'lrr'; did you mean lr\?"):
        load_config(config)
    with pytest.raises(ConfigError, match=r"^config has no field 'selfply'; did you mean selfplay\?"):
        load_config({"selfply": {}})
    with pytest.raises(ConfigError, match=r"^config\.model\.warm_start has no field 'enable'; did you mean enabled"):
        load_config({"model": {"warm_start": {"enable": True}}})


@pytest.mark.parametrize("values,message", [
    ({"train": {"steps": "10"}}, r"^config\.train\.steps='10': expected int$"),
    ({"train": {"eval_at_ends": 1}}, r"^config\.train\.eval_at_ends=1: expected bool$"),
    ({"rl": {"lr": True}}, r"^config\.rl\.lr=True: expected float$"),
    ({"engine": {"prefill_buckets": 64}}, r"^config\.engine\.prefill_buckets=64: expected a tuple$"),
    ({"selfplay": {"proposer_temperature": "hot"}}, r"^config\.selfplay\.proposer_temperature='hot': "
                                                          r"expected float$"),
    ({"data": {"source": "web"}}, r"^config\.data: data\.source='web'; expected one of"),
    ({"selfplay": {"top_p": 0.0}}, r"^config\.selfplay: selfplay\.top_k=0 must be >= 0 and top_p=0\.0"),
    ({"rl": {"length_buckets": (512, 256)}}, r"^config\.rl: RLConfig\.length_buckets=\(512, 256\) must be"),
])
def test_bad_values_fail_naming_the_field(values, message):
    with pytest.raises(ConfigError, match=message):
        load_config(values)


def test_lists_become_tuples_and_ints_floats():
    config = load_config({"rl": {"lr": 1, "length_buckets": [128, 256]}, "data": {"search_turns": [2]}})
    assert config.rl.lr == 1.0 and isinstance(config.rl.lr, float)
    assert config.rl.length_buckets == (128, 256) and config.data.search_turns == (2,)


def test_sampling_parameters_are_config_fields():
    selfplay = load_config({"selfplay": {"temperature": 0.9, "top_k": 40, "top_p": 0.95,
                                         "proposer_temperature": 0.5, "off_policy_sampling": True}}).selfplay
    assert selfplay.sampling("proposer") == SamplingParams(temperature=0.5, top_k=40, top_p=0.95)
    assert selfplay.sampling("solver") == SamplingParams(temperature=0.9, top_k=40, top_p=0.95)


def test_off_policy_sampling_is_refused_unless_meant():
    """Issue 23: a temperature other than 1 (or top-k / top-p) samples from another distribution
    than the one the PPO ratio and the KL are computed under."""
    with pytest.raises(ConfigError, match=r"selfplay\.proposer_temperature=0\.5, top_p=0\.9: .*off_policy_sampling"):
        load_config({"selfplay": {"proposer_temperature": 0.5, "top_p": 0.9}})
    assert load_config({"selfplay": {"proposer_temperature": 1.0}}).selfplay.proposer_temperature == 1.0


def test_override_error_walks_the_config():
    config = base_config()
    assert override_error("rl.lr", config) is None
    assert override_error("model.init.hidden_size", config) is None
    assert override_error("rl.nonexistent", config).startswith("config.rl has no field 'nonexistent' (fields: ")
    assert "did you mean proposer_temperature" in override_error("selfplay.proposer_temprature", config)


def test_command_line_override_of_no_field_is_explained():
    argv = ["train", "--config", str(REPO / "configs/tiny.py"), "--config.rl.lr=1e-3", "--config.rl.nonexistent=1"]
    assert list(_override_errors(argv)) == [
        "--config.rl.nonexistent: " + override_error("rl.nonexistent", config_file("tiny"))]
    assert list(_override_errors(["train", f"--config={REPO / 'configs/tiny.py'}", "--config.rl.lr=1"])) == []


def test_configs_are_frozen():
    config = load_config({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.rl.lr = 1.0  # type: ignore[misc]


def test_no_config_file_reaches_below_the_entry_points():
    """Below the entry points, code takes typed sections, never an ml_collections ConfigDict."""
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "ssp_jax").rglob("*.py")
                 if "ml_collections" in p.read_text() and p.name not in ("config.py", "wiring.py")]
    assert not offenders, offenders


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
