#!/usr/bin/env bash
# Runs the same leafe_jax command on every worker of a Cloud TPU pod slice (multi-controller SPMD).
#
#   launch/tpu_pod.sh TPU_NAME ZONE configs/paper/sokoban.py:qwen2.5-7b /mnt/shared/workdir --config.stages='("train@leafe",)'
#   (every process runs the listed stages as one SPMD program: train and grpo, and explore/eval with an
#   in-process policy, sampling on the whole slice, process 0 writing; explore/eval against a served policy run
#   on CPU hosts instead, with explore.shard=i/n)
#
# Each worker runs `python -m leafe_jax.main` with train.distributed.mode=cluster: jax.distributed.initialize()
# reads the slice topology from the TPU metadata. The workdir must be a POSIX path that all workers share (a
# Filestore/NFS mount, or a bucket mounted with gcsfuse): the stages write it with plain file calls, so a gs:// URL
# is not supported. Set REPO_DIR if the checkout is not in ~/leafe_jax on the workers, PROJECT for a non-default
# gcloud project.
set -euo pipefail
if [[ $# -lt 4 ]]; then
  sed -n '2,13p' "$0" >&2
  exit 2
fi
TPU_NAME=$1 ZONE=$2 CONFIG=$3 WORKDIR=$4
shift 4
# '~/leafe_jax' quoted: the workers' home, expanded by their shell, not this machine's.
REPO_DIR=${REPO_DIR:-'~/leafe_jax'}
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
EXTRA=""
if [[ $# -gt 0 ]]; then
  EXTRA=$(printf ' %q' "$@")  # with no arguments printf would still print one empty word ('')
fi
CMD="cd $REPO_DIR && .venv/bin/python -m leafe_jax.main --config=$(printf %q "$CONFIG") \
--workdir=$(printf %q "$WORKDIR") --config.train.distributed.mode=cluster$EXTRA"
# shellcheck disable=SC2086
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=all --command="$CMD"
