"""The feature extractor: clips → C3D fc7 → ActivityNet's PCA, jit-compiled, data-parallel.

``Extractor`` runs one ``jax.jit`` program on batches of ``clip_batch`` clips, sharded on the
``data`` axis of `vreloc_jax.sharding.make_mesh` (every device of this process) with the
parameters replicated, as training shards its batches. Clips travel as uint8; the mean is
subtracted on the device. The last batch of a video is padded with zero clips, so one
program serves every video. Decoding runs in a thread beside the devices.

`build` makes one from the command-line choices that `define_flags` declares (shared by
``python -m vreloc_jax.features`` and ``python -m vreloc_jax.localize``); `settings` is
what the output records about it.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from vreloc_jax import configuration
from vreloc_jax import sharding
from vreloc_jax.data import batching
from vreloc_jax.features import c3d
from vreloc_jax.features import mean as mean_lib
from vreloc_jax.features import pca as pca_lib
from vreloc_jax.features import video
from vreloc_jax.features import weights as weights_lib

FORMAT_VERSION = 1
RANDOM = "random"
RANDOM_NOTE = "made at random from a seed: for smoke tests only, useless for results"


def define_flags() -> None:
  """The extractor's flags (``--weights``, ``--pca``, ``--mean``, ``--clip_batch``)."""
  flags.DEFINE_string(
      "weights", None, "Sports-1M C3D weights: a Keras HDF5 file (c3d-keras' "
      "sports1M_weights_tf.h5 or sports1M_weights_th.h5), or 'random[:SEED]' (smoke tests "
      "only: useless features).")
  flags.DEFINE_string(
      "pca", None, "ActivityNet's PCA_activitynet_v1-3.hdf5 (500-d features, as the benchmark's), "
      "or 'random[:SEED]' (smoke tests only). Without it: the 4096-d fc7 features.")
  flags.DEFINE_string(
      "mean", None, "C3D's Sports-1M mean clip (sport1m_train16_128_mean.binaryproto, or .npy "
      "[3, 16, 128, 171]); default: a per-channel stand-in (vreloc_jax/features/mean.py).")
  flags.DEFINE_integer("clip_batch", 16, "Clips per device step (a multiple of the device "
                       "count; larger on accelerators).")


def _random_seed(spec: str, what: str) -> int | None:
  """The seed of ``random`` / ``random:SEED``; None for a file name."""
  if spec != RANDOM and not spec.startswith(RANDOM + ":"):
    return None
  try:
    return int(spec.partition(":")[2] or 0)
  except ValueError:
    raise ValueError(f"--{what}={spec}: expected a file, 'random' or 'random:SEED'") from None


def settings_key(settings: dict[str, Any]) -> dict[str, Any]:
  """What must agree for features to be comparable (all but the software versions)."""
  return {k: v for k, v in settings.items() if k != "software"}


