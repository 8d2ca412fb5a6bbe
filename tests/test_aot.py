"""Ahead-of-time compilation for TPU slices this CPU host does not have (ssp_jax/aot.py).

The tiny config's update (micro-batch and optimizer steps), reference log-prob and decode steps
compile for v5e:2x2 with positive per-device memory and update FLOPs near 6*N*tokens; a config
that cannot fit is refused naming the step and the bytes; installing libtpu leaves ordinary CPU
jax alone.
"""

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest

pytest.importorskip("libtpu", reason="libtpu is not installed (pip install -r requirements-tpu.txt); "
                                     "TPU ahead-of-time compilation needs it")

from ssp_jax.aot import GiB, check_fits, frozen_model_configs, hbm_per_device, tpu_topology_devices  # noqa: E402
from ssp_jax.config import load_config  # noqa: E402
from ssp_jax.train import Trainer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "configs"))
import tiny  # noqa: E402

QWEN_7B = dict(model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
               num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, head_dim=128,
               tie_word_embeddings=False)


def short_config(length: int = 128, rows: int = 8):
    """configs/tiny.py with short sequences, so attention is a small part of the FLOPs and 6*N*tokens
    is a close estimate. `rows` solver trajectories per step (2 per question)."""
    config = tiny.get_config()
    config.selfplay.batch_size = rows // config.selfplay.solver_samples
    config.rl.length_buckets = (length,)
    config.engine.max_cache_len = length
    config.engine.prefill_buckets = (128,)  # on TPU a prefill runs splash: multiples of 128
    config.engine.extend_buckets = (length // 4,)
    return config


@pytest.fixture(scope="module")
def tiny_report():
    return check_fits(load_config(short_config()), "v5e:2x2", count_flops=True)


def test_topology_devices_and_hbm_per_device():
    devices = tpu_topology_devices("v5e:2x2")
    assert len(devices) == 4 and devices[0].device_kind == "TPU v5 lite" and devices[0].platform == "tpu"
    assert hbm_per_device(devices) == 16 * GiB
    assert hbm_per_device(tpu_topology_devices("v5p:2x2x1")) == 95 * GiB
    # v4 slices list each of a chip's two TensorCores as a device, so each gets half the chip.
    assert hbm_per_device(tpu_topology_devices("v4:2x2x1")) == 16 * GiB
    assert jax.devices()[0].platform == "cpu" and jax.device_count() == 8  # the tests' CPU devices are intact


def test_tiny_config_compiles_for_v5e_with_positive_memory(tiny_report):
    report = tiny_report
    assert (report.device_kind, report.num_devices, report.hbm_bytes) == ("TPU v5 lite", 4, 16 * GiB)
    assert report.mesh == {"data": 1, "fsdp": 4, "tensor": 1}
    assert [s.name for s in report.steps] == ["accumulate", "apply", "reference_logprobs", "generate"]
    for step in report.steps:  # (scratch this small stays in on-chip memory: temp_bytes may be 0)
        assert step.argument_bytes > 0 and step.output_bytes > 0 and step.temp_bytes >= 0, step
        assert step.flops > 0 and 0 < step.total_bytes < report.hbm_bytes, step
    accumulate, apply, logprobs, generate = report.steps
    # fp32 weights split 4 ways (norm scales replicated); AdamW holds two moments per weight.
    params = report.resident["params"]
    assert report.num_params * 4 / 4 <= params < report.num_params * 4 / 2
    assert 2 * params <= report.resident["optimizer"] < 2 * params + 1024
    # The micro-batch step adds to fp32 gradients (laid out like the params) in place; the optimizer
    # step updates the donated params and moments in place.
    assert accumulate.argument_bytes >= 2 * params and accumulate.alias_bytes >= params
    assert accumulate.resident_bytes == report.resident["optimizer"] + report.resident["reference"]
    assert apply.argument_bytes >= 2 * params + report.resident["optimizer"]
    assert apply.alias_bytes >= params + report.resident["optimizer"] and generate.alias_bytes > 0
    assert apply.resident_bytes == report.resident["reference"]
    # One micro-batch (8 rows / 2 mini-batches) of 128 fp32 log-probs, over 4 devices.
    assert logprobs.argument_bytes >= params and logprobs.output_bytes == 4 * 128 * 4 // 4
    assert "accumulate" in report.format() and "6*N*tokens" in report.format()


def test_learner_xla_options_reach_the_tpu_compiler():
    """`rl.xla_options` go to XLA with the learner's programs: a TPU option compiles; a misspelt one
    is refused by name."""
    config = short_config()
    config.rl.xla_options = (("xla_tpu_enable_latency_hiding_scheduler", "false"),)
    report = check_fits(load_config(config), "v5e:2x2")
    assert [s.name for s in report.steps][:3] == ["accumulate", "apply", "reference_logprobs"]
    config.rl.xla_options = (("xla_tpu_enable_latency_hiding_schedulerr", "false"),)
    with pytest.raises(Exception, match="xla_tpu_enable_latency_hiding_schedulerr"):
        check_fits(load_config(config), "v5e:2x2")


def test_update_flops_are_close_to_six_n_tokens(tiny_report):
    assert tiny_report.update_tokens == 8 * 128
    ratio = tiny_report.update_flops / tiny_report.analytic_update_flops
    # Above 1: attention scores and the optimizer; well below 2: no step is compiled twice.
    assert 1.0 < ratio < 1.5, tiny_report.format()


def test_model_too_big_for_the_slice_is_refused_before_compiling():
    config = short_config()
    config.model.init = QWEN_7B
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"resident state \(policy params \+ AdamW state \+ reference params\) "
                                         r"needs \d+ bytes \(\d+\.\d+ GiB\) per device but 17179869184 bytes "
                                         r"\(16\.00 GiB\) are available"):
        check_fits(load_config(config), "v5e:2x2")
    assert time.perf_counter() - start < 60


