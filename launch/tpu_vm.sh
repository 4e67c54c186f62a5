#!/usr/bin/env bash
# Data-parallel training on a Cloud TPU VM slice: the same command on every worker.
# jax.distributed.initialize() discovers the slice's workers by itself.
#
#   launch/tpu_vm.sh TPU_NAME ZONE configs/weak.py gs://bucket/runs/weak --config.data.dir=/data/anet_reloc
#
# The repository and the data must be present on every worker at the same path (the work
# directory on shared storage, e.g. a GCS bucket mounted with gcsfuse, or a shared filesystem).
set -euo pipefail
TPU=${1:?usage: launch/tpu_vm.sh TPU_NAME ZONE CONFIG WORKDIR [--config.x=y ...]}
ZONE=${2:?zone}
CONFIG=${3:?config}
WORKDIR=${4:?workdir}
shift 4
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="
  cd ~/vreloc_jax && . .venv/bin/activate &&
  TPU_WORKER_HOSTNAMES=\${TPU_WORKER_HOSTNAMES:-set} python -m vreloc_jax.main --config=$CONFIG --workdir=$WORKDIR $*"
