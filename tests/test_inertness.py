"""The code computes what the recorded code computed, bit for bit (`tests/fingerprints.py`).

Issue 20 restructured the project without changing a number: the configurations of every
command-line form, and for the weak, full and each comparator's quick configuration the
parameters after a few steps, the metrics, every results file and the exported model's
outputs, are those the code of commit e23e37d recorded (tests/fingerprints.json). The
comparators' runs are the ones tests/test_candidates.py trains in the harness anyway,
and are compared there. A change meant to change numbers records them again.
"""

from __future__ import annotations

import json

import pytest

from tests import fingerprints

COMPARED_ELSEWHERE = ("cgbm", "sst", "video_level")  # tests/test_candidates.py


@pytest.fixture(scope="module")
def expected() -> dict:
  return json.loads(fingerprints.RECORD.read_text())


def test_every_command_line_form_builds_the_same_configuration(expected):
  assert fingerprints.differences(expected["configs"], fingerprints.config_fingerprints()) == []


@pytest.mark.parametrize("name,config_file,arg",
                         [r for r in fingerprints.RUNS if r[0] not in COMPARED_ELSEWHERE])
def test_a_short_run_computes_the_same_numbers(expected, tmp_path, name, config_file, arg):
  here = fingerprints.environment()
  if here != expected["environment"]:
    pytest.skip(f"recorded on {expected['environment']}, this is {here}: XLA:CPU's rounding "
                "depends on both; record the old code here with tests/fingerprints.py --code")
  got = fingerprints.run_fingerprint(config_file, arg, str(tmp_path))
  assert fingerprints.differences(expected["runs"][name], got) == []
