"""The training program end to end on the tiny config: finite metrics, moving parameters, resume
after SIGKILL, and start-up errors that name the bad config field."""

import dataclasses
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from ssp_jax.checkpoint import CheckpointError
from ssp_jax.config import ConfigError, load_config
from ssp_jax.models.hf_import import load_hf_decoder
from ssp_jax.rl.game_batches import game_batches
from ssp_jax.train import Trainer

REPO = Path(__file__).resolve().parents[1]
ASSET = REPO / "tests" / "assets" / "tiny_searcher"  # an HF checkpoint with its tokenizer
sys.path.insert(0, str(REPO / "configs"))
import tiny  # noqa: E402

# Smaller than configs/tiny.py, on one of the 8 test devices, so the runs here stay quick
# (sharded updates are checked against single-device ones in tests/test_rl_update.py).
OVERRIDES = {"selfplay.batch_size": 2, "rollout.max_response_tokens": 24, "train.steps": 3, "mesh.fsdp": 1,
             "train.eval_every": 3, "data.eval_limit": 8, "data.eval_split": "dev"}
VOLATILE = ("time/", "throughput/")  # wall-clock metrics differ between runs


def raw_config(**extra):
    """configs/tiny.py's ConfigDict with OVERRIDES and `extra` ("section.field": value) applied."""
    config = tiny.get_config()
    for key, value in {**OVERRIDES, **extra}.items():
        section, field = key.split(".")
        config[section][field] = value
    return config


def small_config(**extra):
    return load_config(raw_config(**extra))


def stable(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith(VOLATILE)}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    trainer = Trainer(small_config(), workdir)
    initial = jax.tree.map(np.asarray, nnx.to_pure_dict(trainer.learner.params))
    last = trainer.run()
    return workdir, trainer, initial, last


