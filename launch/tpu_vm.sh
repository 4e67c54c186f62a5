#!/usr/bin/env bash
# Data-parallel training on a Cloud TPU VM slice: the same command on every worker, one
# process per worker driving all of its TPU chips.
#
# Run from any machine with gcloud configured for the TPU's project:
#
#   launch/tpu_vm.sh TPU_NAME ZONE configs/weak.py gs://BUCKET/runs/weak \
#     --config.data.dir=gs://BUCKET/anet_reloc
#
# What it expects:
#   - on every worker, this repository at ~/vreloc_jax (or at the path, relative to the remote
#     home directory, in VRELOC_REMOTE_DIR) with its .venv holding jax[tpu];
#   - the data and WORKDIR where every worker reaches them: gs:// URIs (read and written
#     through etils.epath; install gcsfs into the .venv), or the same path on a shared
#     filesystem (Filestore, a gcsfuse mount); generated benchmarks are built by every
#     worker into its local cache (WORKSPACE.md, "Storage");
#   - bash as the workers' login shell (the default on TPU VM images): arguments are quoted
#     for it with printf %q, so paths and flags with spaces or quotes arrive unchanged.
#
# How the workers find each other: nothing is set here. On each worker,
# vreloc_jax.distributed.initialize_distributed() asks the VM's metadata server how many workers
# the slice has (where jax.distributed.initialize() itself looks on a TPU VM); with more than
# one it calls jax.distributed.initialize(), which reads the worker list and this worker's
# number from the same place. On a single-worker TPU VM it joins nothing.
#
# Preemption: this script does not restart anything. A run that stops on SIGTERM after saving
# a checkpoint exits with status 75 (PREEMPTED_EXIT_CODE in vreloc_jax/preemption.py); when the
# slice is back (Spot and preemptible TPU VMs must be recreated, e.g. by a queued resource),
# run the same command again and training resumes from the checkpoint in WORKDIR. The run
# lasts as long as this ssh session: start it from a machine that stays up (e.g. in tmux).
set -euo pipefail
usage="usage: launch/tpu_vm.sh TPU_NAME ZONE CONFIG WORKDIR [--config.x=y ...]"
TPU=${1:?$usage}
ZONE=${2:?$usage}
CONFIG=${3:?$usage}
WORKDIR=${4:?$usage}
shift 4
REMOTE_DIR=${VRELOC_REMOTE_DIR:-vreloc_jax}

# The remote command, every piece quoted for the remote shell. The ssh session starts in the
# remote home directory, so REMOTE_DIR is relative to it.
printf -v remote 'cd %q && . .venv/bin/activate && exec python -m vreloc_jax.main' "$REMOTE_DIR"
printf -v args ' %q' "--config=$CONFIG" "--workdir=$WORKDIR" "$@"
remote+=$args

exec gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="$remote"
