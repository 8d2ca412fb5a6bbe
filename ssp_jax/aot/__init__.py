"""Will a config fit its TPU slice? Compile the trainer's heavy steps for that slice, on any host.

`python -m ssp_jax.aot --config configs/<x>.py --topology v5p:4x4x4`

With `libtpu` installed (requirements-tpu.txt), jax describes any TPU slice
(`get_topology_desc`) and compiles for it on a CPU host. The RL update (a micro-batch's
gradient accumulation and the optimizer step), the reference log-prob pass and the engine's decode
step are lowered on `jax.ShapeDtypeStruct`s laid out on the config's mesh over those devices, so
no weight is read or allocated. XLA's memory analysis then gives each device's argument, output
and scratch bytes; `check_fits` compares them, plus the long-lived state each step does not take as
an argument, with the chip's HBM, and refuses a config that cannot fit before a slice is ever
booked. The trainer runs it at start-up when `config.aot_topology` is set.

XLA's TPU compiler rematerialises to fit HBM and refuses a step that cannot fit at all; the report
records that refusal with XLA's byte counts. XLA's cost analysis counts a loop body once, whatever
its trip count, so the update's FLOPs come from a separate loop-free compile (`count_flops=True`).

`ssp_jax.aot.project` (`--project`) prices one SSP step from the same kind of compiles; the
command line is `__main__.py`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from ssp_jax.config import Config
from ssp_jax.engine.api import EngineConfig
from ssp_jax.engine.engine import Engine
from ssp_jax.engine.stops import StopAutomaton
from ssp_jax.models.decoder import Decoder, DecoderConfig
from ssp_jax.models.hf_import import decoder_config_from_hf, read_hf_config
from ssp_jax.models.policy import frozen_checkpoints
from ssp_jax.models.sharding import Rules, batch_sharding, make_mesh, state_shardings
from ssp_jax.rl.batch import RLBatch
from ssp_jax.rl.update import LearnerSteps, make_optimizer

GiB = 1 << 30
# HBM per chip by `device_kind` (both the names jax devices report and the marketing names).
HBM_PER_CHIP: dict[str, int] = {
    "TPU v4": 32 * GiB,
    "TPU v5 lite": 16 * GiB, "TPU v5e": 16 * GiB,
    "TPU v5": 95 * GiB, "TPU v5p": 95 * GiB,
    "TPU v6 lite": 32 * GiB, "TPU v6e": 32 * GiB,
}


def tpu_topology_devices(topology: str) -> list[jax.Device]:
    """The devices of a TPU slice such as "v5p:4x4x4" (compile-only: nothing runs on them).

    On a host without TPU chips, libtpu's init looks for the VM's accelerator type and worker
    list and logs errors when it cannot find them; harmless defaults silence that. It also takes a
    host-wide lock (/tmp/libtpu_lockfile) that would make a second compiling process fail; with no
    chips to guard, the lock is waived. A real TPU host is left alone: there these variables
    configure its own chips.
    """
    from jax._src import hardware_utils  # jax's own PCI probe for attached TPU chips (jax is pinned)
    from jax.experimental import topologies

    if hardware_utils.num_available_tpu_chips_and_device_id()[0] == 0:
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5p-8")
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        return list(topologies.get_topology_desc(platform="tpu", topology_name=topology).devices)
    except RuntimeError as e:
        if "not installed" in str(e):
            raise RuntimeError("TPU ahead-of-time compilation needs libtpu: "
                               "pip install -r requirements-tpu.txt") from e
        raise ValueError(f"TPU topology {topology!r}: {e}") from e


def hbm_per_device(devices: Sequence[jax.Device]) -> int:
    """Chip HBM divided by the devices sharing a chip (v4 topologies list each TensorCore)."""
    kind = devices[0].device_kind
    if kind not in HBM_PER_CHIP:
        raise ValueError(f"no HBM size known for device kind {kind!r}; known: {sorted(HBM_PER_CHIP)} "
                         "(pass hbm_bytes)")
    chips = len({tuple(d.coords) for d in devices})
    return HBM_PER_CHIP[kind] * chips // len(devices)


def model_config(config: Config) -> DecoderConfig:
    """The policy's shape: the checkpoint's config.json if `model.hf_path` is set, else `model.init`."""
    model = config.model
    hf = read_hf_config(model.hf_path) if model.hf_path else model.init
    return decoder_config_from_hf(hf, dtype=model.dtype, param_dtype=model.param_dtype, remat=model.remat,
                                  attention=model.attention,
                                  source=f"{model.hf_path}/config.json" if model.hf_path else "config.model.init")


def frozen_model_configs(config: Config) -> tuple[dict[str, DecoderConfig], list[str]]:
    """The shapes of the frozen reader and judge that live on the policy's slice beside it, stored in
    the compute dtype (`load_role_model`), keyed "reader", "judge" or "reader+judge" (one checkpoint
    named by both loads once); and a note per named role whose shape is unknown here (its
    config.json unreadable on this host and its `shape` empty), which the report then says it
    does not count."""
    model, configs, notes = config.model, {}, []
    for roles, frozen in frozen_checkpoints({"reader": config.reader, "judge": config.judge}).items():
        readable = (Path(frozen.path) / "config.json").is_file()
        if not readable and not frozen.shape:
            notes.append(f"{roles}: not counted ({frozen.path}/config.json is not readable here and "
                         f"config.{roles.split('+')[0]}.shape is empty)")
            continue
        hf = read_hf_config(frozen.path) if readable else frozen.shape
        source = f"{frozen.path}/config.json" if readable else f"config.{roles.split('+')[0]}.shape"
        configs[roles] = decoder_config_from_hf(hf, dtype=model.dtype, param_dtype=model.dtype,
                                                attention=model.attention, source=source)
    return configs, notes


def _per_device_bytes(tree: Any) -> int:
    """Bytes one device holds of a pytree of sharded `jax.ShapeDtypeStruct`s (the largest shard)."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _with_shardings(state: nnx.State, shardings: nnx.State) -> nnx.State:
    """Abstract variables whose `jax.ShapeDtypeStruct`s carry the given shardings."""
    return jax.tree.map(lambda var, s: var.replace(jax.ShapeDtypeStruct(var.shape, var.dtype, sharding=s)),
                        state, shardings, is_leaf=lambda x: isinstance(x, nnx.Variable))


