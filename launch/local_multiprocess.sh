#!/usr/bin/env bash
# Runs N JAX processes on this machine (CPU, gloo collectives) as a stand-in for N hosts:
# exercises the multi-host path (per-process batch slices, process-0-only writes).
#
#   launch/local_multiprocess.sh 2 configs/weak.py:quick /tmp/mp [--config.x=y ...]
set -euo pipefail
N=${1:?usage: launch/local_multiprocess.sh NUM_PROCESSES CONFIG WORKDIR [--config.x=y ...]}
CONFIG=${2:?config}
WORKDIR=${3:?workdir}
shift 3
PORT=${VRELOC_PORT:-$((20000 + RANDOM % 20000))}
pids=()
for ((i = 0; i < N; i++)); do
  VRELOC_COORDINATOR="127.0.0.1:$PORT" VRELOC_NUM_PROCESSES="$N" VRELOC_PROCESS_ID="$i" \
    JAX_PLATFORMS=cpu python -m vreloc_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
