"""How long one SSP step would take on a TPU slice: a roofline over the compiled programs' costs.

`python -m ssp_jax.aot --config X --topology T --project` compiles every program one SSP step runs
(prefill, extend, decode, the log-prob and update micro-batches, the optimizer step) for the
slice, reads each one's FLOPs and HBM bytes (XLA's cost analysis) and ICI bytes (its collectives,
read from the HLO), and multiplies by how often a step calls it, from the config's shapes and the
workload's stated mean lengths (`ProjectionConfig`). Each call takes

    max(FLOPs / peak FLOP/s, HBM bytes / HBM bandwidth, ICI bytes / ICI bandwidth) / efficiency

per device: a roofline with collectives overlapped, run at `efficiency` of it. Every assumption
is printed with the result. This module is the arithmetic; `ssp_jax.aot` compiles.
"""

from __future__ import annotations

import dataclasses
import math
import re

GB = 1e9


@dataclasses.dataclass(frozen=True)
class ProjectionConfig:
    """`config.projection`: the workload one projected SSP step runs, as means per trajectory, and
    the share of the roofline the programs are assumed to reach. Defaults: SSP.md's setting as
    issue 22 measured it (4 search turns of top-3 passages, about 2,000 generated tokens)."""

    prompt_tokens: int = 600  # mean prompt (system + user message), per trajectory
    generated_tokens: int = 2000  # mean tokens the policy samples over all its turns
    retrieved_tokens: int = 1500  # mean tool-output tokens appended over all turns
    turns: int = 4  # mean tool calls (extends) per trajectory
    # Cache positions a decode step attends over without the ragged kernel (`model.attention` not
    # resolving to `splash`): 0 = the whole cache (`engine.max_cache_len`), as when some slot in the
    # batch is near the cap; else one of `engine.decode_windows`.
    decode_window: int = 0
    efficiency: float = 0.4  # fraction of the roofline bound each program reaches

    def __post_init__(self) -> None:
        for name in ("prompt_tokens", "generated_tokens", "turns"):
            if getattr(self, name) < 1:
                raise ValueError(f"projection.{name} must be >= 1, got {getattr(self, name)}")
        if self.retrieved_tokens < 0 or self.decode_window < 0:
            raise ValueError(f"projection.retrieved_tokens and decode_window must be >= 0, got "
                             f"{self.retrieved_tokens} and {self.decode_window}")
        if not 0 < self.efficiency <= 1:
            raise ValueError(f"projection.efficiency must be in (0, 1], got {self.efficiency}")

    @property
    def mean_context(self) -> int:
        """Mean positions a slot's cache holds over its decode steps: the prompt, and on average half
        of what the trajectory generates and retrieves (tool outputs arrive along the way)."""
        return self.prompt_tokens + (self.generated_tokens + self.retrieved_tokens) // 2

    @property
    def total_tokens(self) -> int:
        """Mean trajectory length: what the log-prob and update passes see per row."""
        return self.prompt_tokens + self.generated_tokens + self.retrieved_tokens


@dataclasses.dataclass(frozen=True)
class ChipSpec:
    """One TPU chip's peaks (Cloud TPU system-architecture pages): bf16 FLOP/s, HBM bytes/s, and ICI
    bytes/s over all its links in one direction."""

    peak_flops: float
    hbm_bandwidth: float
    ici_bandwidth: float


# Keyed by `device_kind`, as ssp_jax.aot.HBM_PER_CHIP. ICI: the pages' Gbps per chip / 8.
CHIP_SPECS: dict[str, ChipSpec] = {
    "TPU v4": ChipSpec(275e12, 1228 * GB, 2400 / 8 * GB),
    "TPU v5 lite": ChipSpec(197e12, 819 * GB, 1600 / 8 * GB),
    "TPU v5": ChipSpec(459e12, 2765 * GB, 4800 / 8 * GB),
    "TPU v6 lite": ChipSpec(918e12, 1640 * GB, 3584 / 8 * GB),
}


# -- costs read from compiled programs ---------------------------------------------------------------

_COLLECTIVE = re.compile(r"= (.+?) (all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)"
                         r"(?:-start)?\((.*)$", re.M)
_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16)\[([\d,]*)\]")


@dataclasses.dataclass(frozen=True)
class Collective:
    """One cross-device collective of a compiled (SPMD-partitioned) HLO module: its op and the
    per-device shapes of its result and operands, e.g. ("f32", (8, 40, 64))."""

    op: str
    arrays: tuple[tuple[str, tuple[int, ...]], ...]

    @property
    def bytes(self) -> int:
        """Bytes of its largest array per device: what one device sends or receives, within a factor
        of two whatever the algorithm (ring all-reduce moves about twice its size)."""
        return max((math.prod(dims) * _dtype_bytes(dtype) for dtype, dims in self.arrays), default=0)

    def has_dim(self, size: int) -> bool:
        return any(size in dims for _, dims in self.arrays)