class Extractor:
  """C3D fc7 features of clips (and of video files), optionally reduced by a PCA.

  Attributes:
    arch: the network's widths and clip size.
    clip_batch: clips per device step.
    settings: what the features are (weights, PCA, mean, preprocessing), JSON-ready.
  """

  def __init__(self, params: dict[str, Any], pca: pca_lib.PCA | None, input_mean: np.ndarray,
               settings: dict[str, Any], clip_batch: int = 16,
               arch: c3d.Architecture = c3d.SPORTS1M):
    if jax.process_count() > 1:
      raise ValueError("feature extraction runs in a single process (all its devices); run "
                       "one process per host on its own videos")
    self.arch = arch
    self.mesh = sharding.make_mesh()
    configuration.check_batch_size(clip_batch, "--clip_batch", self.mesh.size)
    self.clip_batch = clip_batch
    self.settings = settings
    self._pca = pca
    model = c3d.C3D(arch)
    constants = {"params": params, "mean": np.asarray(input_mean, np.float32)}
    if pca is not None:
      constants["pca_mean"], constants["pca_components"] = pca.mean, pca.components
    self._constants = sharding.replicate(constants, self.mesh)
    batch = sharding.batch_sharding(self.mesh)

    def features(constants, clips):  # clips: uint8 [clip_batch, 16, 112, 112, 3]
      x = clips.astype(jnp.float32) - constants["mean"]
      out = model.apply({"params": constants["params"]}, x)  # [clip_batch, 4096]
      if "pca_components" in constants:
        out = (out - constants["pca_mean"]) @ constants["pca_components"]  # [clip_batch, dims]
      return out

    self._features = jax.jit(features, in_shardings=(sharding.replicated(self.mesh), batch),
                             out_shardings=batch)

  @property
  def feature_dim(self) -> int:
    return self.arch.fc_width if self._pca is None else self._pca.dims

  @property
  def flops_per_clip(self) -> float:
    """FLOPs of one clip: C3D's convolutions and fc layers, and the PCA's product."""
    reduction = 0 if self._pca is None else 2.0 * self.arch.fc_width * self._pca.dims
    return c3d.flops_per_clip(self.arch) + reduction

  def run_batch(self, clips: np.ndarray) -> jax.Array:
    """Dispatches one batch, uint8 [clip_batch, 16, 112, 112, 3] → [clip_batch, dim] (async)."""
    return self._features(self._constants, clips)

  def describe(self) -> str:
    """One line: the network, weights, PCA and mean."""
    s = self.settings
    w = s["weights"]
    weights = (f"random weights (seed {w['random_seed']}; smoke test only)" if "random_seed" in w
               else f"weights {w['file']} ({w['layout']}, sha256 {w['sha256'][:12]})")
    p = s["pca"]
    pca = ("no PCA" if p is None else
           f"random PCA (seed {p['random_seed']})" if "random_seed" in p else
           f"PCA {p['file']} (sha256 {p['sha256'][:12]})")
    m = s["mean"]
    mean = (f"mean {m['file']}" if "file" in m else
            "per-channel stand-in mean (not the Sports-1M mean clip)")
    return f"C3D fc7, {weights}, {pca}, {mean} → {self.feature_dim}-d"

  def __call__(self, clips: Iterable[np.ndarray],
               on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """Features of clips: uint8 [16, 112, 112, 3] each → float32 [n, feature_dim].

    Batches are dispatched ahead: the devices work on one while the next is assembled.
    """
    shape = (self.clip_batch, self.arch.frames, self.arch.crop, self.arch.crop, 3)
    out: list[np.ndarray] = []
    pending: tuple[jax.Array, int] | None = None

    def collect(result: tuple[jax.Array, int]) -> None:
      array, n = result
      out.append(np.asarray(array)[:n])
      if on_batch is not None:
        on_batch(n)

    buffer = np.zeros(shape, np.uint8)  # [clip_batch, 16, 112, 112, 3]
    n = 0
    for clip in clips:
      buffer[n] = clip
      n += 1
      if n == self.clip_batch:
        launched = (self.run_batch(buffer), n)
        if pending is not None:
          collect(pending)
        pending, buffer, n = launched, np.zeros(shape, np.uint8), 0
    if n:
      launched = (self.run_batch(buffer), n)  # Padded with zero clips.
      if pending is not None:
        collect(pending)
      pending = launched
    if pending is not None:
      collect(pending)
    return (np.concatenate(out) if out
            else np.zeros((0, self.feature_dim), np.float32)).astype(np.float32)

  def video(self, path: str, stride: int = video.CLIP_STRIDE, start: int = 0,
            end: int | None = None, on_batch: Callable[[int], None] | None = None
            ) -> tuple[np.ndarray, int]:
    """Features of the clips of a video's frames ``[start, end)``, one every ``stride`` frames.

    Returns:
      float32 [clips, feature_dim], and the number of frames decoded.

    Raises:
      ValueError: the file is unreadable (the message names it).
    """
    decoded = [0]

    def counted() -> Iterator[np.ndarray]:
      for frame in video.frames(path, start, end):
        decoded[0] += 1
        yield frame

    rows = self(batching.prefetch(video.clips(counted(), stride), size=64), on_batch)
    return rows, decoded[0]


def build(weights: str | None, pca: str | None = None, input_mean: str | None = None,
          clip_batch: int = 16) -> Extractor:
  """An extractor from the command-line choices (see `define_flags`).

  Raises:
    ValueError: no weights given, or a file that does not fit (the message says what to do).
  """
  if not weights:
    raise ValueError("pass --weights: the Sports-1M C3D weights (a Keras HDF5 file such as "
                     "sports1M_weights_tf.h5; README, 'Video files'), or --weights=random for "
                     "a smoke test")
  seed = _random_seed(weights, "weights")
  if seed is None:
    params, weights_info = weights_lib.load(weights)
  else:
    params, weights_info = weights_lib.random(seed), {"random_seed": seed, "note": RANDOM_NOTE}
  reduction, pca_info = None, None
  if pca:
    pca_seed = _random_seed(pca, "pca")
    if pca_seed is None:
      reduction, pca_info = pca_lib.load(pca)
    else:
      reduction, pca_info = pca_lib.random(pca_seed), {"random_seed": pca_seed,
                                                       "note": RANDOM_NOTE}
    pca_info["dims"] = reduction.dims
  if input_mean:
    cube, mean_info = mean_lib.load(input_mean)
  else:
    cube = np.asarray(mean_lib.FALLBACK_BGR, np.float32)
    mean_info = {"per_channel_bgr": list(mean_lib.FALLBACK_BGR),
                 "note": "a stand-in for C3D's Sports-1M mean clip (vreloc_jax/features/mean.py)"}
  import av  # pylint: disable=g-import-not-at-top  (its version is recorded)
  settings = {
      "format": "vreloc_jax.features", "version": FORMAT_VERSION,
      "network": "C3D Sports-1M, fc7 after ReLU", "weights": weights_info, "pca": pca_info,
      "mean": mean_info,
      "feature_dim": c3d.SPORTS1M.fc_width if reduction is None else reduction.dims,
      "clips": {"frames": video.CLIP_FRAMES, "row_stride_frames": video.CLIP_STRIDE,
                "frame_rate": "the video's own", "channels": "BGR",
                "resize_hw": list(video.RESIZE_HW), "resize": "bilinear (OpenCV INTER_LINEAR)",
                "crop": video.CROP, "crop_offset_hw": list(video.CROP_OFFSET)},
      "software": {"jax": jax.__version__, "av": av.__version__}}
  return Extractor(params, reduction, cube, settings, clip_batch)


def from_flags(values: flags.FlagValues) -> Extractor:
  """`build` from the flags `define_flags` declared."""
  return build(values.weights, values.pca, values.mean, values.clip_batch)
