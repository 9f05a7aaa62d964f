#!/usr/bin/env bash
# Runs the same leafe_jax command on every worker of a Cloud TPU pod slice (multi-controller SPMD).
#
#   launch/tpu_pod.sh TPU_NAME ZONE configs/paper/sokoban.py:qwen2.5-7b gs://bucket/workdir --config.stages='("train@leafe",)'
#   (run the train stages here: every process runs the listed stages, and explore/eval on every worker would
#   write the same tree shard; run those on CPU hosts with explore.shard=i/n, or against a served policy)
#
# Each worker runs `python -m leafe_jax.main` with train.distributed.mode=cluster: jax.distributed.initialize()
# reads the slice topology from the TPU metadata. The workdir must be shared by all workers (a gs:// path or a
# mounted filesystem): checkpoints and the HF export are written there. Set REPO_DIR if the checkout is not in
# ~/leafe_jax on the workers, PROJECT for a non-default gcloud project.
set -euo pipefail
if [[ $# -lt 4 ]]; then
  sed -n '2,11p' "$0" >&2
  exit 2
fi
TPU_NAME=$1 ZONE=$2 CONFIG=$3 WORKDIR=$4
shift 4
REPO_DIR=${REPO_DIR:-~/leafe_jax}
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
EXTRA=$(printf ' %q' "$@")
CMD="cd $REPO_DIR && .venv/bin/python -m leafe_jax.main --config=$CONFIG --workdir=$WORKDIR \
--config.train.distributed.mode=cluster$EXTRA"
# shellcheck disable=SC2086
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=all --command="$CMD"
