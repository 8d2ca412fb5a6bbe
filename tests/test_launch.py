"""launch/tpu.sh builds the documented gcloud commands (run against a recording stand-in for
gcloud, since no cloud is reachable here)."""

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_launcher(tmp_path: Path, *args: str, **env: str) -> list[str]:
    log = tmp_path / "gcloud.log"
    fake = tmp_path / "bin" / "gcloud"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$*" >> {log}\n')
    fake.chmod(0o755)
    environ = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", **env}
    subprocess.run(["bash", str(REPO / "launch" / "tpu.sh"), *args], check=True, env=environ,
                   capture_output=True, text=True)
    return log.read_text().splitlines()


def test_create_and_train_on_every_worker(tmp_path):
    calls = run_launcher(tmp_path, "create", TPU_NAME="t1", TPU_TYPE="v5p-64", ZONE="z1")
    assert calls == ["compute tpus tpu-vm create t1 --zone=z1 --accelerator-type=v5p-64 --version=v2-alpha-tpuv5"]
    calls = run_launcher(tmp_path, "train", "--config.train.steps=5", TPU_NAME="t2", ZONE="z1", WORKDIR="/mnt/w")
    assert calls[-1].startswith("compute tpus tpu-vm ssh t2 --zone=z1 --worker=all --command=")
    assert calls[-1].endswith("python -m ssp_jax.train --multihost --config configs/qwen2_5_7b.py "
                              "--workdir /mnt/w --config.train.steps=5")


def test_eval_runs_on_every_worker_from_the_run_checkpoints(tmp_path):
    calls = run_launcher(tmp_path, "eval", "--benchmarks=nq,bamboogle", TPU_NAME="t4", ZONE="z1", WORKDIR="/mnt/w")
    assert calls[-1].startswith("compute tpus tpu-vm ssh t4 --zone=z1 --worker=all --command=")
    assert calls[-1].endswith("python -m ssp_jax.eval --multihost --config configs/qwen2_5_7b.py --checkpoint "
                              "/mnt/w/checkpoints --data_dir /mnt/data/tfds --out /mnt/w/eval "
                              "--benchmarks=nq,bamboogle")


def test_setup_copies_this_checkout_installs_and_syncs_data(tmp_path):
    calls = run_launcher(tmp_path, "setup", TPU_NAME="t3", ZONE="z1", GCS_DATA="gs://bucket/ssp")
    assert calls[0].startswith("compute tpus tpu-vm scp ") and \
        calls[0].endswith("t3:ssp_jax.tar.gz --zone=z1 --worker=all")
    assert "pip install -q -e . -r requirements-tpu.txt" in calls[2]
    assert "gsutil -m -q rsync -r gs://bucket/ssp /mnt/data" in calls[3]


def test_unknown_command_prints_usage(tmp_path):
    result = subprocess.run(["bash", str(REPO / "launch" / "tpu.sh"), "nope"], capture_output=True, text=True)
    assert result.returncode == 2 and "launch/tpu.sh create" in result.stdout
