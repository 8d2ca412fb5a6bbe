"""Per-step metrics to a JSONL file and TensorBoard event files, without TensorFlow.

JSONL is the record of truth (easy to load in pandas, survives any TensorBoard version); the event
files (written with tensorboardX) are for watching a run live. Only process 0 writes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import jax
from tensorboardX import SummaryWriter

METRICS_FILE = "metrics.jsonl"


class MetricsWriter:
    """Appends each step's metrics to `<workdir>/metrics.jsonl` and TensorBoard, from process 0 only,
    so a multi-host run writes one log."""

    def __init__(self, workdir: str | Path) -> None:
        self.path = Path(workdir) / METRICS_FILE
        self._enabled = jax.process_index() == 0
        self._tb: SummaryWriter | None = None
        if self._enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        """Append one step. Non-finite values are kept in JSONL as null, so a NaN is visible, not fatal."""
        if not self._enabled:
            return
        clean = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items()}
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **clean}, sort_keys=True) + "\n")
        for name, value in clean.items():
            if value is not None:
                self._tb.add_scalar(name, value, step)
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_jsonl(path: str | Path) -> list[dict]:
    """Every record of a JSONL file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def read_metrics(workdir: str | Path) -> list[dict[str, float | None]]:
    """All steps written so far, in order (later duplicates of a step, after a resume, win)."""
    path = Path(workdir) / METRICS_FILE
    if not path.is_file():
        return []
    by_step = {record["step"]: record for record in read_jsonl(path)}
    return [by_step[s] for s in sorted(by_step)]
