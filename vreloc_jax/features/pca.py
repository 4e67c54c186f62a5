"""ActivityNet's PCA of C3D fc7 features: 4096 → 500 dimensions.

The ActivityNet Challenge 2016 publishes ``PCA_activitynet_v1-3.hdf5`` beside the C3D
features (http://activity-net.org/challenges/2016/download.html, "C3D features"): a group
``data`` with datasets ``U``, ``S`` and ``x_mean``. The reduction is
``(x - x_mean) @ U[:, :500]`` (no whitening by ``S``), as the README of the same authors' PCA
file for THUMOS14 states (escorciav/daps, ``data/models/README.md``, "pca_c3d_fc7_thumos14.hdf5:
three datasets S, U, x_mean … x_red = np.dot(x - x_mean, U[:, :num_red_dim])").
"""

from __future__ import annotations

import dataclasses
import os

import h5py
import numpy as np

from vreloc_jax import exported
from vreloc_jax.features import weights as weights_lib

DIMS = 500  # The benchmark's feature dimension.


@dataclasses.dataclass(frozen=True)
class PCA:
  """A linear reduction ``(x - mean) @ components``.

  Attributes:
    mean: float32 [in_dim].
    components: float32 [in_dim, dims].
  """

  mean: np.ndarray
  components: np.ndarray

  @property
  def dims(self) -> int:
    return int(self.components.shape[1])


def load(path: str, in_dim: int = 4096, dims: int = DIMS) -> tuple[PCA, dict[str, str]]:
  """Reads ActivityNet's PCA file (``data/U``, ``data/x_mean``; the group may be the root).

  Returns:
    The PCA to ``dims`` dimensions and ``{"file", "sha256"}``.

  Raises:
    ValueError: the file is missing, unreadable, or not of that layout (the message says
      what was expected and found).
  """
  expected = (f"expected datasets data/U [{in_dim}, >= {dims}] and data/x_mean [{in_dim}] "
              "(ActivityNet's PCA_activitynet_v1-3.hdf5)")
  with weights_lib.open_hdf5(path, "PCA file") as f:
    group = f["data"] if isinstance(f.get("data"), h5py.Group) else f
    u, mean = group.get("U"), group.get("x_mean")
    if not isinstance(u, h5py.Dataset) or not isinstance(mean, h5py.Dataset):
      found = {name: getattr(node, "shape", "group") for name, node in group.items()}
      raise ValueError(f"PCA file {path}: {expected}; found {found}")
    if u.ndim != 2 or u.shape[0] != in_dim or u.shape[1] < dims or mean.size != in_dim:
      raise ValueError(f"PCA file {path}: U has shape {list(u.shape)} and x_mean "
                       f"{list(mean.shape)}; {expected}")
    pca = PCA(mean=np.asarray(mean, np.float32).reshape(in_dim),
              components=np.ascontiguousarray(u[:, :dims], np.float32))
  if not (np.isfinite(pca.mean).all() and np.isfinite(pca.components).all()):
    raise ValueError(f"PCA file {path} holds non-finite values")
  return pca, {"file": os.path.abspath(path), "sha256": exported.sha256_file(path)}


def random(seed: int, in_dim: int = 4096, dims: int = DIMS) -> PCA:
  """Orthonormal random components and a zero mean, of the same shapes: smoke tests only."""
  gaussian = np.random.default_rng(seed).standard_normal((in_dim, dims))
  q, _ = np.linalg.qr(gaussian)
  return PCA(mean=np.zeros(in_dim, np.float32), components=q.astype(np.float32))