def abstract_batch(rows: int, length: int, mesh: Mesh, rules: Rules) -> RLBatch:
    def array(shape: tuple[int, ...], dtype: Any) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding(mesh, rules, len(shape)))

    per_token = (rows, length)
    return RLBatch(tokens=array(per_token, jnp.int32), attention_mask=array(per_token, jnp.int32),
                   loss_mask=array(per_token, jnp.float32), old_logprobs=array(per_token, jnp.float32),
                   ref_logprobs=array(per_token, jnp.float32), advantages=array((rows,), jnp.float32))


@dataclasses.dataclass(frozen=True)
class StepReport:
    """One compiled step, per device. `resident_bytes` is long-lived state that is not an argument
    of the step but stays in HBM while it runs (e.g. the reference weights during the update); it
    is counted unpadded, while XLA's argument sizes include TPU tile padding of small dimensions."""

    name: str
    shape: str  # the step's batch shape, for the table
    argument_bytes: int
    output_bytes: int
    alias_bytes: int  # outputs written into donated arguments
    temp_bytes: int
    code_bytes: int
    resident_bytes: int
    flops: float  # XLA cost analysis, per device; a loop body counts once
    compile_seconds: float
    refused: str = ""  # XLA's out-of-memory error when no schedule of the step fits HBM (sizes then 0)

    @property
    def total_bytes(self) -> int:
        return (self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes
                + self.resident_bytes)