def test_steps_run_with_finite_metrics_and_moving_parameters(uninterrupted):
    workdir, trainer, initial, last = uninterrupted
    records = read_jsonl(workdir / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    for record in records:
        assert all(value is not None and math.isfinite(value) for value in record.values()), record
    for key in ("selfplay/valid_rate", "selfplay/rag_pass_rate", "solver/reward", "proposer/reward",
                "solver/kl", "solver/entropy", "solver/clip_frac", "solver/grad_norm", "time/update",
                "time/solver_rollout",
                "eval/em", "eval/f1", "eval/em_3hop"):
        assert key in last
    turns = {a.search_turns for a in trainer.answers}
    per_turns = {k for k in last if k.startswith("selfplay/valid_rate_")}  # the turns of the last step's answers
    assert per_turns and per_turns <= {f"selfplay/valid_rate_{t}turns" for t in turns}
    final = jax.tree.map(np.asarray, nnx.to_pure_dict(trainer.learner.params))
    moved = [float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(initial), jax.tree.leaves(final))]
    assert min(moved) > 0.0
    assert trainer.checkpointer.latest_step() == 3
    # The exported initial checkpoint is untouched: training never writes into its source.
    reloaded, _ = load_hf_decoder(workdir / "random_init")
    np.testing.assert_array_equal(np.asarray(reloaded.embed[...]), initial["embed"])


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_uninterrupted_run(uninterrupted, tmp_path):
    reference = read_jsonl(uninterrupted[0] / "metrics.jsonl")
    command = [sys.executable, "-m", "ssp_jax.train", "--config", str(REPO / "configs/tiny.py"),
               "--workdir", str(tmp_path)] + [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    while not (tmp_path / "checkpoints" / "2" / "commit_success.txt").exists():
        assert process.poll() is None and time.time() < deadline, process.stderr.read()[-3000:]
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "checkpoints" / "3").exists()  # killed mid-run
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in resumed][-1] == 3
    assert stable(resumed[-1]) == pytest.approx(stable(reference[-1]), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("section,field,value,message", [
    ("rl", "solver_mini_batches", 3, r"config\.rl\.solver_mini_batches=3 does not divide"),
    ("rl", "eps_low", -0.5, r"config\.rl: RLConfig\.eps_low"),
    ("engine", "prefill_buckets", (4096, 64), r"config\.engine: EngineConfig\.prefill_buckets"),
    ("selfplay", "proposer_reward", "nope", r"proposer reward shape|config\.selfplay"),
    ("selfplay", "rag_reader", "judge", r"selfplay\.rag_reader='judge'; expected one of \('read', 'search'\)"),
    ("selfplay", "proposer_temperature", -0.5, r"selfplay\.proposer_temperature must be >= 0"),
])
def test_bad_config_fails_at_startup_naming_the_field(tmp_path, section, field, value, message):
    config = raw_config()
    config[section][field] = value
    with pytest.raises(ValueError, match=message):
        Trainer(load_config(config), tmp_path)


@pytest.mark.slow
def test_unknown_or_mistyped_override_is_rejected_by_name(tmp_path):
    for flag, message in (("--config.rl.lrr=1e-3", "ssp_jax.train: error: --config.rl.lrr: config.rl has no field "
                                                    "'lrr'; did you mean lr?"),
                          ("--config.rl.nonexistent=1", "config.rl has no field 'nonexistent' (fields: adam_b1,"),
                          ("--config.rl.lr=fast", "lr")):
        result = subprocess.run([sys.executable, "-m", "ssp_jax.train", "--config", str(REPO / "configs/tiny.py"),
                                 "--workdir", str(tmp_path), flag], cwd=REPO, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode != 0 and message in result.stderr


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(tmp_path):
    command = [sys.executable, "-m", "ssp_jax.train", "--config", str(REPO / "configs/tiny.py"),
               "--workdir", str(tmp_path)] + [f"--config.{k}={v}" for k, v in {**OVERRIDES, "train.steps": 50,
                                                                                "train.save_every": 100}.items()]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while not (tmp_path / "metrics.jsonl").exists():  # the first step is done
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    steps = [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")]
    assert (tmp_path / "checkpoints" / str(steps[-1]) / "commit_success.txt").exists()  # saved on SIGTERM
    assert steps[-1] < 50 and f"finished at step {steps[-1]}" in stdout


@pytest.mark.slow
def test_frozen_reader_checkpoint(uninterrupted, tmp_path):
    reader = uninterrupted[0] / "random_init"  # any HF checkpoint directory
    trainer = Trainer(small_config(**{"reader.path": str(reader), "train.steps": 1}), tmp_path)
    assert trainer.reader_policy is not None and trainer.reader_policy.checkpoint_dir == reader
    metrics = trainer.run()
    assert math.isfinite(metrics["selfplay/rag_pass_rate"])


@pytest.mark.slow
def test_engine_behaviour_logprobs_match_the_training_forward(tmp_path):
    """`rl.behaviour_logprobs="engine"` saves a forward only because the engine's per-token
    log-probs equal the recomputed ones on every trained token."""
    trainer = Trainer(small_config(**{"rl.behaviour_logprobs": "engine"}), tmp_path)
    game = trainer.game.play(trainer.learner.params, trainer.learner.params, trainer.answers[:2], trainer.pool,
                             np.random.default_rng(0), seed=0)
    for batch in game_batches(game, trainer.learner, train_proposer=True):
        recomputed = np.asarray(trainer.learner.logprobs(trainer.learner.params, batch))
        mask = batch.loss_mask > 0
        assert mask.sum() > 0
        np.testing.assert_allclose(np.asarray(batch.old_logprobs)[mask], recomputed[mask], atol=2e-4)


@pytest.mark.slow
def test_frozen_proposer_control_updates_the_solver_only(tmp_path):
    trainer = Trainer(small_config(**{"selfplay.proposer_mode": "frozen"}), tmp_path)
    reference = jax.tree.map(np.asarray, nnx.to_pure_dict(trainer.learner.reference_params))
    metrics = trainer.train_step()
    assert "solver/loss" in metrics and "proposer/loss" not in metrics and "selfplay/valid_rate" in metrics
    after = jax.tree.map(np.asarray, nnx.to_pure_dict(trainer.learner.reference_params))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(after)))


@pytest.mark.slow
def test_fixed_set_control_draws_every_question_from_the_set(tmp_path):
    from ssp_jax.selfplay.pool import PoolQuestion

    trainer = Trainer(small_config(**{"selfplay.proposer_mode": "fixed", "selfplay.fixed_set_size": 2}), tmp_path)
    fixed = [PoolQuestion("Which city is the capital of Gilvel in the micro world?", "Rokgru"),
             PoolQuestion("In which country does the river Orvzinvor rise in the micro world?", "Jortov")]
    trainer.pool.add(fixed)  # as if the frozen proposer had made them before the first step
    metrics = trainer.run()  # the whole loop (progress bar, metrics file, checkpoint), not just a step
    assert trainer.step == 3 and "eval/em" in metrics
    assert "proposer/loss" not in metrics and "selfplay/valid_rate" not in metrics and "solver/loss" in metrics
    assert trainer.pool.state_dict()["records"] == [{"question": q.question, "gold": list(q.gold)} for q in fixed]


@pytest.mark.slow
def test_oracle_control_gives_the_solver_fresh_generated_questions(tmp_path):
    from ssp_jax.worlds.microworld import World, WorldConfig

    trainer = Trainer(small_config(**{"selfplay.proposer_mode": "oracle"}), tmp_path)
    metrics = trainer.train_step()
    assert "solver/loss" in metrics and "proposer/loss" not in metrics and "selfplay/valid_rate" not in metrics
    assert metrics["selfplay/dummy_groups"] == 0  # every group is a real question
    first = [r["question"] for r in trainer.pool.state_dict()["records"]]
    heldout = {q.question for split in ("dev", "test") for q in World(WorldConfig()).heldout_questions(split)}
    assert len(first) == len(set(first)) == trainer.selfplay.batch_size and not heldout & set(first)
    trainer.step += 1
    trainer.train_step()
    assert not set(first) & {r["question"] for r in trainer.pool.state_dict()["records"]}  # fresh every step


def test_oracle_control_needs_the_micro_world(tmp_path):
    trainer = Trainer(small_config(**{"selfplay.proposer_mode": "oracle"}), tmp_path)
    # As if a real corpus were configured: no generator to ask.
    trainer.config = dataclasses.replace(trainer.config, data=dataclasses.replace(trainer.config.data, source="files"))
    with pytest.raises(ValueError, match="proposer_mode='oracle' needs config.data.source='microworld'"):
        trainer.train_step()


@pytest.mark.slow
def test_fixed_set_control_names_the_field_when_no_question_is_valid(tmp_path, monkeypatch):
    """The random tiny policy never writes a valid question: collecting the set fails clearly."""
    import ssp_jax.worlds.controls

    monkeypatch.setattr(ssp_jax.worlds.controls, "FIXED_SET_ROUNDS", 2)
    trainer = Trainer(small_config(**{"selfplay.proposer_mode": "fixed", "selfplay.fixed_set_size": 4}), tmp_path)
    with pytest.raises(RuntimeError, match="made only 0 valid questions in 2 rounds.*fixed_set_size=4"):
        trainer.train_step()


LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ")  # absl's log prefix


def error_lines(stderr: str) -> list[str]:
    """What the program printed to stderr besides log records (and tqdm's bar)."""
    return [line for line in stderr.splitlines() if line.strip() and not LOG_LINE.match(line)
            and not line.startswith("ssp:")]


def train_command(workdir: Path, *extra: str) -> list[str]:
    return ([sys.executable, "-m", "ssp_jax.train", "--config", str(REPO / "configs/tiny.py"),
             "--workdir", str(workdir)] + [f"--config.{k}={v}" for k, v in OVERRIDES.items()] + list(extra))


@pytest.mark.slow
def test_damaged_latest_checkpoint_falls_back_and_explicit_steps_fail_in_one_line(uninterrupted, tmp_path):
    """The latest checkpoint (step 3) loses the tail of a data file: asked for explicitly it fails in
    one line naming the step; by default the run resumes from step 2 with a warning, counts the
    damaged step, and trains step 3 again as the uninterrupted run did; `resume_from=2` works too."""
    reference = read_jsonl(uninterrupted[0] / "metrics.jsonl")
    shutil.copytree(uninterrupted[0], tmp_path, dirs_exist_ok=True)
    checkpoints = tmp_path / "checkpoints"
    data = [p for p in (checkpoints / "3" / "arrays").rglob("*") if p.is_file() and p.parent.name == "d"]
    largest = max(data, key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes()[:1000])

    failed = subprocess.run(train_command(tmp_path, "--resume_from=3"), cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr[-3000:]
    [line] = error_lines(failed.stderr)  # one line, naming the step, the file and the steps there are
    assert line.startswith(f"ssp_jax.train: error: checkpoint step 3 in {checkpoints}/3 is damaged: file "
                           f"{largest.relative_to(checkpoints / '3')} has 1000 bytes, ")
    assert line.endswith("were saved; steps there: 1, 2, 3")
    assert not (tmp_path / "checkpoints" / "3.damaged").exists()  # an explicit step never falls back

    resumed = subprocess.run(train_command(tmp_path), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "RESUMING FROM AN EARLIER CHECKPOINT: step 2" in resumed.stderr
    assert f"checkpoint step 3 in {checkpoints}/3 is damaged: file " in resumed.stderr
    assert (checkpoints / "3.damaged").is_dir() and (checkpoints / "3" / "commit_success.txt").is_file()
    last = read_jsonl(tmp_path / "metrics.jsonl")[-1]
    assert last["step"] == 3 and last.pop("checkpoint/damaged_steps_skipped") == 1.0
    assert stable(last) == pytest.approx(stable(reference[-1]), rel=1e-5, abs=1e-6)

    trainer = Trainer(small_config(), tmp_path, resume_from=2)
    metrics = trainer.run()
    assert trainer.step == 3 and (checkpoints / "3.superseded").is_dir()
    assert "checkpoint/damaged_steps_skipped" not in metrics
    assert stable(read_jsonl(tmp_path / "metrics.jsonl")[-1]) == pytest.approx(stable(reference[-1]), rel=1e-5,
                                                                               abs=1e-6)


EXPENSIVE = ("check_fits", "prepare_microworld", "prepare_wiki_offline", "load_answers", "load_policy",
             "load_role_models", "warm_start_checkpoint", "wiki_warm_start_checkpoint")


@pytest.fixture
def no_expensive_work(monkeypatch):
    """Each step that builds data or loads weights fails the test if it is reached."""
    import ssp_jax.train

    def reached(name):
        def fail(*args, **kwargs):
            raise AssertionError(f"{name} ran before the bad config value was reported")
        return fail

    for name in EXPENSIVE:
        monkeypatch.setattr(ssp_jax.train, name, reached(name))


HF_EXPECTED = ("expected a Hugging Face model directory holding config.json, model.safetensors "
               "(or model.safetensors.index.json and its shards), tokenizer.json")


@pytest.mark.parametrize("overrides,message", [
    ({"model.hf_path": "{tmp}/missing"}, "config.model.hf_path='{tmp}/missing' is not a directory; " + HF_EXPECTED),
    ({"model.hf_path": "{tmp}"}, "config.model.hf_path='{tmp}' lacks config.json, model.safetensors (or "
     "model.safetensors.index.json), tokenizer.json (or set config.model.tokenizer_path); " + HF_EXPECTED),
    ({"model.tokenizer_path": "{tmp}/missing"},
     "config.model.tokenizer_path='{tmp}/missing' is neither a tokenizer.json file nor a directory holding one"),
    ({"reader.path": "{tmp}/missing"}, "config.reader.path='{tmp}/missing' is not a directory; " + HF_EXPECTED),
    ({"judge.path": "{tmp}", "judge.tokenizer_path": "{tmp}/missing"}, "config.judge.path='{tmp}' lacks config.json, "
     "model.safetensors (or model.safetensors.index.json); expected a Hugging Face model directory holding "
     "config.json, model.safetensors (or model.safetensors.index.json and its shards)"),
    ({"judge.path": "{asset}", "judge.tokenizer_path": "{tmp}/missing"},
     "config.judge.tokenizer_path='{tmp}/missing' is neither a tokenizer.json file nor a directory holding one"),
    ({"reader.path": "{asset}", "reader.chat_template": "{tmp}/missing.jinja"},
     "config.reader.chat_template: chat template '{tmp}/missing.jinja' is not a file (a .jinja name is read as a "
     "Jinja chat template); or name one of ['chatml', 'llama3']"),
    ({"data.source": "files", "data.answers": "{tmp}/missing.jsonl", "retrieval.index": "{tmp}", "train.eval_every": 0},
     "config.data.answers='{tmp}/missing.jsonl' is not a file; data.source='files' needs the answer-list jsonl"),
    ({"data.source": "files", "data.answers": "{tmp}/answers.jsonl", "retrieval.index": "{tmp}", "train.eval_every": 0},
     "config.retrieval.index='{tmp}' holds no retriever.json; expected a directory written by "
     "python -m ssp_jax.retrieval.build"),
    ({"data.eval_questions": "{tmp}/missing.jsonl"},
     "config.data.eval_questions='{tmp}/missing.jsonl' is not a file; expected a QA jsonl (question, golden_answers "
     "per line)"),
], ids=["hf_path_missing", "hf_path_incomplete", "tokenizer_path", "reader_path", "judge_path", "judge_tokenizer",
        "reader_template",
        "answers", "retrieval_index", "eval_questions"])
def test_bad_paths_fail_before_any_data_is_built_or_weight_loaded(tmp_path, no_expensive_work, overrides, message):
    (tmp_path / "answers.jsonl").write_text("")
    config = raw_config()
    for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value.format(tmp=tmp_path, asset=ASSET) if isinstance(value, str) else value
    with pytest.raises(ConfigError) as error:
        Trainer(load_config(config), tmp_path / "run")
    assert str(error.value) == message.format(tmp=tmp_path)


def test_missing_resume_from_step_fails_before_any_data_is_built(tmp_path, no_expensive_work):
    with pytest.raises(CheckpointError, match=r"checkpoint step 4 not found in .*/checkpoints; steps there: none$"):
        Trainer(small_config(), tmp_path, resume_from=4)


@pytest.mark.slow
def test_bad_hf_path_stops_the_cli_in_one_line_before_the_micro_world(tmp_path):
    missing = tmp_path / "missing"
    result = subprocess.run(train_command(tmp_path / "run", f"--config.model.hf_path={missing}"), cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert error_lines(result.stderr) == [
        f"ssp_jax.train: error: config.model.hf_path='{missing}' is not a directory; {HF_EXPECTED}"]
    assert (tmp_path / "run").is_dir() and not (tmp_path / "run" / "microworld").exists()  # nothing was built
