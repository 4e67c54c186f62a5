"""The feature model: a video's 500-d features from its layout (see the package docstring).

Per feature step t: ``x_t = Q_c c_t + Q_a a_t + Q_b (scene + drift_t) + noise_t``,
with ``Q_c`` / ``Q_a`` / ``Q_b`` orthonormal bases of the class, appearance and
background subspaces (one random rotation per seed). `FeatureParams` is the
benchmark's model; `ControlParams` the weak objective's positive control.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from vreloc_jax.data.synthetic import layout
from vreloc_jax.data.synthetic.layout import Piece

FEATURE_DIM = 500


@dataclasses.dataclass(frozen=True)
class _CommonParams(layout.LayoutParams):
  """The settings both feature models have (subspaces, background, noise, timing)."""

  class_dim: int = 24  # Dimension of the class subspace.
  appearance_dim: int = 400  # Dimension of the appearance subspace.
  background_dim: int = 32  # Dimension of the background subspace.
  class_scale: float = 5.0  # Norm of the class part.
  scene_scale: float = 2.0  # Norm scale of a scene vector.
  drift_scale: float = 1.5  # Stationary norm scale of the drift.
  drift_rho: float = 0.9  # AR(1) coefficient of the drift per feature step.
  noise_scale: float = 0.2  # Root-mean-square per-dimension white noise.
  noise_decay: float = 0.5  # Spectrum: std of dimension i ∝ (i + 10) ** -noise_decay.
  num_scenes: int = 64  # Scenes shared by all videos.
  speed_sigma: float = 0.3  # Log-normal spread of the playing-speed warp.
  amplitude_range: tuple[float, float] = (0.8, 1.2)  # Per-piece gain of the class part.


@dataclasses.dataclass(frozen=True)
class FeatureParams(_CommonParams):
  """The benchmark's feature model (generator version 5).

  A video's timeline is tiled by *pieces*: its annotated and unlisted
  instances of its class, distractor instances of other classes and, everywhere
  else, *context* pieces of the benchmark's segment lengths. The class part
  ``c_t``: a piece plays a sequence of atoms (unit vectors of a pool shared by
  all classes) at a random speed and gain; an instance its class's own ordered
  sequence (what only the query tells), a context piece the same atoms in
  another order. The appearance part ``a_t``: the video's appearance (every
  step; it dominates similarity across videos), each piece's own, and on every
  action instance (its class's or a distractor) the video's *action look*, a
  direction of its own that sets actions apart from the video's background
  without being shared with other videos; some context pieces show it weakly.
  Neighbouring pieces cross-fade over a ramp 1-3 steps wide, centred within
  half a step of the annotated boundary.
  """

  num_atoms: int = 16  # Atoms (sub-actions, in the class subspace) shared by all classes.
  atoms_per_class: int = 4  # A class is an ordered sequence of this many distinct atoms.
  atom_jitter: float = 0.3  # Per-piece perturbation of each atom (relative norm).
  video_appearance_scale: float = 6.0  # Norm of a video's appearance (every step).
  piece_appearance_scale: float = 1.0  # Norm of a piece's own appearance.
  ramp_range: tuple[float, float] = (0.5, 1.5)  # Half-width of a boundary's cross-fade (steps).
  action_scale: float = 8.0  # Norm of a video's action look at gain 1.
  action_gain_range: tuple[float, float] = (0.5, 1.5)  # Gain of the look on an action instance.
  context_action_probability: float = 0.3  # Chance a context piece shows the look.
  context_action_range: tuple[float, float] = (0.0, 1.0)  # Gain of the look on such a piece.


@dataclasses.dataclass(frozen=True)
class ControlParams(_CommonParams):
  """The weak objective's positive control: a learnability check, not a stand-in.

  Inside an instance ``c_t`` is its class's trajectory (through the class's
  prototypes) and ``a_t`` the instance's own appearance plus an *action*
  direction shared by every instance of every class; outside the video's own
  instances ``c_t`` is the class *context* (the normalized mean of its
  prototypes) and ``a_t`` zero. With the action direction at norm 2 a
  query-blind model trained with full supervision tells instances from their
  background (85.7) while frame-level similarity does not (2.6).
  """

  num_prototypes: int = 4  # Prototype vectors per class trajectory.
  context_scale: float = 11.0  # Norm of the class context outside the video's own instances.
  action_scale: float = 2.0  # Norm of the action direction shared by every instance.
  appearance_scale: float = 8.0  # Norm of an instance's appearance vector.
  edge_gain: float = 0.5  # Gain of an instance's first and last step (clips straddle its bounds).
  distractor_probability: float = 0.4  # Chance a background slot holds a distractor.


Params = FeatureParams | ControlParams  # Either feature model.


@dataclasses.dataclass
class World:
  """The seed's fixed random structure: subspaces, classes, scenes, noise."""

  class_basis: np.ndarray  # [D, class_dim] orthonormal columns
  appearance_basis: np.ndarray  # [D, appearance_dim]
  background_basis: np.ndarray  # [D, background_dim]
  scenes: np.ndarray  # [num_scenes, background_dim]
  noise_std: np.ndarray  # [D] per-dimension white-noise std, float32
  # FeatureParams: the shared atoms and each class's ordered sequence of them.
  atoms: np.ndarray | None = None  # [num_atoms, class_dim], unit rows
  class_atoms: np.ndarray | None = None  # int [num_classes, atoms_per_class], distinct sequences
  # ControlParams: each class's prototypes and the action direction shared by all instances.
  prototypes: np.ndarray | None = None  # [num_classes, num_prototypes, class_dim], unit rows
  action_direction: np.ndarray | None = None  # [appearance_dim] unit vector

  @property
  def projection(self) -> np.ndarray:
    """Latent (class, appearance, background) coordinates → features: float32 [dims, D], C-order."""
    if getattr(self, "_projection", None) is None:
      basis = np.concatenate([self.class_basis, self.appearance_basis, self.background_basis], axis=1)
      self._projection = np.ascontiguousarray(basis.T, dtype=np.float32)
    return self._projection