@dataclasses.dataclass(frozen=True)
class FitReport:
    """What the TPU fit check found for one config and topology: each compiled step's per-device bytes
    against HBM, the state resident besides, and the update's FLOPs against 6 N tokens. `format()`
    prints it; `over_budget()` says whether anything does not fit."""

    topology: str
    device_kind: str
    num_devices: int
    mesh: dict[str, int]
    hbm_bytes: int  # per device
    num_params: int
    resident: dict[str, int]  # per device: policy params, optimizer state, reference params, frozen models
    steps: tuple[StepReport, ...]
    update_tokens: int  # tokens one update processes (epochs x rows x length, padding included)
    update_flops: float | None = None  # all devices, from the loop-free compile; None if not counted
    notes: tuple[str, ...] = ()  # what the report does not count, and why

    @property
    def analytic_update_flops(self) -> float:
        """6 N tokens: forward + backward of every parameter once per token."""
        return 6.0 * self.num_params * self.update_tokens

    def over_budget(self) -> list[StepReport]:
        return [s for s in self.steps if s.refused or s.total_bytes > self.hbm_bytes]

    def shortfall(self, step: StepReport) -> str:
        if step.refused:
            return f"{step.name} cannot be compiled to fit: {step.refused}"
        return (f"{step.name} needs {step.total_bytes} bytes ({_size(step.total_bytes)}) per device, "
                f"{self.hbm_bytes} ({_size(self.hbm_bytes)}) available")

    def format(self) -> str:
        mesh = " ".join(f"{k}={v}" for k, v in self.mesh.items())
        lines = [f"{self.topology}: {self.num_devices} x {self.device_kind!r}, mesh {mesh}, "
                 f"HBM {_size(self.hbm_bytes)} per device",
                 f"policy {self.num_params:,} params; resident per device: "
                 + ", ".join(f"{k} {_size(v)}" for k, v in self.resident.items()),
                 f"{'step':<20}{'shape':<28}{'args':>11}{'output':>11}{'aliased':>11}{'temp':>11}"
                 f"{'resident':>11}{'total':>11}{'of HBM':>8}{'compile':>9}"]
        for s in self.steps:
            sizes = [s.argument_bytes, s.output_bytes, s.alias_bytes, s.temp_bytes, s.resident_bytes, s.total_bytes]
            cells = ["-"] * 4 + [_size(s.resident_bytes), "refused", "-"] if s.refused else (
                [_size(n) for n in sizes] + [f"{s.total_bytes / self.hbm_bytes:.0%}"])
            lines.append(f"{s.name:<20}{s.shape:<28}" + "".join(f"{c:>11}" for c in cells[:-1])
                         + f"{cells[-1]:>8}{s.compile_seconds:>8.0f}s")
        if self.update_flops is not None:
            lines.append(f"update FLOPs: {self.update_flops:.3e} (XLA, all devices) vs 6*N*tokens = "
                         f"{self.analytic_update_flops:.3e} (N={self.num_params:.3e}, tokens={self.update_tokens}): "
                         f"ratio {self.update_flops / self.analytic_update_flops:.2f}")
        lines += [f"note: {note}" for note in self.notes]
        lines += [f"DOES NOT FIT: {self.shortfall(s)}" for s in self.over_budget()]
        return "\n".join(lines)


