"""Tests of the candidate grid (vreloc_jax.comparators.candidates), its two losses, and every
comparator (CGBM, SST, the video-level baseline) in the project's harness.

Grid functions and losses are checked against brute-force loops over segments.
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from vreloc_jax.comparators import candidates
from vreloc_jax.comparators import losses

LEN_REF, K = 7, 3
LENGTHS = np.array([7, 5, 1, 0])  # the last reference has no valid step (a filler)
SEGMENTS = np.array([[2, 5], [0, 1], [0, 1], [0, 0]])


def iou(a, b):
  inter = max(0, min(a[1], b[1]) - max(a[0], b[0]))
  union = max(a[1], b[1]) - min(a[0], b[0])
  return inter / union if union > 0 else 0.0


def grid():
  """Every ``(s, k, [s, e))`` of the grid."""
  return [(s, k, (s, s + k + 1)) for s in range(LEN_REF) for k in range(K)]


def test_bounds_mask_and_iou_match_loops():
  bounds = np.asarray(candidates.candidate_bounds(LEN_REF, K))
  mask = np.asarray(candidates.candidate_mask(jnp.asarray(LENGTHS), LEN_REF, K))
  ious = np.asarray(candidates.candidate_iou(jnp.asarray(SEGMENTS), LEN_REF, K))
  assert bounds.shape == (LEN_REF, K, 2) and mask.shape == ious.shape == (4, LEN_REF, K)
  for s, k, seg in grid():
    assert tuple(bounds[s, k]) == seg
    for b in range(4):
      assert mask[b, s, k] == (seg[1] <= LENGTHS[b])
      np.testing.assert_allclose(ious[b, s, k], iou(SEGMENTS[b], seg), rtol=1e-6)


def test_best_candidate_ignores_invalid_entries_and_fillers():
  rng = np.random.default_rng(0)
  scores = rng.normal(size=(4, LEN_REF, K)).astype(np.float32)
  scores[1, 6, 2] = 100.0  # outside reference 1 (length 5): never chosen
  got = np.asarray(candidates.best_candidate(jnp.asarray(scores), jnp.asarray(LENGTHS)))
  for b in range(3):
    valid = [(scores[b, s, k], seg) for s, k, seg in grid() if seg[1] <= LENGTHS[b]]
    assert tuple(got[b]) == max(valid)[1]
  assert tuple(got[3]) == (0, 1)


def test_from_end_indexed_reindexes_every_segment():
  rng = np.random.default_rng(1)
  end_indexed = rng.normal(size=(2, LEN_REF, K)).astype(np.float32)
  got = np.asarray(candidates.from_end_indexed(jnp.asarray(end_indexed)))
  for s, k, (_, e) in grid():
    want = end_indexed[:, e - 1, k] if e <= LEN_REF else np.float32(candidates.NEG_INF)
    np.testing.assert_array_equal(got[:, s, k], want)


def _loss_inputs(seed):
  rng = np.random.default_rng(seed)
  scores = rng.normal(size=(4, LEN_REF, K)).astype(np.float32)
  mask = np.asarray(candidates.candidate_mask(jnp.asarray(LENGTHS), LEN_REF, K)).copy()
  mask[0, 4:] = False  # as in video-level training: not every start is scored
  mask[0, 2, 2] = True  # ... but the ground truth's is
  example_mask = np.array([True, True, False, True])
  return scores, mask, example_mask


def test_proposal_cross_entropy_matches_a_loop():
  scores, mask, example_mask = _loss_inputs(2)
  cells = [(b, s, k, seg) for b in range(4) for s, k, seg in grid()
           if mask[b, s, k] and example_mask[b]]
  positive = {c[:3]: iou(SEGMENTS[c[0]], c[3]) > 0.5 for c in cells}
  total = 0.0
  for b, s, k, _ in cells:
    of_length = [c for c in cells if c[2] == k]
    w1 = sum(not positive[c[:3]] for c in of_length) / len(of_length)
    x = float(scores[b, s, k])
    total += (-w1 * np.log(1 / (1 + np.exp(-x))) if positive[(b, s, k)]
              else -(1 - w1) * np.log(1 / (1 + np.exp(x))))
  got = losses.proposal_cross_entropy(jnp.asarray(scores), jnp.asarray(mask),
                                      jnp.asarray(SEGMENTS), jnp.asarray(example_mask))
  np.testing.assert_allclose(float(got), total / len(cells), rtol=1e-5)
  assert any(positive.values()) and not all(positive.values())


def test_triplet_loss_of_the_hardest_negative_matches_a_loop_and_ignores_fillers():
  scores, mask, example_mask = _loss_inputs(3)
  per_example = []
  for b in range(4):
    if not example_mask[b]:
      continue
    s0, e0 = SEGMENTS[b]
    if e0 <= s0:
      continue
    positive = scores[b, s0, e0 - s0 - 1]
    negatives = [scores[b, s, k] for s, k, seg in grid()
                 if mask[b, s, k] and iou(SEGMENTS[b], seg) < 0.5]
    if negatives:
      per_example.append(max(0.0, 0.3 + max(negatives) - positive))
  got = losses.triplet_loss(jnp.asarray(scores), jnp.asarray(mask), jnp.asarray(SEGMENTS),
                            jnp.asarray(example_mask), margin=0.3)
  np.testing.assert_allclose(float(got), np.mean(per_example), rtol=1e-5)
  # Perfect separation by more than the margin: no loss.
  separated = np.where(np.asarray(candidates.candidate_iou(jnp.asarray(SEGMENTS), LEN_REF, K))
                       >= 0.5, 0.0, -1.0).astype(np.float32)
  zero = losses.triplet_loss(jnp.asarray(separated), jnp.asarray(mask), jnp.asarray(SEGMENTS),
                             jnp.asarray(example_mask), margin=0.3)
  assert float(zero) == 0.0


@pytest.mark.parametrize("name", ["cgbm", "sst", "video_level"])
def test_comparator_trains_evaluates_and_exports_in_the_harness(name, tmp_path):
  """configs/<name>.py:quick through train_and_evaluate (the same loop as the paper's model),
  then its export evaluated like the checkpoint; what it computes is what commit e23e37d
  computed (the quick run of `tests.fingerprints`, as tests/test_inertness.py for the
  paper's model)."""
  from tests import fingerprints
  from vreloc_jax import evaluation
  from vreloc_jax import export
  from vreloc_jax import exported as exported_lib
  from vreloc_jax import models
  from vreloc_jax import train

  config = fingerprints.configure(name, "quick", str(tmp_path))
  assert config.model_name == name and config.loss.coattention_weight == 0.0
  workdir, out = tmp_path / "w", tmp_path / "export"
  results = train.train_and_evaluate(config, str(workdir))
  assert results["variant"] == name and 0.0 <= results["mAP_avg"] <= 100.0
  metrics = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  loss_name = getattr(models.FAMILIES[name], "loss_name", "loss_w")
  assert any(loss_name in m for m in metrics) and not any("loss_c" in m for m in metrics)
  # Per-step figures for models with per-step probabilities only.
  assert (workdir / "plots" / "step3").is_dir() == (name == "cgbm")
  export.export_model(str(workdir), "best", str(out), platforms=("cpu",))
  exported = evaluation.score_export(str(out), "test")
  assert exported["mAP_avg"] == results["mAP_avg"]
  # Its confidence in each prediction is in [0, 1] (localize ranks windows by it).
  model = exported_lib.load(str(out))
  rng = np.random.default_rng(0)
  predicted = model.predict(rng.normal(size=(3, 5, model.feature_dim)), [5, 2, 4],
                            rng.normal(size=(3, 20, model.feature_dim)), [20, 9, 14])
  assert predicted["score"].shape == (3,) and np.all((0 <= predicted["score"])
                                                      & (predicted["score"] <= 1))
  recorded = json.loads(fingerprints.RECORD.read_text())
  if fingerprints.environment() == recorded["environment"]:  # Else bits may differ (XLA:CPU).
    got = fingerprints.fingerprint(str(workdir), str(out), str(tmp_path))
    assert fingerprints.differences(recorded["runs"][name], got) == []


def test_comparators_refuse_weak_supervision():
  from configs import sst as sst_config_file
  from vreloc_jax import configuration

  config = sst_config_file.get_config("quick")
  config.supervision = "weak"
  with pytest.raises(ValueError, match="sst trains with full supervision"):
    configuration.validate(config)
