"""A run's benchmark: which directory (given, or generated once and cached), read and validated.

`load_benchmark(config)` gives the entries of the splits, their fixed evaluation pairs
and the features; `train_batches(config, bench)` the training stream of the
configuration's supervision. With no ``config.data.dir`` the benchmark is generated:
the real-recordings benchmark ``config.data.recordings`` when set
(`vreloc_jax.data.recordings`), else the synthetic default (`vreloc_jax.data.synthetic`),
cached under `cache_root`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from vreloc_jax import storage
from vreloc_jax.data import batching
from vreloc_jax.data import directory
from vreloc_jax.data import pairs as pairs_lib
from vreloc_jax.data import recordings
from vreloc_jax.data import splits as splits_lib
from vreloc_jax.data import synthetic
from vreloc_jax.data.features import FeatureStore, find_features, open_features

# The files whose digest every host compares after building a generated benchmark.
_DIGEST_NAMES = ("manifest", "train.json", "val.json", "test.json", "length.json")


@dataclasses.dataclass
class Benchmark:
  """A benchmark directory read and validated: entries, fixed pairs, features."""

  data_dir: str
  features_path: str
  store: FeatureStore
  entries: dict[str, list[splits_lib.Entry]]
  pairs: dict[str, list[pairs_lib.Pair]]
  pair_files: dict[str, str]

  @property
  def feature_dim(self) -> int:
    return int(self.store.feature_dim)


def cache_root() -> str:
  """Where generated benchmarks are cached: $VRELOC_CACHE (local or gs://…), else
  ~/.cache/vreloc_jax."""
  return os.environ.get("VRELOC_CACHE") or os.path.join(
      os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "vreloc_jax")


def synthetic_version(config: ml_collections.ConfigDict) -> int:
  """The synthetic generator version of a config (work directories from before the field: 3)."""
  return int(config.data.get("synthetic_version", 3))


def synthetic_dir(config: ml_collections.ConfigDict) -> str:
  """Where the synthetic default benchmark of a config is cached."""
  if config.data.synthetic_dir:
    return config.data.synthetic_dir
  return storage.join(cache_root(), f"synthetic-v{synthetic_version(config)}-seed"
                      f"{config.data.synthetic_seed}-scale{config.data.synthetic_scale:g}")


def recordings_dir(config: ml_collections.ConfigDict) -> str:
  """Where the real-recordings benchmark of a config is cached."""
  return storage.join(cache_root(), f"recordings-{config.data.recordings}-v{recordings.VERSION}"
                      f"-seed{config.data.recordings_seed}")


def resolve_data_dir(config: ml_collections.ConfigDict) -> str:
  """The benchmark directory: ``config.data.dir``, else a generated one (built once, cached).

  Several processes (hosts): with a local cache every process builds its own copy (a
  cache hit after the first run; the build is deterministic, takes seconds to a
  minute, and needs no shared file system; hosts sharing the directory are safe, a
  build is renamed into place whole); with a cache on cloud storage process 0 builds
  it and the others wait for it. Then every process checks that they all hold the
  same benchmark (a digest of its manifest and split files).

  Raises:
    ValueError: the hosts' generated benchmarks differ.
  """
  if config.data.dir:
    return config.data.dir
  if config.data.get("recordings"):
    out = recordings_dir(config)
    manifest_name = recordings.MANIFEST_NAME
    build = functools.partial(recordings.build, out, source=config.data.recordings,
                              seed=config.data.recordings_seed)
  else:
    out = synthetic_dir(config)
    manifest_name = synthetic.MANIFEST_NAME
    build = functools.partial(synthetic.generate, out, seed=config.data.synthetic_seed,
                              scale=config.data.synthetic_scale,
                              version=synthetic_version(config))
  if jax.process_index() == 0 or storage.is_local(out):
    logging.info("Generated benchmark: %s (built once, then cached).", out)
    build()  # A cache hit (same generator version and settings) is instant.
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("generated benchmark ready")
    names = [manifest_name if n == "manifest" else n for n in _DIGEST_NAMES]
    mine = np.frombuffer(directory.digest(out, names), np.uint8)
    every = np.asarray(multihost_utils.process_allgather(mine))  # [processes, 32]
    differ = [i for i in range(every.shape[0]) if not np.array_equal(every[i], every[0])]
    if differ:
      raise ValueError(f"the generated benchmark {out} differs between processes 0 and "
                       f"{differ[0]} (another project version or numpy on that host?); "
                       "give every host the same installation, or build it once on shared "
                       "storage and pass --config.data.dir")
  return out


def load_benchmark(config: ml_collections.ConfigDict,
                   split_names: tuple[str, ...] = splits_lib.SPLITS) -> Benchmark:
  """Reads the splits, the evaluation pairs and the features a run needs."""
  data_dir = resolve_data_dir(config)
  features_path = config.data.features or find_features(data_dir)
  store = open_features(features_path)
  entries, pairs, pair_files = {}, {}, {}
  for name in split_names:
    path = splits_lib.split_path(data_dir, name)
    entries[name] = splits_lib.load_split(path)
    store.preload(entries[name])
    if name != "train":
      pairs[name], pair_files[name] = pairs_lib.load_eval_pairs(
          path, entries[name], name, seed=config.data.pair_seed)
  return Benchmark(data_dir=data_dir, features_path=features_path, store=store,
                   entries=entries, pairs=pairs, pair_files=pair_files)


def train_batches(config: ml_collections.ConfigDict, bench: Benchmark) -> batching.TrainBatches:
  """The training stream: weak (no reference annotation exists) or full supervision."""
  train = bench.entries["train"]
  if config.supervision == "weak":
    queries, references = pairs_lib.weak_split(train, seed=config.seed,
                                               query_fraction=config.data.weak_query_fraction)
    sample: Callable = pairs_lib.WeakSampler(queries, references).sample
  else:
    sample = pairs_lib.FullSampler(train, crop_probability=config.data.crop_probability).sample
  return batching.TrainBatches(sample, bench.store, config.train.batch_size,
                               config.data.query_buckets, config.data.reference_buckets,
                               seed=config.seed, process_index=jax.process_index(),
                               process_count=jax.process_count())
