"""The Sports-1M C3D weights, read from the Keras HDF5 files they are published in.

The Caffe model (``conv3d_deepnetA_sport1m_iter_1900000``, C3D v1.0, CC BY-NC 3.0) is
distributed converted to Keras HDF5 weight files by axon-research/c3d-keras
(``convert_caffe_model.py``): ``sports1M_weights_tf.h5`` and ``sports1M_weights_th.h5``;
adamcasson/c3d's release v0.1 republishes ``sports1M_weights_tf.h5``. Two layouts
(`LAYOUTS`), told apart by conv1's kernel shape:

* ``keras_tf`` (channels last): conv kernels ``[t, h, w, in, out]``, Caffe's blob
  transposed (2, 3, 4, 1, 0), not flipped; fc6's rows in (t, h, w, c) order of pool5
  (``convert_dense``); Dense kernels ``[in, out]``.
* ``keras_th`` (channels first, Theano): conv kernels ``[out, in, t, h, w]`` flipped along t,
  h and w (``reindex``: Theano's conv3d is a true convolution, Caffe's a cross-correlation);
  fc6's rows in Caffe's (c, t, h, w) order. A file whose root attribute ``backend`` is
  ``tensorflow`` holds unflipped kernels (Keras' TensorFlow backend correlates in either
  ordering).

Layers are found by name (``conv1``, ``conv2``, ``conv3a`` … ``conv5b``, ``fc6``, ``fc7``; fc8,
the classifier, is ignored) under the file's root or its ``model_weights`` group, in the
Keras 1 form (``conv1/conv1_W``, listed by the group's ``weight_names``) or the Keras 2 form
(``conv1/conv1/kernel:0``); each is checked against the expected shape for the file's
layout, and any other file is refused with what was expected and found.
"""

from __future__ import annotations

import os
from typing import Any

import h5py
import numpy as np

from vreloc_jax import exported
from vreloc_jax.features import c3d

LAYOUTS = ("keras_tf", "keras_th")
LAYERS = c3d.CONV_LAYERS + c3d.FC_LAYERS
_KNOWN = ("a Keras HDF5 file of the Sports-1M C3D weights with layers "
          f"{', '.join(LAYERS)} (c3d-keras' sports1M_weights_tf.h5 or sports1M_weights_th.h5)")


def open_hdf5(path: str, what: str) -> h5py.File:
  """``path`` opened read-only; ValueError naming ``what`` and the path if it is missing or
  not a readable HDF5 file."""
  if not os.path.isfile(path):
    raise ValueError(f"{what} {path} does not exist")
  try:
    return h5py.File(path, "r")
  except OSError as e:
    raise ValueError(f"{what} {path} is not a readable HDF5 file: {e}") from None


def _arrays(group: h5py.Group) -> dict[str, h5py.Dataset]:
  """A layer group's weight arrays, by name (``weight_names`` if listed, else every dataset)."""
  names = group.attrs.get("weight_names")
  if names is not None:
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in np.atleast_1d(names)]
    return {name: group[name] for name in names if isinstance(group.get(name), h5py.Dataset)}
  found: dict[str, h5py.Dataset] = {}
  group.visititems(lambda name, node: found.setdefault(name, node)
                   if isinstance(node, h5py.Dataset) else None)
  return found


def _kernel_and_bias(path: str, layer: str, group: h5py.Group) -> tuple[np.ndarray, np.ndarray]:
  arrays = _arrays(group)
  kernels = [a for a in arrays.values() if a.ndim >= 2]
  biases = [a for a in arrays.values() if a.ndim == 1]
  if len(kernels) != 1 or len(biases) != 1:
    listed = {name: a.shape for name, a in arrays.items()}
    raise ValueError(f"weights file {path}: layer {layer} holds {listed}; expected one kernel "
                     "and one bias")
  return np.asarray(kernels[0], np.float32), np.asarray(biases[0], np.float32)


def _expected_kernel(layout: str, layer: str, arch: c3d.Architecture) -> tuple[int, ...]:
  cin, cout = arch.input_channels(layer), arch.output_channels(layer)
  if layer in c3d.FC_LAYERS:
    return (cin, cout)
  return (3, 3, 3, cin, cout) if layout == "keras_tf" else (cout, cin, 3, 3, 3)