def _size(n: float) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def _compile(name: str, shape: str, lowered: jax.stages.Lowered, resident_bytes: int, start: float) -> StepReport:
    """Compile and read XLA's memory and cost analyses. XLA's TPU compiler rematerialises to fit
    HBM and raises RESOURCE_EXHAUSTED when nothing fits; that is a finding, not a crash."""
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        message = str(e).split("Memory usage report")[0].strip()
        logging.info("aot: %s (%s) does not fit: %s", name, shape, message)
        return StepReport(name=name, shape=shape, argument_bytes=0, output_bytes=0, alias_bytes=0, temp_bytes=0,
                          code_bytes=0, resident_bytes=resident_bytes, flops=0.0,
                          compile_seconds=time.perf_counter() - start, refused=message)
    memory = compiled.memory_analysis()
    seconds = time.perf_counter() - start
    logging.info("aot: compiled %s (%s) in %.1f s", name, shape, seconds)
    return StepReport(name=name, shape=shape, argument_bytes=memory.argument_size_in_bytes,
                      output_bytes=memory.output_size_in_bytes, alias_bytes=memory.alias_size_in_bytes,
                      temp_bytes=memory.temp_size_in_bytes, code_bytes=memory.generated_code_size_in_bytes,
                      resident_bytes=resident_bytes, flops=float(compiled.cost_analysis().get("flops", 0.0)),
                      compile_seconds=seconds)


