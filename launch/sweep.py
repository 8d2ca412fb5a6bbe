"""Expand a sweep file into training runs: `python launch/sweep.py configs/sweeps/<x>.gin [--run]`.

A sweep file is gin: it binds `sweep.base_config`, optional `sweep.gin_files` and `sweep.axes`, a
dict from a config override (`selfplay.num_distractor_blocks`) or a gin binding (`gin:grpo.eps`)
to the values to try. The grid is their product; each point gets its own workdir, so runs resume
independently. Without `--run` the commands are printed (to paste into a scheduler or the
per-host TPU launcher); with `--run` they run one after another here.
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gin


@gin.configurable
def sweep(base_config: str = gin.REQUIRED, axes: dict[str, list[Any]] = gin.REQUIRED,
          gin_files: Sequence[str] = ()) -> tuple[str, dict[str, list[Any]], tuple[str, ...]]:
    return base_config, dict(axes), tuple(gin_files)


def _flag_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def expand(sweep_file: str | Path, workdir_root: str | Path, extra: Sequence[str] = ()) -> list[list[str]]:
    """One `python -m ssp_jax.train` argv per grid point."""
    with gin.unlock_config():
        gin.clear_config()
        gin.parse_config_file(str(sweep_file))
        base_config, axes, gin_files = sweep()
    if not axes:
        raise ValueError(f"{sweep_file}: sweep.axes is empty")
    for key in axes:
        if not isinstance(axes[key], (list, tuple)) or not axes[key]:
            raise ValueError(f"{sweep_file}: sweep.axes[{key!r}] must be a non-empty list")
    name = Path(sweep_file).stem
    commands = []
    for point in itertools.product(*axes.values()):
        label = ",".join(f"{key.removeprefix('gin:').split('.')[-1]}={_flag_value(v)}" for key, v in zip(axes, point))
        argv = [sys.executable, "-m", "ssp_jax.train", "--config", base_config,
                "--workdir", str(Path(workdir_root) / name / label)]
        argv += [f"--gin_file={f}" for f in gin_files]
        for key, value in zip(axes, point):
            if key.startswith("gin:"):
                argv.append(f"--gin_bindings={key.removeprefix('gin:')} = {value!r}")
            else:
                argv.append(f"--config.{key}={_flag_value(value)}")
        commands.append(argv + list(extra))
    return commands


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_file")
    parser.add_argument("--workdir_root", default="workdir/sweeps")
    parser.add_argument("--run", action="store_true", help="run the grid here, one run after another")
    args, extra = parser.parse_known_args(argv)
    commands = expand(args.sweep_file, args.workdir_root, extra)
    for command in commands:
        print(shlex.join(command))
        if args.run and subprocess.run(command).returncode != 0:
            print(f"run failed: {shlex.join(command)}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