def subspaces(seed: int, params: Params) -> tuple[np.random.Generator, np.ndarray]:
  """The seed's random rotation (the latent subspaces' bases) and the stream that drew it."""
  rng = np.random.default_rng([seed, 1])
  dims = params.class_dim + params.appearance_dim + params.background_dim
  basis, _ = np.linalg.qr(rng.standard_normal((FEATURE_DIM, dims)))
  return rng, basis


def make_world(seed: int, num_classes: int,
               params: Params) -> World:
  """The random structure shared by every video of a generated benchmark."""
  rng, basis = subspaces(seed, params)
  c, m = params.class_dim, params.class_dim + params.appearance_dim
  spectrum = (np.arange(FEATURE_DIM) + 10.0) ** -params.noise_decay
  spectrum *= params.noise_scale / np.sqrt(np.mean(spectrum ** 2))
  world = dict(class_basis=basis[:, :c], appearance_basis=basis[:, c:m],
               background_basis=basis[:, m:], noise_std=spectrum.astype(np.float32))
  if isinstance(params, ControlParams):
    prototypes = rng.standard_normal((num_classes, params.num_prototypes, params.class_dim))
    prototypes /= np.linalg.norm(prototypes, axis=-1, keepdims=True)
    scenes = rng.standard_normal((params.num_scenes, params.background_dim))
    action = np.random.default_rng([seed, 6]).standard_normal(params.appearance_dim)
    world.update(prototypes=prototypes, action_direction=action / np.linalg.norm(action))
  else:
    atoms = rng.standard_normal((params.num_atoms, params.class_dim))
    atoms /= np.linalg.norm(atoms, axis=-1, keepdims=True)
    scenes = rng.standard_normal((params.num_scenes, params.background_dim))
    sequences: list[tuple[int, ...]] = []
    while len(sequences) < num_classes:
      candidate = tuple(int(a) for a in rng.choice(params.num_atoms, params.atoms_per_class,
                                                   replace=False))
      if candidate not in sequences:
        sequences.append(candidate)
    world.update(atoms=atoms, class_atoms=np.asarray(sequences, dtype=np.int64))
  scenes *= params.scene_scale / np.sqrt(params.background_dim)
  return World(scenes=scenes, **world)


def _ar1(eps: np.ndarray, rho: float, block: int = 128) -> np.ndarray:
  """AR(1) ``u_t = rho u_{t-1} + eps_t`` along axis 0 (vectorized by blocks; u_0 = eps_0)."""
  out = np.empty_like(eps)
  powers = rho ** np.arange(block, dtype=np.float64)  # [block]
  carry = np.zeros(eps.shape[1:], dtype=np.float64)
  for start in range(0, eps.shape[0], block):
    chunk = eps[start:start + block].astype(np.float64)
    p = powers[:chunk.shape[0], None]
    acc = np.cumsum(chunk / p, axis=0) * p + carry * (p * rho)
    out[start:start + block] = acc
    carry = acc[-1]
  return out


