"""Files anywhere: local atomic writes, and work directories and benchmarks on a stand-in gs://.

The stand-in is fsspec's in-memory file system registered for the ``gs`` and ``gcs``
protocols, which is what `etils.epath` reaches ``gs://`` through; real GCS (and orbax
checkpoints there) cannot be reached from this machine.
"""

import json
import os
import stat

from fsspec.implementations.memory import MemoryFileSystem
import fsspec
import ml_collections
import numpy as np
import pytest

from vreloc_jax import storage
from vreloc_jax import workdir as workdir_lib
from vreloc_jax.data import directory
from vreloc_jax.data import features as features_lib
from vreloc_jax.data import pairs as pairs_lib
from vreloc_jax.data import recordings
from vreloc_jax.data import splits as splits_lib


class _FakeGCS(MemoryFileSystem):
  protocol = ("gs", "gcs")
  root_marker = ""
  store: dict = {}  # Not shared with fsspec's own memory:// file system.
  pseudo_dirs = [""]


@pytest.fixture
def gcs():
  """A fresh, empty stand-in for gs://."""
  previous = {p: fsspec.registry.get(p) for p in _FakeGCS.protocol}
  for p in _FakeGCS.protocol:
    fsspec.register_implementation(p, _FakeGCS, clobber=True)
  _FakeGCS.store.clear()
  _FakeGCS.pseudo_dirs[:] = [""]
  _FakeGCS.clear_instance_cache()
  yield "gs://bucket"
  _FakeGCS.store.clear()
  for p, cls in previous.items():
    if cls is None:
      fsspec.registry.pop(p, None) if hasattr(fsspec.registry, "pop") else None
    else:
      fsspec.register_implementation(p, cls, clobber=True)


def test_local_write_is_whole_and_leaves_no_temporary_file(tmp_path):
  path = str(tmp_path / "sub" / "x.json")
  storage.write_json(path, {"a": [1, 2]})
  text = open(path).read()
  assert json.loads(text) == {"a": [1, 2]} and text.endswith("\n")
  umask = os.umask(0)
  os.umask(umask)
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask  # not mkstemp's 0o600
  storage.write_json(path, {"b": 3})  # replaces
  with pytest.raises(TypeError):
    storage.write_json(path, {"c": object()})  # fails half-way through encoding
  assert storage.read_json(path) == {"b": 3}  # the old file is intact
  assert os.listdir(tmp_path / "sub") == ["x.json"]


def test_read_json_names_a_corrupt_file(tmp_path):
  path = tmp_path / "bad.json"
  path.write_text("{not json")
  with pytest.raises(ValueError, match="bad.json is not valid JSON"):
    storage.read_json(str(path))


def test_files_on_gs(gcs):
  path = f"{gcs}/w/results/r.json"
  assert not storage.is_local(path) and storage.absolute(path) == path
  storage.write_json(path, {"x": 1})
  assert storage.read_json(path) == {"x": 1}
  storage.append_text(f"{gcs}/w/log.jsonl", "a\n")
  storage.append_text(f"{gcs}/w/log.jsonl", "b\n")
  assert storage.read_text(f"{gcs}/w/log.jsonl") == "a\nb\n"
  assert storage.list_names(f"{gcs}/w") == ["log.jsonl", "results"]
  assert storage.join(gcs, "w", "x") == "gs://bucket/w/x"
  assert not os.path.exists("gs:")  # Nothing went to a local folder named "gs:".


def test_work_directory_on_gs(gcs):
  work = f"{gcs}/runs/weak"
  config = ml_collections.ConfigDict({"seed": 0, "train": {"num_steps": 10},
                                      "data": {"dir": ""}})
  workdir_lib.save_config(config, work, f"{gcs}/data")
  loaded = workdir_lib.load_config(work)
  assert loaded.train.num_steps == 10 and loaded.data.resolved_dir == f"{gcs}/data"
  writer = workdir_lib.MetricsWriter(work)
  missing = workdir_lib.missing_event_backend(f"{work}/tensorboard")  # google-cloud-storage
  for step in (1, 2, 3):
    writer.write({"step": step, "loss": 0.5})
  # Without it no events, and tensorboardX's writer is never half-built (whose collection
  # would print an "Exception ignored" traceback).
  assert (writer._events is None) == (missing is not None)
  writer.close()
  writer.truncate_after(2)
  lines = storage.read_text(workdir_lib.metrics_file(work)).splitlines()
  assert [json.loads(line)["step"] for line in lines] == [1, 2]
  assert workdir_lib.checkpoints_dir(work) == "gs://bucket/runs/weak/checkpoints"
  assert (workdir_lib.test_results_file(work, "best", "min_loss_c")
          == "gs://bucket/runs/weak/results/test_best.json")
  with pytest.raises(ValueError, match="not a vreloc_jax work directory"):
    workdir_lib.load_config(f"{gcs}/runs/none")