def _dtype_bytes(dtype: str) -> int:
    return 1 if dtype == "pred" else 2 if dtype == "bf16" else int(dtype[1:]) // 8


def collectives(hlo_text: str) -> list[Collective]:
    """The collectives of `compiled.as_text()`, in program order (a loop body's once per body)."""
    return [Collective(op, tuple((dtype, tuple(int(d) for d in dims.split(",") if d))
                                 for dtype, dims in _ARRAY.findall(result + " " + operands.split("),")[0])))
            for result, op, operands in _COLLECTIVE.findall(hlo_text)]


@dataclasses.dataclass(frozen=True)
class Cost:
    """One call of a compiled program, per device: FLOPs, HBM bytes accessed and ICI bytes sent."""

    flops: float
    hbm_bytes: float
    ici_bytes: float

    @classmethod
    def of(cls, cost_analysis: dict[str, float], hlo_text: str) -> Cost:
        """From `compiled.cost_analysis()` and `compiled.as_text()`. A loop body counts once, so the
        programs projected are compiled without loops over what they repeat."""
        return cls(flops=float(cost_analysis.get("flops", 0.0)),
                   hbm_bytes=float(cost_analysis.get("bytes accessed", 0.0)),
                   ici_bytes=float(sum(op.bytes for op in collectives(hlo_text))))

    @staticmethod
    def extrapolate(one: Cost, two: Cost, layers: int) -> Cost:
        """The cost at `layers` layers from compiles at 1 and 2: the base plus (layers - 1) times the
        difference (every layer of a decoder costs the same)."""
        return Cost(*(a + (b - a) * (layers - 1) for a, b in zip(dataclasses.astuple(one), dataclasses.astuple(two))))

    def minus(self, other: Cost) -> Cost:
        """What this program costs beyond `other` (each term at least 0)."""
        return Cost(*(max(a - b, 0.0) for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

    def seconds(self, chip: ChipSpec, devices_per_chip: int, efficiency: float) -> float:
        share = 1 / devices_per_chip  # a v4 device is one of its chip's two TensorCores
        return max(self.flops / (chip.peak_flops * share), self.hbm_bytes / (chip.hbm_bandwidth * share),
                   self.ici_bytes / (chip.ici_bandwidth * share)) / efficiency

    def bound(self, chip: ChipSpec) -> str:
        """Which roofline term is the largest: compute, HBM or ICI."""
        terms = {"compute": self.flops / chip.peak_flops, "HBM": self.hbm_bytes / chip.hbm_bandwidth,
                 "ICI": self.ici_bytes / chip.ici_bandwidth}
        return max(terms, key=terms.__getitem__)


# -- the step --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Call:
    """One program of the step: how often one SSP step runs it and what one run costs per device."""

    phase: str  # rollout | reader | training
    name: str
    shape: str
    count: float
    cost: Cost


@dataclasses.dataclass(frozen=True)
class Projection:
    """One SSP step's projected time on a slice: each program's calls, cost and seconds, and every
    assumption behind them. `format()` prints the table."""

    topology: str
    device_kind: str
    devices_per_chip: int
    layers: int
    calls: tuple[Call, ...]
    assumptions: tuple[str, ...]
    efficiency: float

    @property
    def chip(self) -> ChipSpec:
        return CHIP_SPECS[self.device_kind]

    def seconds(self, call: Call) -> float:
        """All of one program's calls in one step."""
        return call.count * call.cost.seconds(self.chip, self.devices_per_chip, self.efficiency)

    def total_seconds(self, phase: str | None = None) -> float:
        return sum(self.seconds(c) for c in self.calls if phase is None or c.phase == phase)

    def format(self) -> str:
        lines = [f"projected SSP step on {self.topology} ({self.device_kind}), {self.layers} layers "
                 f"(costs from 1- and 2-layer compiles), per device:",
                 f"{'phase':<10}{'program':<22}{'shape':<30}{'calls':>10}{'GFLOP':>11}{'HBM GB':>9}{'ICI GB':>9}"
                 f"{'bound':>9}{'ms/call':>10}{'s/step':>9}"]
        for c in self.calls:
            per_call = c.cost.seconds(self.chip, self.devices_per_chip, self.efficiency)
            lines.append(f"{c.phase:<10}{c.name:<22}{c.shape:<30}{c.count:>10.0f}{c.cost.flops / GB:>11.1f}"
                         f"{c.cost.hbm_bytes / GB:>9.2f}{c.cost.ici_bytes / GB:>9.2f}{c.cost.bound(self.chip):>9}"
                         f"{per_call * 1e3:>10.2f}{self.seconds(c):>9.2f}")
        phases = dict.fromkeys(c.phase for c in self.calls)
        lines.append("total: " + ", ".join(f"{p} {self.total_seconds(p):.1f} s" for p in phases)
                     + f"; one SSP step {self.total_seconds():.1f} s (sequential, no overlap of phases)")
        lines.append("assumptions:")
        lines += [f"  - {a}" for a in self.assumptions]
        return "\n".join(lines)