def _background(n_feat: int, world: World, params: Params,
                rng: np.random.Generator) -> np.ndarray:
  """A video's scene plus its drift: [n_feat, background_dim]."""
  scene = world.scenes[rng.integers(len(world.scenes))]
  eps = rng.standard_normal((n_feat, params.background_dim))
  eps *= params.drift_scale * np.sqrt(1.0 - params.drift_rho ** 2) / np.sqrt(params.background_dim)
  eps[0] /= np.sqrt(1.0 - params.drift_rho ** 2)  # Start from the stationary distribution.
  return scene + _ar1(eps, params.drift_rho)


def _play(points: np.ndarray, phase: np.ndarray) -> np.ndarray:
  """Unit vectors along the piecewise-linear path through ``points`` [P, k] at ``phase`` [n] in [0, 1]."""
  position = phase * (points.shape[0] - 1)
  first = np.minimum(position.astype(int), points.shape[0] - 2)  # [n]
  frac = (position - first)[:, None]
  path = points[first] * (1.0 - frac) + points[first + 1] * frac  # [n, k]
  return path / (np.linalg.norm(path, axis=-1, keepdims=True) + 1e-9)


def _tile(pieces: Sequence[Piece], n_feat: int, class_index: int,
          rng: np.random.Generator) -> list[Piece]:
  """The pieces plus context pieces (benchmark segment lengths) tiling ``[0, n_feat)``."""
  sample_length = layout.segment_length_sampler()
  out: list[Piece] = []
  t = 0
  for p in sorted(pieces, key=lambda p: p.start) + [None]:
    stop = p.start if p is not None else n_feat
    while t < stop:
      length = min(int(sample_length(rng)), stop - t)
      out.append(Piece(t, t + length, class_index, "context"))
      t += length
    if p is not None and p.end > t:  # (Overlapping instances of a real split: clipped.)
      out.append(dataclasses.replace(p, start=max(p.start, t)))
      t = p.end
  return out