@pytest.mark.slow
def test_activations_that_cannot_fit_are_refused_naming_the_step():
    # 32 rows of 16k tokens: each device's 8 rows hold [8, 4 heads, 4k, up to 16k] fp32 attention
    # scores per query block, which the update's backward keeps for every block (the forward-only
    # reference log-probs fit). XLA rematerialises to fit HBM and, when nothing fits, refuses the
    # step with the bytes it needs.
    long_rows = short_config(length=16384, rows=32)
    long_rows.model.attention = "xla"  # the materialised scores; splash (the TPU default) needs no such scratch
    with pytest.raises(ValueError, match=r"does not fit v5e:2x2 \(TPU v5 lite, 17179869184 bytes = 16\.00 GiB HBM "
                                         r"per device\): accumulate cannot be compiled to fit: "
                                         r"RESOURCE_EXHAUSTED: .*required for HLO temporaries \(\d+\.\d+G\) "
                                         r"exceeds available HBM") as refused:
        check_fits(load_config(long_rows), "v5e:2x2")
    assert "generate" not in str(refused.value).splitlines()[0]  # 8 slots of 16k cache fit easily


def test_compiled_steps_over_the_budget_are_named_with_their_bytes(tiny_report):
    """A step XLA compiled whose total (with the resident state) still exceeds the chip's HBM."""
    update = tiny_report.steps[0]
    small_chip = dataclasses.replace(tiny_report, hbm_bytes=update.total_bytes - 1)
    assert update in small_chip.over_budget()
    assert small_chip.shortfall(update) == (f"accumulate needs {update.total_bytes} bytes "
                                            f"({update.total_bytes / 2**20:.2f} MiB) per device, "
                                            f"{update.total_bytes - 1} ({(update.total_bytes - 1) / 2**20:.2f} MiB) "
                                            "available")
    assert "DOES NOT FIT: accumulate needs" in small_chip.format()


def test_trainer_runs_the_check_when_config_names_a_topology(tmp_path):
    config = short_config()
    config.model.init = QWEN_7B
    config.aot_topology = "v5e:2x2"
    with pytest.raises(ValueError, match="resident state"):
        Trainer(load_config(config), tmp_path)
    assert not (tmp_path / "random_init").exists()  # refused before any weight was written


def test_libtpu_leaves_plain_cpu_jax_alone():
    """Without JAX_PLATFORMS, jax probes the TPU plugin, finds no chip (and no metadata server is
    queried: jax sets TPU_SKIP_MDS_QUERY when no TPU is on the PCI bus) and falls back to CPU."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "TPU_", "XLA_"))}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend(), jax.device_count())"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["cpu", "1"]
    assert time.perf_counter() - start < 30


def test_importing_ssp_jax_keeps_libtpu_quiet_without_a_tpu():
    """libtpu is installed for AOT; on a host without TPU chips its probe prints three error lines
    that read as failures. Importing ssp_jax pins the platform search to CPU first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "TPU_", "XLA_"))}
    out = subprocess.run([sys.executable, "-c", "import ssp_jax, jax; print(jax.default_backend())"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["cpu"]
    assert "tpu" not in out.stderr.lower(), out.stderr


READER_SHAPE = dict(model_type="qwen2", vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=64, tie_word_embeddings=False)


def test_frozen_models_are_counted_once_per_checkpoint_or_noted():
    config = short_config()
    config.reader.update(path="/ckpt/reader", shape=READER_SHAPE)
    config.judge.update(path="/ckpt/reader", shape=READER_SHAPE)
    shapes, notes = frozen_model_configs(load_config(config))
    assert list(shapes) == ["reader+judge"] and not notes  # one checkpoint named by both loads once
    assert shapes["reader+judge"].hidden_size == 256 and shapes["reader+judge"].param_dtype == "float32"
    config.judge.path, config.judge.shape = "/ckpt/judge", {}
    shapes, notes = frozen_model_configs(load_config(config))
    assert list(shapes) == ["reader"] and notes == [
        "judge: not counted (/ckpt/judge/config.json is not readable here and config.judge.shape is empty)"]


@pytest.mark.slow
def test_a_frozen_reader_is_resident_in_every_step_and_its_decode_compiles():
    """The reader's weights (fp32 here: the tiny config computes in fp32) sit beside the policy in
    every step, and the reading RAG check's decode step compiles for the slice."""
    config = short_config()
    config.reader.update(path="/ckpt/reader", shape=READER_SHAPE)
    report = check_fits(load_config(config), "v5e:2x2")
    reader = report.resident["reader"]
    embeddings = 2 * 512 * 256 * 4  # untied: embed + lm_head, fp32, of ~2.9M parameters in all
    assert embeddings / 4 < reader < 4 * embeddings
    accumulate, apply, logprobs, generate, reader_generate = report.steps
    assert reader_generate.name == "reader_generate" and reader_generate.argument_bytes > reader
    assert accumulate.resident_bytes == report.resident["optimizer"] + report.resident["reference"] + reader
    assert apply.resident_bytes == report.resident["reference"] + reader
    assert reader_generate.resident_bytes == sum(report.resident[k] for k in ("params", "optimizer", "reference"))
    assert "reader_generate" in report.format() and "reader" in report.format()
