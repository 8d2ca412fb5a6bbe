"""The wiki rehearsal (configs/wiki_rehearsal.py), timed, with its acceptance table.

Why: every other end-to-end run uses the micro world, whose tokenizer makes each tag one token and
whose prompts are short. This one runs `python -m ssp_jax.train` on the real path (the Qwen2.5
BPE, real Wikipedia passages, the paper's lengths) and checks what a TPU-pod run needs to hold:

- searches are executed in both roles;
- no prompt fails for length (proposer, solver, reader);
- the reader's prompt lengths (median, max) fit its budget, and what was cut to fit is counted;
- no generated (loss-mask 1) span contains `<information>`: the stop strings fired;
- the valid-question count, the finish-reason table and the wall time are stated.

Usage (from the repo root; a new workdir builds the data, index and warm start first):
    python -m benchmarks.wiki_rehearsal --workdir /tmp/rehearsal [--short] [--config.x=y ...]

The table is printed and written to `<workdir>/rehearsal.md`. `--short` is the smaller variant
(about 10 minutes; `python -m pytest -m rehearsal` runs it): 1,500 articles, a shorter warm start,
2 steps. The exit status is 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ssp_jax.agent.trajectory import FINISH_REASONS
from ssp_jax.metrics import METRICS_FILE, read_jsonl

CONFIG = "configs/wiki_rehearsal.py"
SHORT = ("--config.data.wiki_offline.max_articles=1500", "--config.train.steps=2", "--config.model.sft.steps=240",
         "--config.model.warm_start.num_solver=120", "--config.model.warm_start.num_proposer=180",
         "--config.model.warm_start.num_reader=60")
ROLES = ("proposer", "solver", "reader")


def run(workdir: Path, overrides: Sequence[str]) -> tuple[float, str]:
    """Train the rehearsal config in `workdir`; (wall seconds, the command)."""
    command = [sys.executable, "-m", "ssp_jax.train", f"--config={CONFIG}", f"--workdir={workdir}", *overrides]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start, shlex.join(["python", *command[1:]])


def checks(rows: list[dict[str, Any]]) -> dict[str, bool]:
    """The acceptance checks over every step's metrics."""
    def every(key: str, test: Any) -> bool:
        return all(test(r.get(key, float("nan"))) for r in rows)

    return {
        "searches in both roles": every("proposer/searches", lambda v: v > 0)
                                  and every("solver/searches", lambda v: v > 0),
        "no prompt too long": all(every(f"{role}/finish_prompt_too_long", lambda v: v == 0) for role in ROLES),
        "no generated <information>": all(every(f"{role}/generated_information", lambda v: v == 0)
                                          for role in ROLES[:2]),
        # The reader runs only on rule-valid questions, so some step may have none to read.
        "reader prompts measured": any(r.get("reader/prompts", 0) > 0 for r in rows),
    }


def table(rows: list[dict[str, Any]], prep: dict[str, Any], seconds: float, command: str) -> str:
    """Markdown: the data, per-step figures and finish reasons, and the checks."""
    lines = [f"command: `{command}`", f"wall time: {seconds / 60:.1f} min (data, index, warm start and steps)",
             f"data: {prep.get('articles')} articles -> {prep.get('passages')} passages, {prep.get('answers')} "
             f"answers (search_turns {prep.get('search_turns')}); ScaNN top-3 agreement with exact search "
             f"{prep.get('scann_top3_agreement', float('nan')):.3f}", "",
             "| step | valid questions | proposer searches | solver searches | reader prompt tokens (median / max) "
             "| reader prompts cut | solver reward | step s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        step_s = sum(v for k, v in r.items() if k.startswith("time/") and v is not None)
        lines.append(f"| {r['step']} | {r['selfplay/valid_questions']:.0f}"
                     f" ({r['selfplay/valid_rate']:.0%} valid, {r['selfplay/rule_valid_rate']:.0%} pass the rules) "
                     f"| {r['proposer/searches']:.2f} | {r['solver/searches']:.2f} | "
                     f"{r.get('reader/prompt_tokens_median', 0):.0f} / {r.get('reader/prompt_tokens_max', 0):.0f} | "
                     f"{r.get('reader/cut_prompts', 0):.0f} of {r.get('reader/prompts', 0):.0f} | "
                     f"{r['solver/reward']:.2f} | {step_s:.0f} |")
    lines += ["", "Finish reasons (share of trajectories, all steps):", "",
              "| role | " + " | ".join(FINISH_REASONS) + " |", "|---|" + "---:|" * len(FINISH_REASONS)]
    for role in ROLES:
        shares = [sum(r.get(f"{role}/finish_{reason}", 0.0) for r in rows) / len(rows) for reason in FINISH_REASONS]
        lines.append(f"| {role} | " + " | ".join(f"{s:.2f}" for s in shares) + " |")
    lines += ["", *(f"- {'PASS' if ok else 'FAIL'}: {name}" for name, ok in checks(rows).items())]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--short", action="store_true", help="the CI-sized variant")
    args, overrides = parser.parse_known_args()
    seconds, command = run(args.workdir, [*(SHORT if args.short else ()), *overrides])
    rows = read_jsonl(args.workdir / METRICS_FILE)
    prep_file = args.workdir / "wiki" / "prep.json"
    prep = json.loads(prep_file.read_text()) if prep_file.is_file() else {}
    report = table(rows, prep, seconds, command)
    (args.workdir / "rehearsal.md").write_text(report + "\n")
    print(report)
    return 0 if all(checks(rows).values()) else 1


if __name__ == "__main__":
    sys.exit(main())
