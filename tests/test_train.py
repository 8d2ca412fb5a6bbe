"""The training program end to end on the tiny config: finite metrics, moving parameters, resume
after SIGKILL, and start-up errors that name the bad config field."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from ssp_jax.models.hf_import import load_hf_decoder
from ssp_jax.train import Trainer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "configs"))
import tiny  # noqa: E402

# Smaller than configs/tiny.py, on one of the 8 test devices, so the runs here stay quick
# (sharded updates are checked against single-device ones in tests/test_rl_update.py).
OVERRIDES = {"selfplay.batch_size": 2, "rollout.max_response_tokens": 24, "train.steps": 3, "mesh.fsdp": 1,
             "train.eval_every": 3, "data.eval_limit": 8, "data.eval_split": "dev"}
VOLATILE = ("time/", "throughput/")  # wall-clock metrics differ between runs


def small_config(**extra):
    config = tiny.get_config()
    for key, value in {**OVERRIDES, **extra}.items():
        section, field = key.split(".")
        config[section][field] = value
    return config


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
                "solver/kl", "solver/entropy", "solver/clip_frac", "solver/grad_norm", "time/update", "time/solver_rollout",
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
    config = small_config()
    config[section][field] = value
    with pytest.raises(ValueError, match=message):
        Trainer(config, tmp_path)


def test_unknown_or_mistyped_override_is_rejected_by_name(tmp_path):
    for flag, message in (("--config.rl.lrr=1e-3", "lrr"), ("--config.rl.lr=fast", "lr")):
        result = subprocess.run([sys.executable, "-m", "ssp_jax.train", "--config", str(REPO / "configs/tiny.py"),
                                 "--workdir", str(tmp_path), flag], cwd=REPO, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode != 0 and message in result.stderr


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


def test_frozen_reader_checkpoint(uninterrupted, tmp_path):
    reader = uninterrupted[0] / "random_init"  # any HF checkpoint directory
    trainer = Trainer(small_config(**{"selfplay.reader_path": str(reader), "train.steps": 1}), tmp_path)
    assert trainer.reader_policy is not None and trainer.reader_policy.checkpoint_dir == reader
    metrics = trainer.run()
    assert math.isfinite(metrics["selfplay/rag_pass_rate"])


def test_engine_behaviour_logprobs_match_the_training_forward(tmp_path):
    """`rl.behaviour_logprobs="engine"` saves a forward only because the engine's per-token
    log-probs equal the recomputed ones on every trained token."""
    trainer = Trainer(small_config(**{"rl.behaviour_logprobs": "engine"}), tmp_path)
    game = trainer.game.play(trainer.learner.params, trainer.learner.params, trainer.answers[:2], trainer.pool,
                             np.random.default_rng(0), seed=0)
    for batch in trainer._batches(game):
        recomputed = np.asarray(trainer.learner.logprobs(trainer.learner.params, batch))
        mask = batch.loss_mask > 0
        assert mask.sum() > 0
        np.testing.assert_allclose(np.asarray(batch.old_logprobs)[mask], recomputed[mask], atol=2e-4)


def test_frozen_proposer_control_updates_the_solver_only(tmp_path):
    trainer = Trainer(small_config(**{"selfplay.proposer_mode": "frozen"}), tmp_path)
    reference = jax.tree.map(np.asarray, nnx.to_pure_dict(trainer.learner.reference_params))
    metrics = trainer.train_step()
    assert "solver/loss" in metrics and "proposer/loss" not in metrics and "selfplay/valid_rate" in metrics
    after = jax.tree.map(np.asarray, nnx.to_pure_dict(trainer.learner.reference_params))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(after)))


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


def test_oracle_control_gives_the_solver_fresh_generated_questions(tmp_path):
    from ssp_jax.data.microworld import World, WorldConfig

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
    trainer.config.data.source = "files"  # as if a real corpus were configured: no generator to ask
    with pytest.raises(ValueError, match="proposer_mode='oracle' needs config.data.source='microworld'"):
        trainer.train_step()


def test_fixed_set_control_names_the_field_when_no_question_is_valid(tmp_path, monkeypatch):
    """The random tiny policy never writes a valid question: collecting the set fails clearly."""
    import ssp_jax.train

    monkeypatch.setattr(ssp_jax.train, "FIXED_SET_ROUNDS", 2)
    trainer = Trainer(small_config(**{"selfplay.proposer_mode": "fixed", "selfplay.fixed_set_size": 4}), tmp_path)
    with pytest.raises(RuntimeError, match="made only 0 valid questions in 2 rounds.*fixed_set_size=4"):
        trainer.train_step()
