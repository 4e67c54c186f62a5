"""The configurations' schedules, as the README's printed commands were measured with."""

from __future__ import annotations

import pytest

from configs import cgbm, full, weak


@pytest.mark.parametrize("module,arg,every", [
    (full, None, 100),  # synthetic default: val curves of 3 points (README)
    (full, "recordings", 25),  # real recordings: curves every 25 steps, best at 100-125
    (weak, None, 25),
    (weak, "recordings", 25),
    (full, "quick,recordings", 3),  # the tiny run's cadence, whatever the order
    (full, "recordings,quick", 3),
    (cgbm, "recordings", 100),  # comparators keep their authors' cadence
])
def test_val_cadence(module, arg, every):
  assert module.get_config(arg).train.eval_every == every


def test_windows_argument_sets_the_objective_and_its_rule():
  config = weak.get_config("windows,recordings")
  assert config.loss.coattention_form == "windows" and config.eval.inference == "windows"
  assert weak.get_config(None).loss.coattention_form == "paper"
  both = weak.get_config("recordings,windows=both")
  assert both.loss.coattention_form == "both" and both.eval.inference == "windows"
