"""The command lines' failures end with one line that says what is wrong, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import pytest

from configs import weak as weak_config
from tests.test_train import REPO
from vreloc_jax import checkpoints, sharding, train


def _main(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "vreloc_jax.main", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})


@pytest.mark.parametrize("args, message", [
    (("--config=configs/weak.py:quick", "--workdir=/tmp/x", "--config.train.bogus=1"),
     "unknown config field --config.train.bogus"),
    (("--config=configs/weak.py:quick", "--workdir=/tmp/x", "--config.train.num_steps=abc"),
     "flag --config.train.num_steps=abc: invalid literal"),
    (("--config=configs/none.py", "--workdir=/tmp/x"),
     "cannot load the --config file: [Errno 2] No such file or directory: 'configs/none.py'"),
    (("--config=configs/weak.py:quick",), "Flag --workdir must have a value"),
    (("--config=configs/comparator.py", "--workdir=/tmp/x"),
     "the --config file has no get_config(): it is not a configuration"),
])
def test_bad_command_lines(args, message):
  result = _main(*args)
  assert result.returncode == 1
  assert "Traceback" not in result.stderr, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("vreloc_jax.main: error: ") and message in last, result.stderr[-2000:]


def test_a_checkpoint_of_another_feature_dimension_is_refused_by_name(tmp_path):
  config = weak_config.get_config("quick")
  mesh = sharding.make_mesh()
  saved = train.Runner(config, mesh, feature_dim=12)
  manager = checkpoints.manager(str(tmp_path))
  checkpoints.save(manager, 1, saved.init(jax.random.key(0)))
  other = train.Runner(config, mesh, feature_dim=500)
  with pytest.raises(ValueError, match=r"checkpoint of step 1 in .* does not fit the model .*"
                     r"another feature dimension"):
    checkpoints.restore(manager, "latest", other.abstract_state())
  manager.close()
