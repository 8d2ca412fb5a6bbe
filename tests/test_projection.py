"""The step-time projection (issue 22, item 5): its arithmetic by hand, and `python -m ssp_jax.aot
--project` on the tiny config through libtpu, with the step's calls counted by hand."""

import subprocess
import sys
from pathlib import Path

import pytest

from ssp_jax.projection import (
    CHIP_SPECS,
    Call,
    ChipSpec,
    Cost,
    Projection,
    ProjectionConfig,
    collectives,
)

REPO = Path(__file__).resolve().parents[1]
CHIP = ChipSpec(peak_flops=100e12, hbm_bandwidth=1e12, ici_bandwidth=0.5e12)


def test_cost_extrapolates_from_one_and_two_layers():
    one, two = Cost(10.0, 100.0, 4.0), Cost(16.0, 130.0, 6.0)
    assert Cost.extrapolate(one, two, 28) == Cost(10 + 6 * 27, 100 + 30 * 27, 4 + 2 * 27)
    assert Cost.extrapolate(one, two, 1) == one
    assert two.minus(one) == Cost(6.0, 30.0, 2.0) and one.minus(two) == Cost(0.0, 0.0, 0.0)


def test_each_call_takes_its_largest_roofline_term_over_the_efficiency():
    compute = Cost(flops=50e12, hbm_bytes=0.1e12, ici_bytes=0.1e12)  # 0.5 s of compute
    assert compute.seconds(CHIP, 1, 0.5) == pytest.approx(1.0) and compute.bound(CHIP) == "compute"
    memory = Cost(flops=1e12, hbm_bytes=0.3e12, ici_bytes=0.1e12)  # 0.3 s of HBM
    assert memory.seconds(CHIP, 1, 1.0) == pytest.approx(0.3) and memory.bound(CHIP) == "HBM"
    ici = Cost(flops=1e12, hbm_bytes=0.1e12, ici_bytes=0.5e12)  # 1 s of ICI
    assert ici.seconds(CHIP, 1, 1.0) == pytest.approx(1.0) and ici.bound(CHIP) == "ICI"
    assert ici.seconds(CHIP, 2, 1.0) == pytest.approx(2.0)  # a device with half a chip


def test_a_step_is_the_sum_of_its_calls(monkeypatch):
    monkeypatch.setitem(CHIP_SPECS, "test chip", CHIP)
    calls = (Call("rollout", "decode", "8 slots", 1000, Cost(0.0, 1e9, 0.0)),  # 1 ms each at efficiency 1
             Call("training", "accumulate", "4x128", 10, Cost(100e12, 0.0, 0.0)))  # 1 s each
    projection = Projection(topology="v5p:2x2x1", device_kind="test chip", devices_per_chip=1, layers=2,
                            calls=calls, assumptions=("an assumption",), efficiency=1.0)
    assert projection.total_seconds("rollout") == pytest.approx(1.0)
    assert projection.total_seconds() == pytest.approx(11.0)
    text = projection.format()
    assert "one SSP step 11.0 s" in text and "  - an assumption" in text and "rollout 1.0 s" in text


def test_collectives_are_read_from_hlo_text():
    hlo = ("  %all-gather.1 = bf16[8,4096]{1,0} all-gather(bf16[2,4096]{1,0} %p), dimensions={0}\n"
           "  %ar = f32[64]{0} all-reduce-start(f32[64]{0} %x), to_apply=%add\n")
    ops = collectives(hlo)
    assert [op.op for op in ops] == ["all-gather", "all-reduce"]
    assert ops[0].bytes == 8 * 4096 * 2 and ops[0].has_dim(4096) and ops[1].bytes == 64 * 4


@pytest.mark.parametrize("field,value,message", [
    ("turns", 0, "projection.turns must be >= 1"),
    ("retrieved_tokens", -1, "projection.retrieved_tokens and decode_window must be >= 0"),
    ("efficiency", 1.5, r"projection.efficiency must be in \(0, 1\]"),
])
def test_bad_workload_is_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        ProjectionConfig(**{field: value})


def project_tiny(*overrides: str) -> tuple[str, dict[tuple[str, str], list[str]]]:
    """`python -m ssp_jax.aot --project` on configs/tiny.py for v5e:2x2: stdout and its rows by
    (phase, program)."""
    workload = ["--config.projection.prompt_tokens=200", "--config.projection.generated_tokens=300",
                "--config.projection.retrieved_tokens=400", "--config.projection.turns=2", *overrides]
    out = subprocess.run([sys.executable, "-m", "ssp_jax.aot", "--config", "configs/tiny.py", "--topology",
                          "v5e:2x2", "--project", *workload], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {tuple(line.split()[:2]): line.split() for line in out.stdout.splitlines()
            if line.split()[:1] in (["rollout"], ["reader"], ["training"])}
    return out.stdout, rows


@pytest.mark.slow  # 16 small compiles through libtpu
def test_project_prints_the_step_of_the_tiny_config_on_v5e():
    pytest.importorskip("libtpu")
    # configs/tiny.py: 4 answers x 2 solver samples, 8 slots, extend groups of 4, 2 solver mini-batches.
    stdout, rows = project_tiny()
    calls = {key: float(row[-7]) for key, row in rows.items()}
    assert calls == {
        ("rollout", "prefill"): 4 + 4,  # 4 proposer prompts, 4 questions shared by their 2 samples
        ("rollout", "extend"): (4 + 8) * 2 / 4,  # 2 tool calls per trajectory, 4 slots per call
        ("rollout", "decode"): (1 + 1) * 300,  # a wave of 4 proposers, then one of 8 solvers, on 8 slots
        ("reader", "prefill"): 4, ("reader", "decode"): 1 * 16,  # selfplay.reader_max_tokens
        ("training", "logprobs"): 2 * (1 + 2),  # behaviour + reference; proposer 1, solver 2 micro-batches
        ("training", "accumulate"): 1 + 2, ("training", "apply"): 1 + 2,
    }, stdout
    assert all(float(row[-2]) > 0 for row in rows.values()), stdout  # ms per call
    assert "one SSP step" in stdout and "assumptions:" in stdout
    assert "200 prompt + 300 generated + 400 retrieved tokens over 2 tool calls" in stdout
    # `auto` on TPU: decode runs the ragged kernel, priced on a cache of the mean held length,
    # 200 + (300 + 400) / 2 = 550 positions, in 512-position blocks.
    assert rows[("rollout", "decode")][2:7] == ["8", "slots", "x", "1024", "held"]
    assert "decode runs the ragged kernel (model.attention='auto')" in stdout and "550 tokens" in stdout


@pytest.mark.slow  # 18 small compiles through libtpu
def test_projected_decode_window_prices_the_step_and_the_copy_per_call():
    pytest.importorskip("libtpu")
    # Windows price decode where the ragged kernel does not run (`xla`).
    stdout, rows = project_tiny("--config.model.attention=xla", "--config.engine.decode_windows=(1024,)",
                                "--config.projection.decode_window=1024")
    assert rows[("rollout", "decode")][2:6] == ["8", "slots", "x", "1024"]
    assert float(rows[("rollout", "window")][-7]) == -(-600 // 16)  # one copy per generate call of 16 steps
    assert "copied out and back once per generate call of 16 steps" in stdout