def _context_atoms(own: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """A context piece's atom sequence: the class's atoms in any order but the class's own."""
  while True:
    order = rng.permutation(own)
    if not np.array_equal(order, own):
      return order


def _latent(pieces: Sequence[Piece], n_feat: int, class_index: int, world: World,
            params: FeatureParams, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Class and appearance parts of one video: [n_feat, class_dim], [n_feat, appearance_dim]."""
  tiles = _tile(pieces, n_feat, class_index, rng)
  own = world.class_atoms[class_index]
  # Each inner boundary: where the content changes (within half a step of the annotated
  # boundary) and the half-width of its cross-fade.
  bounds = np.array([0.0] + [float(p.start) for p in tiles[1:]] + [float(n_feat)])  # [T + 1]
  bounds[1:-1] += rng.uniform(-0.5, 0.5, size=len(tiles) - 1)
  ramps = np.full(len(tiles) + 1, 1e-6)
  ramps[1:-1] = rng.uniform(*params.ramp_range, size=len(tiles) - 1)
  class_sum = np.zeros((n_feat, params.class_dim))
  appearance_sum = np.zeros((n_feat, params.appearance_dim))
  weight_sum = np.zeros(n_feat)
  reach = int(np.ceil(params.ramp_range[1])) + 1
  action_look = rng.standard_normal(params.appearance_dim)  # The video's own.
  action_look *= params.action_scale / np.linalg.norm(action_look)
  for i, p in enumerate(tiles):
    lo, hi = max(0, p.start - reach), min(n_feat, p.end + reach)
    centre = np.arange(lo, hi) + 0.5  # [n]
    left, right = bounds[i], bounds[i + 1]
    weight = (np.clip((centre - left) / (2.0 * ramps[i]) + 0.5, 0.0, 1.0)
              * np.clip((right - centre) / (2.0 * ramps[i + 1]) + 0.5, 0.0, 1.0))  # [n]
    sequence = (_context_atoms(own, rng) if p.kind == "context"
                else world.class_atoms[p.class_index])
    points = world.atoms[sequence]  # [P, class_dim]
    points = points + params.atom_jitter / np.sqrt(params.class_dim) * rng.standard_normal(
        points.shape)
    warp = np.exp(rng.normal(0.0, params.speed_sigma))
    phase = np.clip((centre - left) / max(right - left, 1e-6), 0.0, 1.0) ** warp
    gain = params.class_scale * rng.uniform(*params.amplitude_range)
    class_sum[lo:hi] += weight[:, None] * gain * _play(points, phase)
    look = rng.standard_normal(params.appearance_dim)
    look *= params.piece_appearance_scale / np.linalg.norm(look)
    if p.kind != "context":
      look += rng.uniform(*params.action_gain_range) * action_look
    elif rng.random() < params.context_action_probability:
      look += rng.uniform(*params.context_action_range) * action_look
    appearance_sum[lo:hi] += np.outer(weight, look)
    weight_sum[lo:hi] += weight
  weight_sum = np.maximum(weight_sum, 1e-9)[:, None]
  video_look = rng.standard_normal(params.appearance_dim)
  video_look *= params.video_appearance_scale / np.linalg.norm(video_look)
  return class_sum / weight_sum, appearance_sum / weight_sum + video_look


def _latent_control(pieces: Sequence[Piece], n_feat: int, world: World, params: ControlParams,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Class and appearance parts of one video (the positive control)."""
  class_coords = np.zeros((n_feat, params.class_dim))
  appearance = np.zeros((n_feat, params.appearance_dim))
  own = np.zeros(n_feat)  # [n_feat] presence of the video's own instances (edges partial)
  for p in pieces:
    length = p.end - p.start
    warp = np.exp(rng.normal(0.0, params.speed_sigma))
    phase = ((np.arange(length) + 0.5) / length) ** warp  # [length] in (0, 1)
    traj = _play(world.prototypes[p.class_index], phase)  # [length, class_dim]
    presence = np.ones((length, 1))  # [length, 1]
    if length >= 3:
      presence[[0, -1]] = params.edge_gain
    gain = rng.uniform(*params.amplitude_range) * presence  # [length, 1]
    class_coords[p.start:p.end] = params.class_scale * gain * traj
    if p.kind != "distractor":
      own[p.start:p.end] = presence[:, 0]
    direction = rng.standard_normal(params.appearance_dim)
    appearance[p.start:p.end] = gain * (
        params.appearance_scale * direction / np.linalg.norm(direction)
        + params.action_scale * world.action_direction)
  own_classes = [p.class_index for p in pieces if p.kind != "distractor"]
  if params.context_scale > 0 and own_classes:
    context = world.prototypes[own_classes[0]].mean(axis=0)  # [class_dim]
    context *= params.context_scale / (np.linalg.norm(context) + 1e-9)
    class_coords += (1.0 - own)[:, None] * context[None, :]
  return class_coords, appearance


def video_latent(pieces: Sequence[Piece], n_feat: int, class_index: int, world: World,
                 params: Params,
                 rng: np.random.Generator) -> np.ndarray:
  """The structured part of one video in latent coordinates.

  Args:
    pieces: the video's instances (its class's and distractors), in any order.
    n_feat: its length in feature steps.
    class_index: the video's class (that of its own instances).
    world: the seed's structure.
    params: the feature model (`FeatureParams` or `ControlParams`).
    rng: the video's own random stream.

  Returns:
    float32 [n_feat, class_dim + appearance_dim + background_dim]: the class
    part, the appearance part and the background, in that order
    (``latent @ world.projection`` gives the noiseless features).
  """
  if isinstance(params, ControlParams):
    class_coords, appearance = _latent_control(pieces, n_feat, world, params, rng)
  else:
    class_coords, appearance = _latent(pieces, n_feat, class_index, world, params, rng)
  background = _background(n_feat, world, params, rng)
  return np.concatenate([class_coords, appearance, background], axis=1).astype(np.float32)


def add_noise(features: np.ndarray, world: World, rng: np.random.Generator) -> np.ndarray:
  noise = rng.standard_normal(features.shape, dtype=np.float32)
  noise *= world.noise_std
  features += noise
  return features


def render_video(pieces: Sequence[Piece], n_feat: int, class_index: int, world: World,
                 params: Params, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """The features of one video and their clean class-subspace coordinates.

  Returns:
    features: float32 [n_feat, D].
    class_coords: float32 [n_feat, class_dim], the noiseless class part.
  """
  latent = video_latent(pieces, n_feat, class_index, world, params, rng)
  features = add_noise(latent @ world.projection, world, rng)  # [n_feat, D]
  return features, latent[:, :params.class_dim]


def hdf5_rows(features: np.ndarray) -> np.ndarray:
  """ActivityNet rows (one every 8 frames) from features (one every 16): float16 [2n-1, D]."""
  n = features.shape[0]
  rows = np.empty((2 * n - 1, features.shape[1]), dtype=np.float16)
  rows[0::2] = features.astype(np.float16)
  odd = features[:-1] + features[1:]
  odd *= 0.5
  rows[1::2] = odd.astype(np.float16)
  return rows
