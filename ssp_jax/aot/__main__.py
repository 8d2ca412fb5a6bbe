"""`python -m ssp_jax.aot`: the fit check of a config on a TPU slice, or with `--project` its step
time (`ssp_jax.aot`, `ssp_jax.aot.project`)."""

from __future__ import annotations

import logging
import os
import sys

import jax
from absl import app, flags

from ssp_jax.aot import GiB, fit_report
from ssp_jax.aot.project import project
from ssp_jax.wiring import config_from_flags, one_line_errors, parse_flags


def main(argv: list[str]) -> None:
    del argv
    # Compile-only: never claim this host's accelerators (a TPU VM may be training right now).
    if "JAX_PLATFORMS" not in os.environ:
        jax.config.update("jax_platforms", "cpu")
    logging.getLogger().setLevel(logging.INFO)
    args = flags.FLAGS
    with one_line_errors("ssp_jax.aot"):
        config = config_from_flags()
    if args.project:
        print(project(config, args.topology).format())
        return
    report = fit_report(config, args.topology, hbm_bytes=int(args.hbm_gib * GiB) or None, count_flops=args.flops)
    print(report.format())
    sys.exit(1 if report.over_budget() else 0)


def _define_flags() -> None:
    """The CLI flags (--config is ssp_jax.wiring's)."""
    flags.DEFINE_string("topology", "v5p:4x4x4", "TPU slice to compile for, e.g. v5p:4x4x4, v5e:2x2, v6e:4x4")
    flags.DEFINE_float("hbm_gib", 0.0, "HBM per device in GiB; 0 = the table entry of the topology's chip")
    flags.DEFINE_bool("project", False, "instead of the fit check, project one SSP step's time on the slice from "
                      "the compiled programs' costs (ssp_jax.projection; workload: config.projection)")
    flags.DEFINE_bool("flops", True, "also compile one loop-free accumulation step to count the update's FLOPs")
    flags.mark_flags_as_required(["config"])


if __name__ == "__main__":
    _define_flags()
    app.run(main, flags_parser=parse_flags)
