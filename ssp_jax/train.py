"""Search Self-Play training: `python -m ssp_jax.train --config configs/<x>.py [--workdir DIR]`.

Each step plays one round of the game (selfplay/step.py), computes both roles' behaviour and
reference log-probs under the current weights before any update, then updates on the proposer
batch and then on the solver batch (SSP.md section 4). Checkpoints are saved every
`train.save_every` steps and on SIGTERM; a restart in the same workdir resumes from the latest
intact one (a damaged newer one is moved aside with a warning), or from `--resume_from=<step>`.
Config overrides: `--config.rl.lr=1e-6`; gin overrides of the registered losses / advantages:
`--gin_file=configs/sweeps/x.gin --gin_bindings='grpo.eps=1e-5'`.
Multi-host: run the same command on every host with `--multihost` (see ssp_jax/distributed.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import signal
import time
from pathlib import Path
from typing import Any

import gin
import numpy as np
from absl import app, flags
from flax import nnx
from tqdm.auto import tqdm

from ssp_jax.agent.prompts import PromptTemplates
from ssp_jax.agent.rollout import RolloutConfig, RolloutRunner
from ssp_jax.aot import check_fits
from ssp_jax.checkpoint import Checkpointer, abstract_like
from ssp_jax.config import Config, ConfigError
from ssp_jax.data.answers import answers_for_step, load_answers, with_search_turns
from ssp_jax.data.gold import QAItem
from ssp_jax.distributed import any_process, is_leader, leader_first
from ssp_jax.engine.engine import EngineConfig
from ssp_jax.metrics import MetricsWriter, read_jsonl, read_metrics
from ssp_jax.models.policy import ModelConfig, Policy, load_policy
from ssp_jax.report import summarize_run, write_summary
from ssp_jax.retrieval.index import MANIFEST
from ssp_jax.retrieval.sharded import ProcessShardedRetriever
from ssp_jax.rl.game_batches import game_batches
from ssp_jax.rl.update import Learner
from ssp_jax.selfplay.evaluate import QAResult, evaluate, load_qa_jsonl, result_record, subsample, summarize
from ssp_jax.selfplay.pool import QuestionPool
from ssp_jax.selfplay.step import SelfPlayGame
from ssp_jax.tokenizer import get_chat_template
from ssp_jax.wiring import (
    check_hf_dir,
    check_role_model,
    check_tokenizer_path,
    config_from_flags,
    config_name,
    join_cluster,
    load_role_models,
    make_engine,
    make_judge,
    make_retriever,
    mesh_and_rules,
    one_line_errors,
    parse_flags,
)
from ssp_jax.worlds.controls import OracleQuestions, fill_fixed_set
from ssp_jax.worlds.microworld import World
from ssp_jax.worlds.prepare import prepare_microworld, prepare_wiki_offline
from ssp_jax.worlds.warmstart.build import warm_start_checkpoint, wiki_warm_start_checkpoint
from ssp_jax.worlds.warmstart.demos import DemoFormat

_WORKDIR = flags.DEFINE_string("workdir", None, "checkpoints, metrics and generated data (default workdir/<config>)")
_GIN_FILES = flags.DEFINE_multi_string("gin_file", [], "gin files overriding registered functions")
_GIN_BINDINGS = flags.DEFINE_multi_string("gin_bindings", [], "gin bindings, e.g. 'grpo.eps=1e-5'")
_RESUME_FROM = flags.DEFINE_integer(
    "resume_from", None, "resume from this checkpoint step instead of the latest intact one; newer steps are moved "
    "aside to <workdir>/checkpoints/<step>.superseded. Fails if the step is missing or damaged. Use it for one "
    "restart, then drop it (kept, it would move the new steps aside again)")

WARM_START_SOURCES = "config.model.warm_start.enabled needs config.data.source='microworld' or 'wiki_offline'"
EVAL_QUESTIONS = "config.train.eval_every or eval_at_ends is set but config.data.eval_questions is empty"


def check_inputs(config: Config) -> None:
    """The files and directories a training config names exist and hold what they should; a bad
    one fails here, naming its field, before the data is built or any weight is loaded (where each
    was found until now)."""
    model, data, retrieval = config.model, config.data, config.retrieval
    if model.warm_start.enabled and not model.hf_path and data.source not in ("microworld", "wiki_offline"):
        raise ConfigError(WARM_START_SOURCES)
    evaluates = config.train.eval_every or config.train.eval_at_ends
    if evaluates and not data.eval_questions and data.source != "microworld":
        raise ConfigError(EVAL_QUESTIONS)
    if model.tokenizer_path:
        check_tokenizer_path("config.model.tokenizer_path", model.tokenizer_path)
    if model.hf_path:
        check_hf_dir("config.model.hf_path", model.hf_path, tokenizer=not model.tokenizer_path)
    for section in ("reader", "judge"):
        if getattr(config, section).path:
            check_role_model(section, getattr(config, section))
    if data.source == "files":
        if not data.answers or not Path(data.answers).is_file():
            raise ConfigError(f"config.data.answers={data.answers!r} is not a file; data.source='files' needs the "
                              "answer-list jsonl")
        if bool(retrieval.index) == bool(retrieval.url):
            raise ConfigError("config.retrieval: set exactly one of `index` (a build directory) or `url`")
        if retrieval.index and not (Path(retrieval.index) / MANIFEST).is_file():
            raise ConfigError(f"config.retrieval.index={retrieval.index!r} holds no {MANIFEST}; expected a directory "
                              "written by python -m ssp_jax.retrieval.build")
    if evaluates and data.eval_questions and not Path(data.eval_questions).is_file():
        raise ConfigError(f"config.data.eval_questions={data.eval_questions!r} is not a file; expected a QA jsonl "
                          "(question, golden_answers per line)")


class Trainer:
    """Builds everything a run needs from the config (mesh, policy, engine, retriever, game, learner)
    and runs the loop: play a round, compute log-probs, update both roles, save, evaluate, resume."""

    def __init__(self, config: Config, workdir: Path, *, resume_from: int | None = None):
        """`config`: see `ssp_jax.config.load_config`. `resume_from`: the checkpoint step `run`
        resumes from (see `Checkpointer.resume`); None, the latest intact one."""
        self.config, self.workdir, self.resume_from = config, workdir, resume_from
        self.selfplay, self.rl = config.selfplay, config.rl
        engine_cfg, rollout_cfg, templates = config.engine, config.rollout, config.prompts
        self._check_sizes()
        check_inputs(config)
        self.checkpointer = Checkpointer(workdir / "checkpoints", max_to_keep=config.train.max_to_keep)
        if resume_from is not None:  # a missing or resized file fails now; other damage when `run` restores
            self.checkpointer.check_step(resume_from)
        if config.aot_topology:  # before any weight loads: a config that cannot fit its slice stops here
            logging.info("AOT fit check:\n%s", check_fits(config, config.aot_topology).format())
        self.mesh, self.rules = mesh_and_rules(config)
        self.answers_path, self.index_dir = self._data_paths()
        self.answers = with_search_turns(load_answers(self.answers_path), config.data.search_turns)
        policy = load_policy(self._policy_config(templates), mesh=self.mesh, rules=self.rules, workdir=workdir)
        self.learner = Learner(policy.model, self.rl, mesh=self.mesh, rules=self.rules)
        tokenizer, chat = policy.tokenizer, get_chat_template(config.chat_template)
        self.engine = make_engine(policy, config.chat_template, engine_cfg, rollout_cfg, mesh=self.mesh,
                                  rules=self.rules)
        frozen = load_role_models(config, ["reader", "judge"], mesh=self.mesh, rules=self.rules)
        self.reader_policy: Policy | None = frozen.get("reader")
        # A frozen reader speaks its own chat template (default: the policy's); the policy-as-reader the policy's.
        own_template = config.reader.chat_template if self.reader_policy else ""
        self.reader_template = own_template or config.chat_template
        self.judge = (make_judge(config, frozen["judge"], mesh=self.mesh, rules=self.rules) if "judge" in frozen
                      else None)
        # Split by process index; the warm start's demo search below runs on process 0 alone, unsplit.
        retriever = ProcessShardedRetriever(make_retriever(config.retrieval, self.index_dir))
        runner = RolloutRunner(self.engine, tokenizer, retriever, rollout_cfg)
        reader = self._reader(policy, engine_cfg, rollout_cfg)
        self.game = SelfPlayGame(self.selfplay, tokenizer, chat, runner, reader, templates,
                                 reader_chat=get_chat_template(self.reader_template),
                                 judge=self.judge.verdicts if self.judge else None)

        def evaluate_params(params: nnx.State, progress: bool = False) -> list[QAResult]:
            results = evaluate(runner, tokenizer, chat, self.learner.rollout_params(params), self.eval_items,
                               templates, progress=progress)
            return self.judge(results) if self.judge else results

        self._evaluate = evaluate_params
        self.eval_items = self._eval_items() if config.train.eval_every or config.train.eval_at_ends else []
        self.pool = QuestionPool(self.selfplay.pool_clear_every)
        self._oracle: OracleQuestions | None = None
        self.metrics = MetricsWriter(workdir)
        self._resume_metrics: dict[str, float] = {}  # written with the first step after a resume
        self.step = 0
        self._stop_requested = False

    def _reader(self, policy: Policy, engine_cfg: EngineConfig, rollout_cfg: RolloutConfig) -> RolloutRunner:
        """The RAG check's tool-less runner, in the reader's own tokenizer and chat template. The
        searching reader plays the solver (the rollout's engine and budgets); the reading one has its
        own prompt budget and engine (`reader_engine`)."""
        reader_policy, template = self.reader_policy or policy, self.reader_template
        if self.selfplay.rag_reader == "search":
            engine = self.engine if self.reader_policy is None else make_engine(
                reader_policy, template, engine_cfg, rollout_cfg, mesh=self.mesh, rules=self.rules)
            return RolloutRunner(engine, reader_policy.tokenizer, None, rollout_cfg)
        reader_cfg = dataclasses.replace(rollout_cfg, max_turns=1, max_response_tokens=self.selfplay.reader_max_tokens,
                                         max_prompt_tokens=self.selfplay.reader_max_prompt_tokens)
        stops = self.engine.stops if self.reader_policy is None else None
        engine = make_engine(reader_policy, template, self.config.reader_engine, reader_cfg,
                             mesh=self.mesh, rules=self.rules, stops=stops)
        return RolloutRunner(engine, reader_policy.tokenizer, None, reader_cfg)

    def _data_paths(self) -> tuple[str, str]:
        """(answer list, index dir): from config, or the micro world generated into the workdir."""
        data = self.config.data
        if data.source == "files":
            return data.answers, self.config.retrieval.index
        if data.source == "wiki_offline":
            answers, index = leader_first(lambda: prepare_wiki_offline(self.workdir / "wiki", data.wiki_offline),
                                          "wiki data")
            return str(answers), "" if self.config.retrieval.url else str(index)
        answers, index = leader_first(lambda: prepare_microworld(self.workdir / "microworld", data.microworld,
                                                                 num_examples=self.selfplay.num_examples), "microworld")
        return str(answers), "" if self.config.retrieval.url else str(index)

    def _policy_config(self, templates: PromptTemplates) -> ModelConfig:
        """`config.model`, pointed at the built-in world's warm-start checkpoint when that is enabled."""
        model, data = self.config.model, self.config.data
        warm, sft_config = model.warm_start, model.sft
        if not warm.enabled or model.hf_path:
            return model
        fmt = DemoFormat(get_chat_template(self.config.chat_template), templates, self.config.rollout.topk,
                         self.selfplay.min_question_words)
        retriever = make_retriever(self.config.retrieval, self.index_dir)
        if data.source == "microworld":
            world = World(data.microworld)
            build = lambda: warm_start_checkpoint(  # noqa: E731
                self.workdir / "warm_start", world, retriever, model.init, warm, sft_config, fmt=fmt,
                num_examples=self.selfplay.num_examples, seed=model.seed)
        elif data.source == "wiki_offline":
            build = lambda: wiki_warm_start_checkpoint(  # noqa: E731
                self.workdir / "warm_start", data.wiki_offline, self.answers_path, retriever, model.init, warm,
                sft_config, fmt=fmt, seed=model.seed)
        else:
            raise ConfigError(WARM_START_SOURCES)
        return dataclasses.replace(model, hf_path=str(leader_first(build, "warm start")))

    def _eval_items(self) -> list[QAItem]:
        data = self.config.data
        if data.eval_questions:
            items = load_qa_jsonl(data.eval_questions)
        elif data.source == "microworld":
            world = World(data.microworld)
            items = [QAItem(q.question, q.golden_answers, q.hops) for q in world.heldout_questions(data.eval_split)]
        else:
            raise ConfigError(EVAL_QUESTIONS)
        return subsample(items, data.eval_limit, self.config.seed)

    def _check_sizes(self) -> None:
        """Inconsistent sizes fail at start-up, naming the fields, not as a shape error mid-run."""
        rows = {"proposer": self.selfplay.batch_size,
                "solver": self.selfplay.batch_size * self.selfplay.solver_samples}
        for role, mini in (("proposer", self.rl.proposer_mini_batches), ("solver", self.rl.solver_mini_batches)):
            if rows[role] % mini:
                raise ConfigError(f"config.rl.{role}_mini_batches={mini} does not divide the {rows[role]} {role} "
                                  "trajectories per step (selfplay.batch_size x solver_samples)")
        reader, budget = self.config.reader_engine, self.selfplay.reader_max_prompt_tokens
        if self.selfplay.rag_reader == "read" and (
                max(reader.prefill_buckets) < budget
                or reader.max_cache_len < budget + self.selfplay.reader_max_tokens):
            raise ConfigError(f"selfplay.reader_max_prompt_tokens={budget} (+ reader_max_tokens="
                              f"{self.selfplay.reader_max_tokens}) must fit reader_engine.prefill_buckets="
                              f"{tuple(reader.prefill_buckets)} and reader_engine.max_cache_len={reader.max_cache_len}")
        buckets = self.rl.length_buckets
        if not buckets or max(buckets) < self.config.engine.max_cache_len:
            raise ConfigError(f"config.rl.length_buckets={buckets} must reach engine.max_cache_len="
                              f"{self.config.engine.max_cache_len} (the longest trajectory)")

    # -- the loop ---------------------------------------------------------------------------------

    def resume(self) -> None:
        """Restore the latest intact checkpoint, or step `resume_from`; a damaged newer one is
        counted in the next step's metrics (`checkpoint/damaged_steps_skipped`)."""
        resumed = self.checkpointer.resume(abstract_like(self.learner.state()), self.resume_from)
        if resumed is None:
            return
        self.learner.restore(resumed.arrays)
        self.pool = QuestionPool.from_state_dict(resumed.host["pool"])
        self.step = resumed.host["step"]
        logging.info("resumed from %s at step %d", self.checkpointer.directory, self.step)
        if resumed.damaged:
            self._resume_metrics["checkpoint/damaged_steps_skipped"] = float(len(resumed.damaged))
            logging.warning("checkpoint/damaged_steps_skipped=%d: resumed at step %d, not at the damaged step(s) %s",
                            len(resumed.damaged), self.step, resumed.damaged)

    def save(self) -> None:
        self.checkpointer.save(self.step, self.learner.state(), {"step": self.step, "pool": self.pool.state_dict()})

    def run(self) -> dict[str, float]:
        self.resume()
        steps, at_ends = self.config.train.steps, self.config.train.eval_at_ends
        if at_ends and self.step == 0:
            self._held_out_eval("before")
        metrics = self._train_loop(steps)
        if at_ends and self.step == steps:
            after = self._held_out_eval("after")
            before = read_jsonl(self.workdir / "eval_before.jsonl")
            summary = summarize_run(before, after, read_metrics(self.workdir))
            if is_leader():
                write_summary(self.workdir, summary)
            metrics |= {f"heldout/em_{k}_{when}": v for when in ("before", "after")
                        for k, v in summary[f"em_{when}"].items()}
        return metrics

    def _held_out_eval(self, when: str) -> list[dict[str, Any]]:
        """Greedy EM on the eval questions, kept per question in eval_<when>.jsonl."""
        records = [result_record(r) for r in self._evaluate(self.learner.params, progress=True)]
        if is_leader():
            (self.workdir / f"eval_{when}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        logging.info("held-out EM %s SSP: %.3f", when, np.mean([r["em"] for r in records]))
        return records

    def _train_loop(self, steps: int) -> dict[str, float]:
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        metrics = {}
        bar = tqdm(total=steps, initial=self.step, desc="ssp", dynamic_ncols=True, disable=not is_leader())
        stop = False
        try:
            while self.step < steps and not stop:
                metrics = self.train_step() | self._resume_metrics
                self._resume_metrics = {}
                self.step += 1
                stop = any_process(self._stop_requested)  # every process stops after the same step
                every = self.config.train.eval_every
                if every and (self.step % every == 0 or self.step == steps):
                    metrics |= summarize(self._evaluate(self.learner.params))
                self.metrics.write(self.step, metrics)
                bar.update(1)
                bar.set_postfix({k.split("/")[-1]: f"{metrics[k]:.3g}" for k in  # the controls lack some
                                 ("selfplay/valid_rate", "selfplay/rag_pass_rate", "solver/reward", "proposer/reward")
                                 if k in metrics})
                if self.step % self.config.train.save_every == 0 or stop or self.step == steps:
                    self.save()
        finally:
            bar.close()
            signal.signal(signal.SIGTERM, previous)
            self.metrics.close()
        return metrics

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        logging.warning("SIGTERM: saving a checkpoint after the current step, then exiting")
        self._stop_requested = True

    def train_step(self) -> dict[str, float]:
        seed, mode = self.config.seed, self.selfplay.proposer_mode
        if mode == "fixed":
            fill_fixed_set(self.pool, self.game, self.learner.reference_params, self.answers,
                           size=self.selfplay.fixed_set_size, batch_size=self.selfplay.batch_size, seed=seed,
                           shuffle_seed=self.config.data.shuffle_seed)
        elif mode == "oracle":
            self.pool = QuestionPool(self.selfplay.pool_clear_every, self._oracle_questions().for_step(self.step))
        else:
            self.pool.maybe_clear(self.step)
        answers = answers_for_step(self.answers, self.step, self.selfplay.batch_size, self.config.data.shuffle_seed)
        rng = np.random.default_rng([seed, self.step])
        params = self.learner.rollout_params(self.learner.params)
        proposer_params = (params if mode == "selfplay" else
                           self.learner.rollout_params(self.learner.reference_params))
        reader_params = self.reader_params(proposer_params)
        game = self.game.play(params, reader_params, answers, self.pool, rng, seed=seed * 100_003 + self.step,
                              proposer_params=proposer_params, fixed=mode in ("fixed", "oracle"))
        start = time.perf_counter()
        proposer, solver = game_batches(game, self.learner, train_proposer=mode == "selfplay")
        timing = {"time/logprobs": time.perf_counter() - start}
        start = time.perf_counter()
        update = {} if mode != "selfplay" else {
            f"proposer/{k}": v for k, v in
            self.learner.update(proposer, mini_batches=self.rl.proposer_mini_batches,
                                loss_scale=self.rl.proposer_loss_scale).items()}
        update |= {f"solver/{k}": v for k, v in
                   self.learner.update(solver, mini_batches=self.rl.solver_mini_batches,
                                       loss_scale=self.rl.solver_loss_scale).items()}
        timing["time/update"] = time.perf_counter() - start
        rollout_s = game.metrics.get("time/proposer_rollout", 0.0) + game.metrics["time/solver_rollout"]
        generated = sum(sum(t.loss_mask) for t in game.proposer + game.solver)
        metrics = {**game.metrics, **update, **timing,
                   "throughput/rollout_tokens_per_s": generated / max(rollout_s, 1e-9)}
        bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
        if bad:
            logging.warning("step %d: non-finite metrics %s", self.step, bad)
        return metrics

    def _oracle_questions(self) -> OracleQuestions:
        if self.config.data.source != "microworld":
            raise ConfigError("config.selfplay.proposer_mode='oracle' needs config.data.source='microworld'")
        if self._oracle is None:
            self._oracle = OracleQuestions(World(self.config.data.microworld), self.selfplay.batch_size,
                                           self.config.train.steps, self.config.seed)
        return self._oracle

    def reader_params(self, policy_params: nnx.State) -> nnx.State:
        """The RAG reader's weights: the frozen `config.reader` model's, else `policy_params`."""
        return policy_params if self.reader_policy is None else nnx.state(self.reader_policy.model)


def main(argv: list[str]) -> None:
    del argv
    join_cluster()
    gin.parse_config_files_and_bindings(_GIN_FILES.value, _GIN_BINDINGS.value)
    workdir = Path(_WORKDIR.value or Path("workdir") / config_name())
    workdir.mkdir(parents=True, exist_ok=True)
    with one_line_errors("ssp_jax.train"):
        config = config_from_flags()
        trainer = Trainer(config, workdir, resume_from=_RESUME_FROM.value)
        metrics = trainer.run()
    print(f"finished at step {trainer.step} in {workdir}; last step's metrics:" if metrics else
          f"nothing to do: {workdir} is already at step {trainer.step} of {config.train.steps}")
    for key, value in sorted(metrics.items()):
        print(f"  {key:40s} {value:.4g}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
