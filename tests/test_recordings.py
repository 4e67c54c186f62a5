"""The real-recordings benchmark: format, class split, streams, determinism, cache."""

from __future__ import annotations

import collections
import filecmp
import json
import os

import numpy as np
import pytest

from vreloc_jax.data import features as features_lib
from vreloc_jax.data import pairs as pairs_lib
from vreloc_jax.data import recordings
from vreloc_jax.data import splits as splits_lib


def _entries(root: str) -> dict[str, list[splits_lib.Entry]]:
  return {s: splits_lib.load_split(splits_lib.split_path(root, s)) for s in splits_lib.SPLITS}


def test_source_as_shipped():
  instances, labels = recordings.SOURCES["japanese_vowels"].load()
  assert len(instances) == 640 and sorted(set(labels)) == [str(i) for i in range(1, 10)]
  assert {x.shape[1] for x in instances} == {12}
  assert min(len(x) for x in instances) == 7 and max(len(x) for x in instances) == 29


def test_classes_disjoint_and_counts(vowels):
  entries = _entries(vowels)
  labels = {s: {e.label for e in es} for s, es in entries.items()}
  assert [len(labels[s]) for s in splits_lib.SPLITS] == [5, 2, 2]
  assert not (labels["train"] & labels["val"] or labels["train"] & labels["test"]
              or labels["val"] & labels["test"])
  assert sum(len(es) for es in entries.values()) == 640  # One entry per utterance.
  with open(os.path.join(vowels, recordings.MANIFEST_NAME)) as f:
    manifest = json.load(f)
  assert manifest["source"] == "japanese_vowels" and "CC BY 4.0" in manifest["licence"]


def test_streams_hold_the_target_among_other_classes(vowels):
  """Every stream's target is the utterance of its label; no class twice in a stream."""
  instances, labels = recordings.SOURCES["japanese_vowels"].load()
  classes = recordings.split_classes(labels, (5, 2, 2), seed=0)
  streams = recordings.layout(labels, classes, seed=0, prefix="japanesevowels")
  by_id = {s.video_id: s for s in streams}
  class_names = sorted(set(labels.tolist()))
  store = features_lib.open_features(os.path.join(vowels, recordings.HDF5_NAME))
  mean, std = recordings._standardizer(instances, labels, classes["train"])
  for split, es in _entries(vowels).items():
    pool = set(classes["train"]) if split == "train" else set(classes["val"] + classes["test"])
    for e in es:
      stream = by_id[e.video_id]
      stream_classes = [labels[i] for i in stream.instances]
      assert len(set(stream_classes)) == len(stream_classes)  # No "odd one out".
      assert set(stream_classes) <= pool
      assert 2 <= len(stream.instances) <= 4
      target = stream.instances[stream.target]
      assert class_names[e.label] == labels[target] and labels[target] in classes[split]
      s, t = e.location[0] + e.segment[0], e.location[0] + e.segment[1]
      np.testing.assert_allclose(store.window(e.video_id, s, t), (instances[target] - mean) / std,
                                 rtol=1e-5, atol=1e-5)
      assert e.window_length == store.source.num_features(e.video_id)


def test_every_entry_gets_an_evaluation_pair(vowels):
  for split in ("val", "test"):
    entries = _entries(vowels)[split]
    assert len(pairs_lib.eval_pairs(entries)) == len(entries)


def test_standardized_on_training_classes(vowels):
  entries = _entries(vowels)["train"]
  store = features_lib.open_features(os.path.join(vowels, recordings.HDF5_NAME))
  targets = np.concatenate([store.window(e.video_id, *np.add(e.location[0], e.segment))
                            for e in entries])  # Each training utterance once.
  np.testing.assert_allclose(targets.mean(axis=0), 0.0, atol=1e-5)
  np.testing.assert_allclose(targets.std(axis=0), 1.0, atol=1e-4)


def test_deterministic_and_cached(vowels, tmp_path):
  again = str(tmp_path / "again")
  assert not recordings.build(again)["cached"]
  for name in ("train.json", "val.json", "test.json", "length.json", recordings.MANIFEST_NAME):
    assert filecmp.cmp(os.path.join(vowels, name), os.path.join(again, name), shallow=False)
  assert recordings.build(again)["cached"]
  other = str(tmp_path / "seed1")
  recordings.build(other, seed=1)
  with open(os.path.join(other, "test.json")) as f, open(os.path.join(vowels, "test.json")) as g:
    assert json.load(f) != json.load(g)
  with pytest.raises(ValueError, match="already holds something other"):
    recordings.build(other, seed=0)
  assert collections.Counter(os.listdir(tmp_path)) == collections.Counter(["again", "seed1"])


def test_bad_source(tmp_path):
  with pytest.raises(ValueError, match="unknown source 'nope'"):
    recordings.build(str(tmp_path / "x"), source="nope")
