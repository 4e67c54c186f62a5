"""Learning still works: a small model trained for a minute or two.

The model is the paper's, shrunk by the configs' own ``quick`` argument; the data
is the real-recordings benchmark (`vreloc_jax.data.recordings`, Japanese Vowels:
126 test pairs of speakers never seen in training). A change that breaks the
model, a loss, the optimizer or the data path makes it fall to the level of the
training-free statistical prior, which it otherwise beats by far.

Margins measured before they were set (100 steps, batch 32, this exact setup),
test mAP_avg, statistical prior 13.5, frame-level 61.6:
  full supervision, seeds 0-3: 56.3, 49.8, 51.7, 47.8 (min 47.8 = prior + 34.3);
  weak supervision (its default: self-training on the criterion over the features and
  their transitions, start/end rule, shared offsets), seeds 0-3: 49.0, 21.9, 50.6, 36.3
  (min 21.9 = prior + 8.4; without shared offsets 41.3, 43.7, 47.5, 49.5: at this size
  the offsets make it erratic, at full size they raise it by 12 points).
The test asks for prior + MARGIN with MARGIN well under the smallest of them.

The second real benchmark, the shoulder exercises (120 test pairs; prior 5.5, frame-level
3.0), with full supervision over 300 steps (its classes take longer to learn), seeds 0-3:
40.8, 34.0, 33.7, 34.2 (min = prior + 28.2). Weak supervision is not tested there: at this
size it stayed at 0.0-0.5 (100 steps, seeds 0-3, without shared offsets); it needs the full
size (docs/results.md: 14.6 ± 1.1).

And the weak objective's positive control (`vreloc_jax.data.synthetic.POSITIVE_CONTROL`
at a tenth of its size, 98 test pairs; statistical prior 5.9, frame-level 0.4, the
criterion's own search 22.7): self-training on the paper's criterion
(``configs/weak.py:pseudo,criterion=raw``) learns there, the paper's objective does not.
Measured before the margin was set (200 steps, batch 32), seeds 0-3: with the query-length
rule 18.2, 13.7, 15.5, 11.8 (min = prior + 5.9). Without shared offsets: 16.9, 16.5, 12.9,
12.0; with its own start/end rule 2.2, 26.7, 22.7, 16.1 (too erratic for a test at this
size); the paper's objective (query-length rule, 100 steps), seeds 0-1: 2.2, 2.0; with the
default criterion (over the transitions too), query-length rule: 9.6, 15.7, 16.3, 13.7 (min =
prior + 3.7, too close to the margin; the default is tested on Japanese Vowels above).
"""

from __future__ import annotations

import json
import os

import pytest

from configs import full as full_config
from configs import weak as weak_config
from vreloc_jax import train
from vreloc_jax.data import recordings
from vreloc_jax.data import synthetic

STEPS = 100
MARGIN = {"full": 20.0, "weak": 5.0}  # Points of mAP_avg over the statistical prior.
SHOULDER_STEPS = 300
CONTROL_STEPS = 200
CONTROL_MARGIN = 3.0  # Points of mAP_avg over the statistical prior on the control.


def _shrink(config, steps: int):
  """The configuration of a short CI run (one learning rate, one evaluation)."""
  config.train.batch_size = 32
  config.train.num_steps = steps
  config.train.decay_every = 10 * steps  # One learning rate for so short a run.
  config.train.eval_every = steps
  config.train.log_every = steps
  config.train.checkpoint_every = steps
  config.loss.mask_after_steps = steps // 2
  config.eval.batch_size = 128
  # XLA's own level, as the margins were measured (here steps cost more than compiling),
  # which this test session otherwise sets to 0 (conftest.py).
  config.compile.cpu_optimization_level = 3
  return config


def _prior(workdir: str) -> float:
  with open(os.path.join(workdir, "results", "baselines_test.json")) as f:
    return json.load(f)["stat_prior"]["mAP_avg"]


@pytest.mark.parametrize("supervision", ["full", "weak"])
def test_small_model_beats_the_prior_on_real_recordings(vowels, tmp_path, supervision):
  config = {"full": full_config, "weak": weak_config}[supervision].get_config("quick,recordings")
  config.data.dir = vowels
  config.data.reference_buckets = (128,)  # Streams are at most 116 steps: one program.
  workdir = str(tmp_path / supervision)
  results = train.train_and_evaluate(_shrink(config, STEPS), workdir)
  prior = _prior(workdir)
  assert results["mAP_avg"] >= prior + MARGIN[supervision], (results["mAP_avg"], prior)


def test_full_supervision_learns_the_shoulder_exercises(tmp_path):
  data = str(tmp_path / "sx")
  recordings.build(data, source="shoulder_exercises")  # under 1 s
  config = full_config.get_config("quick,recordings=shoulder_exercises")
  config.data.dir = data
  config.data.reference_buckets = (128,)  # Windows are at most 119 steps: one program.
  workdir = str(tmp_path / "run")
  results = train.train_and_evaluate(_shrink(config, SHOULDER_STEPS), workdir)
  prior = _prior(workdir)
  assert results["mAP_avg"] >= prior + MARGIN["full"], (results["mAP_avg"], prior)


def test_self_training_learns_the_positive_control(tmp_path):
  data = str(tmp_path / "control")
  synthetic.generate(data, scale=0.1, params=synthetic.POSITIVE_CONTROL)  # 3 s, 143 MB
  config = weak_config.get_config("quick,pseudo,query_length,criterion=raw")
  config.data.dir = data
  workdir = str(tmp_path / "run")
  results = train.train_and_evaluate(_shrink(config, CONTROL_STEPS), workdir)
  prior = _prior(workdir)
  assert results["mAP_avg"] >= prior + CONTROL_MARGIN, (results["mAP_avg"], prior)