class Plan:
    """The config's model, mesh and batch shapes over a topology, as abstract state."""

    def __init__(self, config: Config, topology: str, hbm_bytes: int | None, *, layers: int = 0):
        self.config, self.topology = config, topology
        devices = tpu_topology_devices(topology)
        self.device_kind = devices[0].device_kind
        self.devices_per_chip = len(devices) // len({tuple(d.coords) for d in devices})
        self.hbm_bytes = hbm_bytes or hbm_per_device(devices)
        self.model_cfg = model_config(config)
        if layers:  # the model cut to its first `layers` layers (per-layer costs, `project`)
            self.model_cfg = dataclasses.replace(self.model_cfg, num_layers=layers)
        self.rl, self.engine_cfg = config.rl, config.engine
        self.mesh = make_mesh(config.mesh, devices)
        self.rules: Rules = config.sharding_rules

        def init() -> tuple[Decoder, nnx.Optimizer]:
            model = Decoder(self.model_cfg, rngs=nnx.Rngs(0))
            return model, nnx.Optimizer(model, make_optimizer(self.rl), wrt=nnx.Param)

        self.model, self.optimizer = nnx.eval_shape(init)
        self.steps = LearnerSteps(self.model, self.optimizer, self.rl, mesh=self.mesh, rules=self.rules)
        self.state = _with_shardings(nnx.state((self.model, self.optimizer)), self.steps.state_shardings)
        self.params = _with_shardings(nnx.state(self.model, nnx.Param), self.steps.param_shardings)
        # What the engine samples with: the weights in the compute dtype (`Learner.rollout_params`).
        self.rollout_params = _with_shardings(jax.eval_shape(self.steps.rollout_params, self.params),
                                              self.steps.param_shardings)
        params_bytes = _per_device_bytes(self.params)
        self.resident = {"params": params_bytes, "optimizer": _per_device_bytes(self.state) - params_bytes,
                         "reference": params_bytes}
        # The frozen reader and judge stay loaded beside the policy for the whole run.
        frozen, self.notes = frozen_model_configs(config)
        self.frozen_models = {role: nnx.eval_shape(lambda cfg=cfg: Decoder(cfg, rngs=nnx.Rngs(0)))
                              for role, cfg in frozen.items()}
        self.frozen_params = {role: _with_shardings(params, state_shardings(params, self.mesh, self.rules))
                              for role, params in ((r, nnx.state(m, nnx.Param)) for r, m in self.frozen_models.items())}
        self.resident |= {role: _per_device_bytes(params) for role, params in self.frozen_params.items()}
        self.frozen_bytes = sum(self.resident[role] for role in frozen)
        self.num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(self.params))
        # The solver batch, the larger of the two updates.
        selfplay = config.selfplay
        self.mini_batches = self.rl.solver_mini_batches
        self.rows = self.padded_rows(selfplay.batch_size * selfplay.solver_samples, self.mini_batches)
        self.length = max(self.rl.length_buckets)
        self.micro_rows = self.rl.micro_batch_size or self.rows // self.mini_batches
        self.steps.check_update(self.rows, self.mini_batches)

    def padded_rows(self, trajectories: int, mini_batches: int) -> int:
        """A role's update rows, padded as `rl.game_batches` pads them."""
        multiple = mini_batches * math.lcm(self.rl.micro_batch_size or 1, self.steps.batch_shards())
        return -(-trajectories // multiple) * multiple

    def engine(self, cfg: EngineConfig, model: Decoder | None = None) -> Engine:
        """An engine of `cfg` over the abstract `model` (default: the policy). Its stop strings run
        over a vocabulary of empty tokens: the tables' [vocab] shape is real and their [states,
        classes] part is a few hundred bytes either way, so no tokenizer is loaded."""
        model = model or self.model
        stops = StopAutomaton.for_strings(self.config.rollout.stop_strings, [], model.cfg.vocab_size)
        return Engine(model, cfg, stops=stops, eos_ids=[0], mesh=self.mesh, rules=self.rules)

    def memory_precheck(self) -> None:
        """Weights, AdamW moments, the reference copy and the frozen models alone: no compile needed
        to refuse these."""
        resident = sum(self.resident.values())
        if resident > self.hbm_bytes:
            parts = ", ".join(f"{k} {v}" for k, v in self.resident.items())
            held = " + ".join(["policy params", "AdamW state", "reference params",
                               *(f"frozen {role}" for role in self.frozen_models)])
            raise ValueError(f"resident state ({held}) needs {resident} bytes ({_size(resident)}) per device but "
                             f"{self.hbm_bytes} bytes ({_size(self.hbm_bytes)}) are available ({parts}); add devices, "
                             "shard more (config.mesh) or use bf16 params")

    def accumulate(self) -> StepReport:
        """One micro-batch's forward and backward at the longest length bucket: the update's peak."""
        start = time.perf_counter()
        micro = abstract_batch(self.micro_rows, self.length, self.mesh, self.rules)
        # The row weights: a [rows] float32 laid out as the batch's rows, as `micro.advantages` is.
        lowered = self.steps.accumulate.lower(self.params, self.carry(micro), micro, micro.advantages,
                                              jnp.float32(1))
        return _compile("accumulate", f"{self.micro_rows}x{self.length}", lowered,
                        self.resident["optimizer"] + self.resident["reference"] + self.frozen_bytes, start)

    def apply(self) -> StepReport:
        start = time.perf_counter()
        micro = abstract_batch(self.micro_rows, self.length, self.mesh, self.rules)
        lowered = self.steps.apply.lower(self.state, *self.carry(micro))
        return _compile("apply", f"{self.mini_batches} per update", lowered,
                        self.resident["reference"] + self.frozen_bytes, start)

    def carry(self, micro: RLBatch) -> Any:
        """The abstract (fp32 gradients, loss metrics) that `accumulate` adds a micro-batch to."""
        grads, sums = jax.eval_shape(self.steps.zero_carry, self.params, micro)
        return _with_shardings(grads, self.steps.param_shardings), sums

    def reference_logprobs(self) -> StepReport:
        start = time.perf_counter()
        micro = abstract_batch(self.micro_rows, self.length, self.mesh, self.rules)
        lowered = self.steps.logprobs.lower(self.params, micro.tokens, micro.attention_mask)
        return _compile("reference_logprobs", f"{self.micro_rows}x{self.length}", lowered,
                        self.resident["params"] + self.resident["optimizer"] + self.frozen_bytes, start)

    def generate(self) -> StepReport:
        """A decode call on the rollout weights; master weights of another dtype stay resident beside them."""
        start = time.perf_counter()
        engine = self.engine(self.engine_cfg)
        lowered = engine.lower_generate(self.rollout_params, engine.abstract_decode_state())
        cfg = self.engine_cfg
        cast = any(a.dtype != b.dtype
                   for a, b in zip(jax.tree.leaves(self.rollout_params), jax.tree.leaves(self.params)))
        resident = (self.resident["optimizer"] + self.resident["reference"] + (self.resident["params"] if cast else 0)
                    + self.frozen_bytes)
        return _compile("generate", f"{cfg.num_slots} slots x {cfg.max_cache_len}, {cfg.decode_steps} steps",
                        lowered, resident, start)

    def reader_generate(self) -> StepReport | None:
        """The frozen reader's decode call on `reader_engine` (the reading RAG check), beside the
        policy's whole training state and any other frozen model; None without a counted reader."""
        role = next((r for r in self.frozen_models if r.startswith("reader")), None)
        if role is None or self.config.selfplay.rag_reader != "read":
            return None
        start = time.perf_counter()
        cfg = self.config.reader_engine
        engine = self.engine(cfg, self.frozen_models[role])
        lowered = engine.lower_generate(self.frozen_params[role], engine.abstract_decode_state())
        resident = sum(self.resident[k] for k in ("params", "optimizer", "reference")) + self.frozen_bytes \
            - self.resident[role]
        return _compile("reader_generate", f"{cfg.num_slots} slots x {cfg.max_cache_len}, {cfg.decode_steps} steps",
                        lowered, resident, start)

    def update_flops(self) -> float:
        """All devices' FLOPs of one update: one micro-batch of one row per batch shard at the
        longest bucket (the vocabulary projection unchunked, so no loop hides FLOPs from XLA's
        count), scaled to the update's rows and epochs. The optimizer step is left out (O(params))."""
        rows = self.steps.batch_shards()
        rl = dataclasses.replace(self.rl, logprob_chunk=0)
        steps = LearnerSteps(self.model, self.optimizer, rl, mesh=self.mesh, rules=self.rules)
        start = time.perf_counter()
        micro = abstract_batch(rows, self.length, self.mesh, self.rules)
        compiled = steps.accumulate.lower(self.params, self.carry(micro), micro, micro.advantages,  # row weights
                                          jnp.float32(1)).compile()
        logging.info("aot: compiled the loop-free micro-batch (%dx%d) in %.1f s", rows, self.length,
                     time.perf_counter() - start)
        per_step = float(compiled.cost_analysis()["flops"]) * self.mesh.devices.size
        return per_step * self.rl.ppo_epochs * self.rows / rows

    def report(self, count_flops: bool) -> FitReport:
        reader = self.reader_generate()
        return FitReport(topology=self.topology, device_kind=self.device_kind, num_devices=self.mesh.devices.size,
                         mesh=dict(self.mesh.shape), hbm_bytes=self.hbm_bytes, num_params=self.num_params,
                         resident=self.resident,
                         steps=(self.accumulate(), self.apply(), self.reference_logprobs(), self.generate())
                         + ((reader,) if reader else ()),
                         update_tokens=self.rl.ppo_epochs * self.rows * self.length,
                         update_flops=self.update_flops() if count_flops else None, notes=tuple(self.notes))


def fit_report(config: Config, topology: str, *, hbm_bytes: int | None = None,
               count_flops: bool = False) -> FitReport:
    """Compile the update, reference log-prob and generate steps of `config` for `topology` and
    report per-device memory; never raises for not fitting (see `check_fits`). `hbm_bytes`
    overrides the chip table."""
    return Plan(config, topology, hbm_bytes).report(count_flops)


def check_fits(config: Config, topology: str, *, hbm_bytes: int | None = None,
               count_flops: bool = False) -> FitReport:
    """`fit_report`, raising ValueError naming each step that needs more bytes per device than the
    chip has. Resident state that alone exceeds HBM is refused before anything compiles."""
    plan = Plan(config, topology, hbm_bytes)
    plan.memory_precheck()
    report = plan.report(count_flops)
    over = report.over_budget()
    if over:
        raise ValueError(f"config does not fit {topology} ({report.device_kind}, {report.hbm_bytes} bytes = "
                         f"{_size(report.hbm_bytes)} HBM per device): "
                         + "; ".join(report.shortfall(s) for s in over) + "\n" + report.format())
    return report
