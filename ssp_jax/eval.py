"""Benchmark evaluation: `python -m ssp_jax.eval --config configs/<x>.py --checkpoint PATH
[--benchmarks nq,hotpotqa] [--out DIR]`.

The paper's protocol (SSP.md section 6): greedy decoding, at most `config.rollout.max_turns` turns,
`config.rollout.topk` passages per search, the solver prompt `config.prompts.solver`, and a fixed-seed
(`config.seed`) subsample of `--limit` questions per benchmark (all of them when fewer, e.g. Bamboogle).
Scores are EM and F1, plus "EM + judge" when `config.judge.path` names a judge model's HF checkpoint:
the paper's EM with an LLM-judge fallback (ssp_jax/selfplay/judge.py).

Multi-host (`--multihost`, as for training): every host runs the same command; retrieval is split by
process index, and only process 0 reads and writes `--out` (which need not be on a shared disk).

A benchmark is a name from `BENCHMARKS` (the TFDS `ssp_qa` builder under `--data_dir`) or a path to a
FlashRAG jsonl (named by its file stem). Questions are scored in shards of `--shard_size`; each
finished shard's per-question records go to `<out>/<benchmark>/shard_<i>.jsonl`, so a rerun (after a
preemption) reads those and evaluates only the missing shards. `<out>/results.json` and
`<out>/results.md` hold the per-benchmark table and the unweighted mean over the benchmarks run.

`--checkpoint` is an HF directory (config.json + safetensors + tokenizer.json), or a training run's
orbax directory (`<workdir>/checkpoints` for its latest step, or one step's directory): its policy
weights are loaded into the model of `config.model`, built as in training from the run's workdir.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import app, flags
from flax import nnx

from ssp_jax.agent.rollout import RolloutRunner
from ssp_jax.config import Config
from ssp_jax.data.gold import QAItem
from ssp_jax.data.qa_benchmarks import BENCHMARKS, load_benchmark
from ssp_jax.distributed import is_leader, leader_value
from ssp_jax.retrieval.base import Retriever
from ssp_jax.retrieval.sharded import ProcessShardedRetriever
from ssp_jax.selfplay.evaluate import QAResult, evaluate, load_qa_jsonl, result_record, subsample, summarize
from ssp_jax.tokenizer import get_chat_template
from ssp_jax.wiring import (
    CHECKPOINT,
    check_role_model,
    config_from_flags,
    join_cluster,
    load_eval_policy,
    load_role_models,
    make_engine,
    make_judge,
    make_retriever,
    mesh_and_rules,
    one_line_errors,
    parse_flags,
)

Solve = Callable[[list[QAItem]], list[QAResult]]

_BENCHMARKS = flags.DEFINE_list("benchmarks", list(BENCHMARKS), "benchmark names and/or FlashRAG jsonl paths")
_OUT = flags.DEFINE_string("out", None, "output dir (default: eval/<checkpoint dir name>)")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir holding the prepared ssp_qa benchmarks")
_SPLIT = flags.DEFINE_string("split", None, "benchmark split (default: test if built, else dev)")
_LIMIT = flags.DEFINE_integer("limit", 500, "questions per benchmark (fixed-seed subsample)")
_SHARD_SIZE = flags.DEFINE_integer("shard_size", 100, "questions per resumable shard")


def load_questions(spec: str, data_dir: str | None, split: str | None = None) -> tuple[str, list[QAItem]]:
    """(name, questions) of a benchmark name (TFDS `ssp_qa`) or a FlashRAG jsonl path."""
    if spec.endswith(".jsonl"):
        name, items = Path(spec).stem, load_qa_jsonl(spec)
    elif not data_dir:
        raise ValueError(f"benchmark {spec!r} needs --data_dir (the TFDS dir of the prepared ssp_qa benchmarks)")
    else:
        name, items = spec, load_benchmark(spec, data_dir, split)
    if not items:  # an empty benchmark would put NaN into the mean
        raise ValueError(f"{spec}: holds no question")
    return name, items


def run_shards(name: str, items: Sequence[QAItem], solve: Solve, out_dir: Path, shard_size: int) -> list[QAResult]:
    """Results of every item, evaluating only the shards without a records file in `out_dir/name`.
    Only process 0 reads and writes `out_dir`, so a multi-host eval needs no shared filesystem."""
    results = []
    for start in range(0, len(items), shard_size):
        shard = list(items[start:start + shard_size])
        path = out_dir / name / f"shard_{start // shard_size:05d}.jsonl"
        finished = leader_value(functools.partial(_read_shard, path, shard))
        if finished is None:
            finished = solve(shard)
            if is_leader():
                _write_atomic(path, "".join(json.dumps(result_record(r)) + "\n" for r in finished))
        results += finished
    return results


def _read_shard(path: Path, shard: Sequence[QAItem]) -> list[QAResult] | None:
    """A finished shard's results, or None when it has no records file yet."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        return None
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    if [r["question"] for r in records] != [item.question for item in shard]:
        raise ValueError(f"{path}: holds other questions than this run's shard; use a new --out")
    return [_result(r) for r in records]


def _result(record: dict[str, Any]) -> QAResult:
    """The inverse of `result_record`."""
    item = QAItem(record["question"], record["golden_answers"], record["hops"])
    return QAResult(item, record["prediction"], record["em"], record["f1"], record["searches"],
                    record["finish_reason"], record.get("judge"))


