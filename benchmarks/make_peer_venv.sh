#!/usr/bin/env bash
# Creates a separate virtual environment with PyTorch (CPU) for the PyTorch peer
# implementation (shared/bench/torch_peer.py) that benchmarks/bench_train_step.py
# compares this project against. torch is never a dependency of this project: it
# lives only in this venv, outside the repository.
#
# Usage (from the repository root):
#   PEER=$(bash benchmarks/make_peer_venv.sh [VENV_DIR])   # default VENV_DIR: /tmp/vreloc-peer-venv
#   python benchmarks/bench_train_step.py --peer_python="$PEER" [--json=FILE]
#
# Only the peer's python (VENV_DIR/bin/python, the value for --peer_python) goes to
# stdout; pip's output goes to stderr. Running it again on an existing venv only
# checks the install. PYTHON=python3.X picks the interpreter the venv is made from.
set -euo pipefail

VENV="${1:-/tmp/vreloc-peer-venv}"
TORCH_VERSION="2.13.0"
PYTHON="${PYTHON:-python3}"

if [[ ! -x "${VENV}/bin/python" ]]; then
  "${PYTHON}" -m venv "${VENV}"
fi
# The machine's configured indexes provide the CPU build of torch.
"${VENV}/bin/python" -m pip install --quiet "torch==${TORCH_VERSION}" numpy >&2
"${VENV}/bin/python" -c "import torch; print('torch', torch.__version__, 'threads', torch.get_num_threads())" >&2
echo "${VENV}/bin/python"
