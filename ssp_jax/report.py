"""The before / after summary of a run: held-out EM by hop count next to the self-play curves.

Written by the trainer when `config.train.eval_at_ends` is set (the micro-world demo), as
`summary.json` (the numbers) and `summary.png` (the plot) in the workdir. Pure reads of the
per-question eval results and of `metrics.jsonl`, so it can be re-run on any finished workdir.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on CI machines or TPU hosts
import matplotlib.pyplot as plt  # noqa: E402

CURVES = ("solver/reward", "proposer/reward", "selfplay/valid_rate", "selfplay/rag_pass_rate", "solver/searches")
SUMMARY_JSON, SUMMARY_PNG = "summary.json", "summary.png"


def by_hops(results: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """EM overall and per hop count, from per-question records with `em` and `hops`."""
    out = {"all": sum(r["em"] for r in results) / max(len(results), 1)}
    for hops in sorted({r["hops"] for r in results if r["hops"]}):
        scores = [r["em"] for r in results if r["hops"] == hops]
        out[f"{hops}hop"] = sum(scores) / len(scores)
    return out


def summarize_run(before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]],
                  history: Sequence[Mapping[str, float | None]]) -> dict[str, Any]:
    """EM before / after by hop count, mean searches, and each curve of `CURVES` per step."""
    em_before, em_after = by_hops(before), by_hops(after)
    curves = {name: [(int(h["step"]), h[name]) for h in history if h.get(name) is not None] for name in CURVES}
    return {
        "questions": len(after),
        "em_before": em_before,
        "em_after": em_after,
        "em_gain": {k: em_after[k] - em_before.get(k, 0.0) for k in em_after},
        "searches_before": sum(r["searches"] for r in before) / max(len(before), 1),
        "searches_after": sum(r["searches"] for r in after) / max(len(after), 1),
        "steps": int(history[-1]["step"]) if history else 0,
        "mean_valid_rate": _mean(curves["selfplay/valid_rate"]),
        "mean_rag_pass_rate": _mean(curves["selfplay/rag_pass_rate"]),
        "curves": curves,
    }


def _mean(points: Sequence[tuple[int, float]]) -> float | None:
    return sum(v for _, v in points) / len(points) if points else None


def write_summary(workdir: str | Path, summary: Mapping[str, Any]) -> tuple[Path, Path]:
    """summary.json and a two-panel summary.png (EM bars by hop; curves per step)."""
    workdir = Path(workdir)
    json_path, png_path = workdir / SUMMARY_JSON, workdir / SUMMARY_PNG
    json_path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    fig, (bars, lines) = plt.subplots(1, 2, figsize=(11, 4))
    keys = list(summary["em_after"])
    width = 0.4
    for offset, label in ((-width / 2, "before"), (width / 2, "after")):
        values = [summary[f"em_{label}"].get(k, 0.0) for k in keys]
        bars.bar([i + offset for i in range(len(keys))], values, width, label=f"{label} SSP")
    bars.set_xticks(range(len(keys)), keys)
    bars.set_ylabel("held-out EM (greedy)")
    bars.set_ylim(0, 1)
    bars.legend()
    for name, points in summary["curves"].items():
        if points and name != "solver/searches":
            lines.plot([s for s, _ in points], [v for _, v in points], label=name)
    lines.set_xlabel("SSP step")
    lines.set_ylim(0, 1)
    lines.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return json_path, png_path
