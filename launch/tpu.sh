#!/usr/bin/env bash
# Cloud TPU launcher: create a TPU VM or pod slice, install ssp_jax on every worker, copy the run's
# data from GCS, and run the same training command on every host (one process per host; the
# trainer's --multihost calls jax.distributed.initialize(), which finds the other hosts itself).
#
#   launch/tpu.sh create                 # the slice (TPU_TYPE, e.g. v5p-64 = 8 hosts)
#   launch/tpu.sh setup                  # clone/copy the repo, pip install, gsutil the data to DATA_DIR
#   launch/tpu.sh train [--config.x=y]   # python -m ssp_jax.train --multihost on every worker
#   launch/tpu.sh eval [--benchmarks=..] # python -m ssp_jax.eval --multihost on every worker: the run's
#                                        # latest checkpoint on the TFDS benchmarks in DATA_DIR/tfds
#   launch/tpu.sh aot                    # the ahead-of-time HBM fit check, on worker 0 only
#   launch/tpu.sh delete
#
# Settings come from the environment (defaults in brackets): TPU_NAME [ssp], ZONE [us-east5-a],
# TPU_TYPE [v5p-64], TPU_VERSION [v2-alpha-tpuv5], PROJECT [gcloud's default], REPO_URL (git URL
# to clone; unset = copy this checkout with `gcloud ... scp`), GCS_DATA (gs:// prefix holding the
# checkpoint, index and answer list; copied to DATA_DIR [/mnt/data] on every host), CONFIG
# [configs/qwen2_5_7b.py], WORKDIR (shared by all hosts, e.g. a Filestore/GCS-fuse mount
# [/mnt/shared/ssp]).
set -euo pipefail

TPU_NAME=${TPU_NAME:-ssp}
ZONE=${ZONE:-us-east5-a}
TPU_TYPE=${TPU_TYPE:-v5p-64}
TPU_VERSION=${TPU_VERSION:-v2-alpha-tpuv5}
DATA_DIR=${DATA_DIR:-/mnt/data}
CONFIG=${CONFIG:-configs/qwen2_5_7b.py}
WORKDIR=${WORKDIR:-/mnt/shared/ssp}
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}

on_workers() {  # $1: worker selector (all | 0 | ...), $2: command run in ~/ssp_jax on each
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker="$1" \
    --command="cd ~/ssp_jax 2>/dev/null || true; $2"
}

case "${1:-}" in
  create)
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG \
      --accelerator-type="$TPU_TYPE" --version="$TPU_VERSION"
    ;;
  setup)
    if [ -n "${REPO_URL:-}" ]; then
      on_workers all "git clone -q $REPO_URL ~/ssp_jax || git -C ~/ssp_jax pull -q"
    else
      repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
      tarball=$(mktemp --suffix=.tar.gz)
      git -C "$repo" archive --format=tar.gz -o "$tarball" HEAD
      gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME":ssp_jax.tar.gz --zone="$ZONE" $PROJECT_FLAG --worker=all
      on_workers all "mkdir -p ~/ssp_jax && tar -xzf ~/ssp_jax.tar.gz -C ~/ssp_jax"
    fi
    on_workers all "python3 -m venv ~/venv && ~/venv/bin/pip install -q -e . -r requirements-tpu.txt"
    if [ -n "${GCS_DATA:-}" ]; then
      on_workers all "sudo mkdir -p $DATA_DIR && sudo chown \$USER $DATA_DIR && gsutil -m -q rsync -r $GCS_DATA $DATA_DIR"
    fi
    ;;
  train)
    shift
    on_workers all "~/venv/bin/python -m ssp_jax.train --multihost --config $CONFIG --workdir $WORKDIR $*"
    ;;
  eval)
    shift
    on_workers all "~/venv/bin/python -m ssp_jax.eval --multihost --config $CONFIG --checkpoint $WORKDIR/checkpoints \
--data_dir $DATA_DIR/tfds --out $WORKDIR/eval $*"
    ;;
  aot)
    on_workers 0 "JAX_PLATFORMS=cpu ~/venv/bin/python -m ssp_jax.aot --config $CONFIG --topology ${TOPOLOGY:-v5p:4x4x4}"
    ;;
  delete)
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --quiet
    ;;
  *)
    sed -n '2,19p' "$0"
    exit 2
    ;;
esac
