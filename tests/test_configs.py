"""The configurations' schedules, as the README's printed commands were measured with."""

from __future__ import annotations

import pytest

from configs import cgbm, full, weak
from vreloc_jax import configuration


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
  assert weak.get_config(None).loss.coattention_form == "pseudo"
  both = weak.get_config("recordings,windows=both")
  assert both.loss.coattention_form == "both" and both.eval.inference == "windows"


def test_arguments_are_declared_by_each_config_file_and_order_never_matters():
  assert (weak.get_config("quick,recordings,base,alpha=0.5").to_dict()
          == weak.get_config("alpha=0.5,base,recordings,quick").to_dict())
  # An explicit inference rule wins over the one ``windows`` brings, in either order.
  for arg in ("windows,inference=weak", "inference=weak,windows"):
    config = weak.get_config(arg)
    assert config.loss.coattention_form == "windows" and config.eval.inference == "weak"
  with pytest.raises(ValueError, match="unknown config argument 'bogus'; expected one of base"):
    weak.get_config("bogus")
  with pytest.raises(ValueError, match="'alpha=0.5' and 'alpha=0.7' both set alpha"):
    weak.get_config("alpha=0.5,alpha=0.7")
  with pytest.raises(ValueError, match="'query_length' and 'inference=weak' both set inference"):
    full.get_config("query_length,inference=weak")
  with pytest.raises(ValueError, match=r"inference='bogus': expected one of weak, full"):
    full.get_config("inference=bogus")
  with pytest.raises(ValueError, match="config argument alpha needs a value: alpha=X"):
    weak.get_config("alpha")
  # The paper's model's arguments do not apply to a comparator.
  for arg in ("base", "query_blind", "frame_similarity", "centred", "alpha=0.5", "windows"):
    with pytest.raises(ValueError, match=f"unknown config argument '{arg}'; expected one of "
                       r"recordings\[=SOURCE\], quick"):
      cgbm.get_config(arg)


def test_pseudo_argument_sets_the_self_training_objective():
  config = weak.get_config("pseudo,recordings")
  assert config.loss.coattention_form == "pseudo" and config.eval.inference == "full"
  # An explicit inference rule wins, in either order.
  for arg in ("pseudo,inference=query_length", "query_length,pseudo"):
    assert weak.get_config(arg).eval.inference == "query_length"
  with pytest.raises(ValueError, match="'pseudo' and 'windows' both set objective"):
    weak.get_config("pseudo,windows")
  paper = weak.get_config("objective=paper")
  assert paper.loss.coattention_form == "paper" and paper.eval.inference == "query_length"
  assert full.get_config("objective=paper").eval.inference == "full"


def test_criterion_argument_sets_what_the_targets_criterion_reads():
  assert weak.get_config().loss.criterion_features == "transitions"  # weak.py's default
  assert full.get_config().loss.criterion_features == "raw"
  config = weak.get_config("criterion=raw,recordings")  # The paper's criterion.
  assert config.loss.criterion_features == "raw"
  assert config.loss.coattention_form == "pseudo" and config.eval.inference == "full"
  assert weak.get_config("criterion=transitions").to_dict() == weak.get_config().to_dict()
  with pytest.raises(ValueError, match="criterion='order': expected one of raw, transitions"):
    weak.get_config("criterion=order")


def test_centred_argument_feeds_the_mappings_the_centred_features_too():
  for get_config in (weak.get_config, full.get_config):
    assert get_config().model.centred_inputs is False  # The paper's inputs by default.
    assert get_config("centred,recordings").model.centred_inputs is True


def test_shared_offset_argument_sets_the_training_augmentation():
  assert weak.get_config().data.shared_offset == 1.0  # weak.py's default
  assert full.get_config().data.shared_offset == 0.0  # Full supervision: the paper's inputs.
  assert weak.get_config("shared_offset=0.5,recordings").data.shared_offset == 0.5
  assert weak.get_config("shared_offset=0").data.shared_offset == 0.0
  with pytest.raises(ValueError, match="shared_offset='big': not a number"):
    weak.get_config("shared_offset=big")
  for bad in (-1.0, float("nan")):
    config = weak.get_config()
    config.data.shared_offset = bad
    with pytest.raises(ValueError, match="data.shared_offset must be a finite number >= 0"):
      configuration.validate(config)


def test_baseline_rows_are_checked_before_training():
  config = weak.get_config()
  assert "whole_reference" in config.eval.baselines
  config.eval.baselines = ("random", "oracle")
  with pytest.raises(ValueError, match=r"eval.baselines: unknown method\(s\) \['oracle'\]"):
    configuration.validate(config)