def test_benchmark_read_from_gs_matches_local(gcs, vowels, tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  remote = f"{gcs}/data/vowels"
  local_names = [n for n in os.listdir(vowels) if "_pairs_" not in n]
  for name in local_names:
    storage.as_path(os.path.join(vowels, name)).copy(storage.as_path(remote) / name)
  for split in ("val", "test"):
    local_entries = splits_lib.load_split(splits_lib.split_path(vowels, split))
    entries = splits_lib.load_split(splits_lib.split_path(remote, split))
    assert entries == local_entries
    pairs, pair_file = pairs_lib.load_eval_pairs(splits_lib.split_path(remote, split), entries,
                                                 split)
    assert pair_file.startswith(str(tmp_path / "cache"))  # Not written into the data bucket.
    local_pairs, _ = pairs_lib.load_eval_pairs(splits_lib.split_path(vowels, split),
                                               local_entries, split)
    assert pairs == local_pairs
  path = features_lib.find_features(remote)
  assert path.startswith("gs://")
  remote_store = features_lib.open_features(path)
  local_store = features_lib.open_features(features_lib.find_features(vowels))
  entry = local_entries[0]
  np.testing.assert_array_equal(remote_store.window(entry.video_id, *entry.location),
                                local_store.window(entry.video_id, *entry.location))
  remote_store.close()
  with pytest.raises(ValueError, match="do not exist"):
    features_lib.open_features(f"{gcs}/data/none.hdf5")


def test_generated_benchmark_uploaded_to_gs_and_found_again(gcs, vowels):
  out = f"{gcs}/cache/vowels"
  summary = recordings.build(out)
  assert not summary["cached"]
  assert sorted(storage.list_names(out)) == sorted(
      n for n in os.listdir(vowels) if "_pairs_" not in n)
  local = directory.digest(vowels, ["train.json", "test.json", recordings.MANIFEST_NAME])
  assert directory.digest(out, ["train.json", "test.json", recordings.MANIFEST_NAME]) == local
  assert recordings.build(out)["cached"]
  # An upload cut short (no manifest yet) is redone; foreign files are never overwritten.
  storage.as_path(storage.join(out, recordings.MANIFEST_NAME)).unlink()
  storage.as_path(storage.join(out, "test.json")).unlink()
  assert not recordings.build(out)["cached"]
  assert directory.digest(out, ["train.json", "test.json", recordings.MANIFEST_NAME]) == local
  storage.write_text(f"{gcs}/cache/mine/notes.txt", "mine")
  with pytest.raises(ValueError, match="files other than"):
    recordings.build(f"{gcs}/cache/mine")
  assert storage.read_text(f"{gcs}/cache/mine/notes.txt") == "mine"


def test_abandoned_build_directories_are_removed(tmp_path):
  out = str(tmp_path / "bench")
  prefix = directory._tmp_prefix(out)
  dead = tmp_path / f"{prefix}{2**22 + 12345}-abc"  # Above Linux's default pid_max: never alive.
  live = tmp_path / f"{prefix}{os.getpid()}-def"
  other_host = tmp_path / ".bench.tmp-otherhost-1-xyz"
  for d in (dead, live, other_host):
    d.mkdir()
    (d / "half.hdf5").write_bytes(b"x")
  assert directory.remove_abandoned(out) == [str(dead)]
  assert sorted(os.listdir(tmp_path)) == sorted([live.name, other_host.name])


def test_a_build_finished_meanwhile_by_another_process_is_kept(tmp_path):
  out = str(tmp_path / "d")
  manifest = {"generator": "test", "version": 1}

  def fill(into, other=True):
    if other:  # Another process builds the same dataset while this one is still filling.
      directory.build_directory(out, manifest, "m.json", lambda d: fill(d, other=False), "it")
    with open(os.path.join(into, "data.txt"), "w") as f:
      f.write("second" if other else "first")
    return {}

  summary = directory.build_directory(out, manifest, "m.json", fill, "it")
  assert summary["cached"]
  assert open(os.path.join(out, "data.txt")).read() == "first"  # Its copy, untouched.
  assert sorted(os.listdir(tmp_path)) == ["d"]  # Ours was discarded.
