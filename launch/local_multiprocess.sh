#!/usr/bin/env bash
# Runs N JAX processes on this machine (CPU, gloo collectives) as a stand-in for N hosts:
# exercises the multi-host path (per-process batch slices, process-0-only writes).
#
#   launch/local_multiprocess.sh 2 configs/weak.py:quick /tmp/mp [--config.x=y ...]
#
# Run from the repository root with the virtual environment activated. The processes find each
# other through this project's VRELOC_COORDINATOR / VRELOC_NUM_PROCESSES / VRELOC_PROCESS_ID,
# which vreloc_jax.distributed.initialize_distributed() reads before any cluster's variables, so
# this also works inside a SLURM allocation or a pod. The coordinator port is random unless
# VRELOC_PORT is set. Ctrl-C (or SIGTERM) is passed on to every process; the script exits with
# the last non-zero status of its processes (75: stopped after a checkpoint, rerun to resume).
set -euo pipefail
usage="usage: launch/local_multiprocess.sh NUM_PROCESSES CONFIG WORKDIR [--config.x=y ...]"
N=${1:?$usage}
CONFIG=${2:?$usage}
WORKDIR=${3:?$usage}
shift 3
PORT=${VRELOC_PORT:-$((20000 + RANDOM % 20000))}
pids=()
interrupted=0
trap 'interrupted=1; kill -TERM "${pids[@]}" 2>/dev/null || true' INT TERM
for ((i = 0; i < N; i++)); do
  VRELOC_COORDINATOR="127.0.0.1:$PORT" VRELOC_NUM_PROCESSES="$N" VRELOC_PROCESS_ID="$i" \
    JAX_PLATFORMS=cpu python -m vreloc_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  while true; do  # A trapped signal cuts `wait` short: wait again for the real exit status.
    interrupted=0
    code=0
    wait "$pid" || code=$?
    if (( ! interrupted )); then break; fi
  done
  if (( code != 0 )); then status=$code; fi
done
exit "$status"
