#!/usr/bin/env bash
# N leafe_jax processes on this machine, talking through jax.distributed on localhost (CPU collectives via gloo):
# a rehearsal of a multi-host run without a cluster.
#
#   launch/local_multiprocess.sh 2 configs/sft_tiny.py /tmp/sft_mp [--config.train.num_steps=20 ...]
#
# Each process gets DEVICES_PER_PROCESS fake CPU devices (default 2) and train.distributed.mode=explicit with a
# free coordinator port. Process 0's output goes to the terminal, the others' to WORKDIR/process_<i>.log.
set -euo pipefail
if [[ $# -lt 3 ]]; then
  sed -n '2,8p' "$0" >&2
  exit 2
fi
NPROC=$1 CONFIG=$2 WORKDIR=$3
shift 3
PY=${PY:-.venv/bin/python}
PORT=${PORT:-$($PY -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')}
export JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-2}"
mkdir -p "$WORKDIR"
pids=()
for ((i = 0; i < NPROC; i++)); do
  args=(-m leafe_jax.main --config="$CONFIG" --workdir="$WORKDIR"
        --config.train.distributed.mode=explicit
        --config.train.distributed.coordinator_address="localhost:$PORT"
        --config.train.distributed.num_processes="$NPROC"
        --config.train.distributed.process_id="$i" "$@")
  if [[ $i -eq 0 ]]; then
    $PY "${args[@]}" &
  else
    $PY "${args[@]}" >"$WORKDIR/process_$i.log" 2>&1 &
  fi
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit $status