def _layout(path: str, conv1: tuple[int, ...], arch: c3d.Architecture) -> str:
  for layout in LAYOUTS:
    if conv1 == _expected_kernel(layout, "conv1", arch):
      return layout
  raise ValueError(f"weights file {path}: conv1's kernel has shape {list(conv1)}, neither "
                   f"TensorFlow-ordered {list(_expected_kernel('keras_tf', 'conv1', arch))} nor "
                   f"Theano-ordered {list(_expected_kernel('keras_th', 'conv1', arch))}; "
                   f"expected {_KNOWN}")


def load(path: str, arch: c3d.Architecture = c3d.SPORTS1M) -> tuple[dict[str, Any], dict[str, Any]]:
  """Reads C3D's weights from a Keras HDF5 file of either layout.

  Args:
    path: the HDF5 file.
    arch: the architecture the shapes must fit (the Sports-1M model's by default).

  Returns:
    The Flax parameters of `c3d.C3D` (numpy float32) and what was read: ``{"file", "sha256",
    "layout", "kernels_flipped"}``.

  Raises:
    ValueError: the file is missing or unreadable, lacks a layer, or a layer's shape does not
      fit the layout (the message names the layer, the shape found and the one expected).
  """
  with open_hdf5(path, "weights file") as f:
    root = f["model_weights"] if isinstance(f.get("model_weights"), h5py.Group) else f
    missing = [layer for layer in LAYERS if not isinstance(root.get(layer), h5py.Group)]
    if missing:
      found = sorted(root.keys())
      raise ValueError(f"weights file {path}: no layer {', '.join(missing)} (found "
                       f"{', '.join(found[:12]) or 'nothing'}{' …' if len(found) > 12 else ''});"
                       f" expected {_KNOWN}")
    raw = {layer: _kernel_and_bias(path, layer, root[layer]) for layer in LAYERS}
    backend = f.attrs.get("backend")
    backend = backend.decode() if isinstance(backend, bytes) else backend
  layout = _layout(path, raw["conv1"][0].shape, arch)
  flipped = layout == "keras_th" and backend != "tensorflow"
  params: dict[str, Any] = {}
  for layer in LAYERS:
    kernel, bias = raw[layer]
    expected = _expected_kernel(layout, layer, arch)
    if kernel.shape != expected or bias.shape != (arch.output_channels(layer),):
      raise ValueError(f"weights file {path} ({layout}): layer {layer} has kernel "
                       f"{list(kernel.shape)} and bias {list(bias.shape)}; expected "
                       f"{list(expected)} and [{arch.output_channels(layer)}]")
    if layout == "keras_th" and layer in c3d.CONV_LAYERS:
      if flipped:
        kernel = kernel[:, :, ::-1, ::-1, ::-1]
      kernel = kernel.transpose(2, 3, 4, 1, 0)  # [out, in, t, h, w] → [t, h, w, in, out]
    elif layout == "keras_th" and layer == "fc6":
      t, h, w, c = arch.pool5_shape
      kernel = kernel.reshape(c, t, h, w, -1).transpose(1, 2, 3, 0, 4).reshape(t * h * w * c, -1)
    params[layer] = {"kernel": np.ascontiguousarray(kernel), "bias": bias}
  info = {"file": os.path.abspath(path), "sha256": exported.sha256_file(path), "layout": layout,
          "kernels_flipped": flipped}
  return params, info


def random(seed: int, arch: c3d.Architecture = c3d.SPORTS1M) -> dict[str, Any]:
  """Random weights of the same shapes (LeCun-normal kernels, zero biases): smoke tests only."""
  rng = np.random.default_rng(seed)
  params = {}
  for layer, shapes in c3d.param_shapes(arch).items():
    kernel = shapes["kernel"]
    fan_in = int(np.prod(kernel[:-1]))
    params[layer] = {
        "kernel": (rng.standard_normal(kernel, np.float32) / np.sqrt(fan_in)).astype(np.float32),
        "bias": np.zeros(shapes["bias"], np.float32)}
  return params