def _write_atomic(path: Path, text: str) -> None:
    """Write then rename, so a killed run never leaves a partial shard that a rerun would trust."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def results_table(results: dict[str, list[QAResult]]) -> dict[str, Any]:
    """Per-benchmark EM / F1 / judged accuracy / searches / n, and the unweighted mean EM, F1 (and
    judged accuracy, when judged) over benchmarks."""
    rows = {name: {"n": len(rs), **{k.split("/", 1)[1]: v for k, v in summarize(rs, name).items()}}
            for name, rs in results.items()}
    keys = ("em", "f1", "judge") if all("judge" in row for row in rows.values()) else ("em", "f1")
    mean = {key: float(np.mean([row[key] for row in rows.values()])) for key in keys}
    return {"benchmarks": rows, "mean": mean}


def markdown_table(table: dict[str, Any]) -> str:
    judged = "judge" in table["mean"]
    lines = ["| benchmark | n | EM | F1 |" + (" EM + judge |" if judged else "") + " searches |",
             "|---|---:|---:|---:|" + ("---:|" if judged else "") + "---:|"]
    for name, row in table["benchmarks"].items():
        judge = f" {row['judge']:.3f} |" if judged else ""
        lines.append(f"| {name} | {row['n']} | {row['em']:.3f} | {row['f1']:.3f} |{judge} {row['searches']:.2f} |")
    judge = f" {table['mean']['judge']:.3f} |" if judged else ""
    lines.append(f"| **mean** | | {table['mean']['em']:.3f} | {table['mean']['f1']:.3f} |{judge} |")
    return "\n".join(lines) + "\n"


def evaluate_benchmarks(benchmarks: dict[str, list[QAItem]], solve: Solve, out_dir: Path,
                        shard_size: int) -> dict[str, Any]:
    """Resumably score each benchmark and write results.json / results.md to `out_dir`."""
    results = {name: run_shards(name, items, solve, out_dir, shard_size) for name, items in benchmarks.items()}
    table = results_table(results)
    if is_leader():
        _write_atomic(out_dir / "results.json", json.dumps(table, indent=2) + "\n")
        _write_atomic(out_dir / "results.md", markdown_table(table))
    return table


def run_eval(config: Config, checkpoint: str | Path, benchmarks: Sequence[str], out_dir: str | Path,
             *, data_dir: str | None = None, split: str | None = None, limit: int = 500, shard_size: int = 100,
             retriever: Retriever | None = None) -> dict[str, Any]:
    """Load questions and the policy, then `evaluate_benchmarks` under the config's rollout protocol.
    `retriever` replaces `config.retrieval` (tests inject a scripted one)."""
    out_dir = Path(out_dir)
    if config.judge.path:  # before the questions, the policy and the engine are loaded
        check_role_model("judge", config.judge)
    run = {"checkpoint": str(Path(checkpoint).resolve()), "limit": limit, "seed": config.seed,
           "shard_size": shard_size, "split": split, "chat_template": config.chat_template,
           "rollout": dataclasses.asdict(config.rollout), "solver_prompt": config.prompts.solver,
           "judge": {**dataclasses.asdict(config.judge), "prompt": config.prompts.judge} if config.judge.path else {}}
    leader_value(functools.partial(_check_run, out_dir, run))
    loaded = [load_questions(spec, data_dir, split) for spec in benchmarks]
    questions = dict(loaded)
    if len(questions) != len(loaded):  # two jsonl files with one stem would share a shard dir
        raise ValueError(f"benchmark names {[name for name, _ in loaded]} repeat; rename the files")
    questions = {name: subsample(items, limit, config.seed) for name, items in questions.items()}
    engine_cfg, rollout_cfg, templates = config.engine, config.rollout, config.prompts
    mesh, rules = mesh_and_rules(config)
    policy = load_eval_policy(config, Path(checkpoint), mesh=mesh, rules=rules)
    engine = make_engine(policy, config.chat_template, engine_cfg, rollout_cfg, mesh=mesh, rules=rules)
    retriever = ProcessShardedRetriever(retriever or make_retriever(config.retrieval, config.retrieval.index))
    runner = RolloutRunner(engine, policy.tokenizer, retriever, rollout_cfg)
    chat, params = get_chat_template(config.chat_template), nnx.state(policy.model, nnx.Param)
    judges = load_role_models(config, ["judge"], mesh=mesh, rules=rules)
    judge = make_judge(config, judges["judge"], mesh=mesh, rules=rules) if judges else None

    def solve(items: list[QAItem]) -> list[QAResult]:
        results = evaluate(runner, policy.tokenizer, chat, params, items, templates, progress=True)
        return judge(results) if judge else results

    return evaluate_benchmarks(questions, solve, out_dir, shard_size)


def _check_run(out_dir: Path, run: dict[str, Any]) -> None:
    """Record what `out_dir` evaluates; refuse to resume it with another checkpoint or protocol,
    which would silently mix two runs' shards in one table."""
    path = out_dir / "run.json"
    run = json.loads(json.dumps(run))  # tuples -> lists, as read back
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        if previous != run:
            changed = sorted(k for k in run.keys() | previous.keys() if run.get(k) != previous.get(k))
            raise ValueError(f"{out_dir} holds an evaluation with other {changed}; use a new --out")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, json.dumps(run, indent=2) + "\n")


def main(argv: list[str]) -> None:
    del argv
    join_cluster()  # --multihost etc. and --config are ssp_jax.wiring's flags, shared with train
    checkpoint = Path(CHECKPOINT.value)
    out_dir = Path(_OUT.value or Path("eval") / checkpoint.resolve().name)
    with one_line_errors("ssp_jax.eval"):
        table = run_eval(config_from_flags(), checkpoint, _BENCHMARKS.value, out_dir, data_dir=_DATA_DIR.value,
                         split=_SPLIT.value, limit=_LIMIT.value, shard_size=_SHARD_SIZE.value)
    if is_leader():
        print(markdown_table(table), end="")
        print(f"written to {out_dir}/results.json and results.md")


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "checkpoint"])
    app.run(main, flags_parser=parse_flags)
