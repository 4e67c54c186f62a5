"""The C3D extractor's math (vreloc_jax.features): network, weight files, PCA, mean, batching.

The network is checked against an independent float64 numpy C3D written from Caffe's rules
(cross-correlation on [out, in, t, h, w] blobs, pooling windows from 0 clipped at the edge,
fc6 on pool5 flattened in (c, t, h, w) order), on a narrow network and small clips; the
weight importer on Keras files this test writes as c3d-keras' ``convert_caffe_model.py``
does, from Caffe-ordered blobs.
"""

from __future__ import annotations

import math

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.flops import model_flops
from vreloc_jax.features import c3d, extractor, mean, pca, weights

# Eight convolutions of 2…6 channels, fc 7; 16 frames of 56 × 56: pool4 meets an odd size
# (7 → 4), pool5 gives (1, 2, 2, 6).
NARROW = c3d.Architecture(conv_widths=(2, 3, 4, 4, 5, 5, 6, 6), fc_width=7, frames=16, crop=56)


# ------------------------------------------------------------ the reference, in Caffe's terms


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
  """3 × 3 × 3 cross-correlation, padding 1: x [n, c, t, h, w], w [o, c, 3, 3, 3]."""
  _, _, t, h, wd = x.shape
  xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1), (1, 1)))
  out = np.zeros((x.shape[0], w.shape[0], t, h, wd))
  for dt in range(3):
    for dh in range(3):
      for dw in range(3):
        out += np.einsum("ncthw,oc->nothw", xp[:, :, dt:dt + t, dh:dh + h, dw:dw + wd],
                         w[:, :, dt, dh, dw])
  return out + b[None, :, None, None, None]


def _pool(x: np.ndarray, k: tuple[int, int, int]) -> np.ndarray:
  """Caffe's POOLING3D MAX, stride = kernel: ceil((n - k) / k) + 1 windows from 0, clipped."""
  sizes = [int(math.ceil((n - kk) / kk)) + 1 for n, kk in zip(x.shape[2:], k)]
  out = np.empty(x.shape[:2] + tuple(sizes))
  for i in range(sizes[0]):
    for j in range(sizes[1]):
      for m in range(sizes[2]):
        out[:, :, i, j, m] = x[:, :, i * k[0]:i * k[0] + k[0], j * k[1]:j * k[1] + k[1],
                               m * k[2]:m * k[2] + k[2]].max(axis=(2, 3, 4))
  return out


def caffe_c3d(blobs: dict[str, tuple[np.ndarray, np.ndarray]], clips: np.ndarray) -> np.ndarray:
  """fc7 (after ReLU) of clips [n, t, h, w, 3] by Caffe-ordered blobs, in float64."""
  x = np.asarray(clips, np.float64).transpose(0, 4, 1, 2, 3)  # [n, c, t, h, w]
  pools = {"conv1": (1, 2, 2), "conv2": (2, 2, 2), "conv3b": (2, 2, 2), "conv4b": (2, 2, 2),
           "conv5b": (2, 2, 2)}
  for layer in ("conv1", "conv2", "conv3a", "conv3b", "conv4a", "conv4b", "conv5a", "conv5b"):
    w, b = blobs[layer]
    x = np.maximum(_conv(x, w.astype(np.float64), b.astype(np.float64)), 0)
    if layer in pools:
      x = _pool(x, pools[layer])
  x = x.reshape(x.shape[0], -1)  # (c, t, h, w) order, as Caffe's blobs
  for layer in ("fc6", "fc7"):
    w, b = blobs[layer]
    x = np.maximum(x @ w.astype(np.float64).T + b, 0)  # w [out, in]
  return x


def flax_to_caffe(params, arch: c3d.Architecture) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Flax parameters → Caffe blobs (conv [o, i, t, h, w]; fc [out, in], fc6 in (c, t, h, w))."""
  t, h, w, c = arch.pool5_shape
  blobs = {}
  for layer in c3d.CONV_LAYERS:
    blobs[layer] = (np.asarray(params[layer]["kernel"]).transpose(4, 3, 0, 1, 2),
                    np.asarray(params[layer]["bias"]))
  fc6 = np.asarray(params["fc6"]["kernel"]).reshape(t, h, w, c, -1).transpose(4, 3, 0, 1, 2)
  blobs["fc6"] = (fc6.reshape(fc6.shape[0], -1), np.asarray(params["fc6"]["bias"]))
  blobs["fc7"] = (np.asarray(params["fc7"]["kernel"]).T, np.asarray(params["fc7"]["bias"]))
  return blobs


def random_blobs(seed: int, arch: c3d.Architecture) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Caffe-ordered random blobs (and an fc8) for ``arch``."""
  rng = np.random.default_rng(seed)
  blobs = {}
  for layer in c3d.CONV_LAYERS + c3d.FC_LAYERS + ("fc8",):
    cin = arch.fc_width if layer == "fc8" else arch.input_channels(layer)
    cout = 5 if layer == "fc8" else arch.output_channels(layer)
    shape = (cout, cin, 3, 3, 3) if layer in c3d.CONV_LAYERS else (cout, cin)
    fan_in = int(np.prod(shape[1:]))
    blobs[layer] = ((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32),
                    (0.1 * rng.standard_normal(cout)).astype(np.float32))
  return blobs


def flax_fc7(params, clips: np.ndarray, arch: c3d.Architecture) -> np.ndarray:
  return np.asarray(jax.jit(lambda p, x: c3d.C3D(arch).apply({"params": p}, x))(
      params, jnp.asarray(clips, jnp.float32)))


def _clips(seed: int, n: int, arch: c3d.Architecture) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (n, arch.frames, arch.crop, arch.crop, 3)).astype(np.uint8)


# ------------------------------------------------------------------------------ the network


def test_flax_c3d_matches_the_float64_caffe_reference():
  params = weights.random(3, NARROW)
  for p in params.values():  # non-zero biases
    p["bias"] = np.random.default_rng(4).normal(0, 0.1, p["bias"].shape).astype(np.float32)
  clips = _clips(0, 2, NARROW).astype(np.float32) - 120.0
  ours = flax_fc7(params, clips, NARROW)
  ref = caffe_c3d(flax_to_caffe(params, NARROW), clips)
  assert ours.shape == (2, NARROW.fc_width)
  assert (ref > 0).any() and (ref == 0).any()  # ReLU active on both sides
  np.testing.assert_allclose(ours, ref, rtol=2e-4, atol=2e-4 * np.abs(ref).max())


def test_pooling_is_caffes_not_the_keras_ports():
  x = jnp.broadcast_to(jnp.asarray([5.0, 1.0, 2.0, 7.0, 3.0, 0.0, 4.0])[None, None, None, :, None],
                       (1, 2, 1, 7, 1))
  out = c3d.max_pool_caffe(x, (2, 1, 2))  # windows {0,1} {2,3} {4,5} {6}
  assert out.shape == (1, 1, 1, 4, 1)
  np.testing.assert_array_equal(np.asarray(out).ravel(), [5.0, 7.0, 3.0, 4.0])
  # The Keras ports pad one on both sides, windows {pad,0} {1,2} {3,4} {5,6}: 5, 2, 7, 4.
  assert [c3d.pooled_size(n, 2) for n in (7, 8, 1, 2)] == [4, 4, 1, 1]


def test_the_sports1m_network_has_the_prototxts_shapes_and_flops():
  shapes = c3d.param_shapes()
  widths = dict(zip(c3d.CONV_LAYERS, (64, 128, 256, 256, 512, 512, 512, 512)))
  cin = 3
  for layer, width in widths.items():
    assert shapes[layer] == {"kernel": (3, 3, 3, cin, width), "bias": (width,)}
    cin = width
  assert c3d.SPORTS1M.pool5_shape == (1, 4, 4, 512)
  assert shapes["fc6"]["kernel"] == (8192, 4096) and shapes["fc7"]["kernel"] == (4096, 4096)
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32), shapes,
                          is_leaf=lambda s: isinstance(s, tuple))
  clips = jax.ShapeDtypeStruct((2, 16, 112, 112, 3), jnp.float32)
  fn = lambda p, x: c3d.C3D().apply({"params": p}, x)
  assert jax.eval_shape(fn, abstract, clips).shape == (2, 4096)
  counted, _ = model_flops(jax.make_jaxpr(fn)(abstract, clips))
  assert counted == pytest.approx(2 * c3d.flops_per_clip())
  assert c3d.flops_per_clip() == pytest.approx(77.09e9, rel=1e-3)  # 38.5 G multiply-adds


def test_the_extractor_batches_subtracts_the_mean_and_reduces():
  params = weights.random(5, NARROW)
  reduction = pca.PCA(mean=np.linspace(0, 1, 7).astype(np.float32),
                      components=np.random.default_rng(6).normal(size=(7, 3)).astype(np.float32))
  clips = _clips(1, 5, NARROW)
  blobs = flax_to_caffe(params, NARROW)
  cube = np.random.default_rng(7).uniform(90, 130, (16, 56, 56, 3)).astype(np.float32)
  for input_mean in (np.asarray(mean.FALLBACK_BGR, np.float32), cube):
    ex = extractor.Extractor(params, reduction, input_mean, {}, clip_batch=2, arch=NARROW)
    assert ex.feature_dim == 3
    out = ex(iter(clips))  # three batches, the last padded
    fc7 = caffe_c3d(blobs, clips.astype(np.float64) - input_mean)
    ref = (fc7 - reduction.mean) @ reduction.components.astype(np.float64)
    assert out.shape == (5, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=2e-4, atol=2e-4 * np.abs(ref).max())
  assert ex(iter([])).shape == (0, 3)
  with pytest.raises(ValueError, match="--clip_batch must be at least 1, got 0"):
    extractor.Extractor(params, None, cube, {}, clip_batch=0, arch=NARROW)


# ----------------------------------------------------------------------------- weight files


def _convert_dense(w: np.ndarray, pool5: tuple[int, int, int, int]) -> np.ndarray:
  """c3d-keras' convert_dense: fc6 rows (c, h, w) → (h, w, c), column by column (t = 1)."""
  t, h, wd, c = pool5
  assert t == 1
  out = np.zeros_like(w)
  for i in range(w.shape[1]):
    out[:, i] = np.transpose(np.reshape(w[:, i], (c, h, wd)), (1, 2, 0)).flatten()
  return out


def write_keras_file(path, blobs, arch: c3d.Architecture, layout: str, keras2: bool,
                     backend: str | None = None) -> None:
  """A Keras weight file as c3d-keras' convert_caffe_model.py makes it from Caffe blobs."""
  names = ["conv1", "pool1", "conv2", "pool2", "conv3a", "conv3b", "pool3", "conv4a", "conv4b",
           "pool4", "conv5a", "conv5b", "zeropad", "pool5", "flatten_1", "fc6", "dropout_1",
           "fc7", "dropout_2", "fc8"]
  with h5py.File(path, "w") as f:
    root = f.create_group("model_weights") if keras2 else f
    root.attrs["layer_names"] = np.array([n.encode() for n in names])
    if backend:
      f.attrs["backend"] = backend
    for name in names:
      group = root.create_group(name)
      if name not in blobs:
        group.attrs["weight_names"] = np.array([], dtype="S1")
        continue
      w, b = blobs[name]
      if name.startswith("conv"):
        if layout == "keras_tf":
          w = np.transpose(w, (2, 3, 4, 1, 0))
        elif backend != "tensorflow":
          w = w[:, :, ::-1, ::-1, ::-1]  # reindex: Theano's convolution flips the kernel
      else:
        w = w.T  # weights_p[0, 0, 0, :, :].T
        if name == "fc6" and layout == "keras_tf":
          w = _convert_dense(w, arch.pool5_shape)
      labels = [f"{name}/kernel:0", f"{name}/bias:0"] if keras2 else [f"{name}_W", f"{name}_b"]
      group.attrs["weight_names"] = np.array([n.encode() for n in labels])
      group.create_dataset(labels[0], data=np.ascontiguousarray(w))
      group.create_dataset(labels[1], data=b)


@pytest.mark.parametrize("layout, keras2, backend", [
    ("keras_tf", True, None), ("keras_tf", False, None), ("keras_th", False, None),
    ("keras_th", False, "tensorflow")])
def test_the_importer_reads_each_published_layout(tmp_path, layout, keras2, backend):
  blobs = random_blobs(11, NARROW)
  path = str(tmp_path / "c3d.h5")
  write_keras_file(path, blobs, NARROW, layout, keras2, backend)
  params, info = weights.load(path, NARROW)
  assert info["layout"] == layout and len(info["sha256"]) == 64
  assert info["kernels_flipped"] == (layout == "keras_th" and backend is None)
  shapes = {k: {n: v.shape for n, v in p.items()} for k, p in params.items()}
  assert shapes == c3d.param_shapes(NARROW)
  clips = _clips(2, 2, NARROW).astype(np.float32) - 110.0
  ref = caffe_c3d(blobs, clips)
  np.testing.assert_allclose(flax_fc7(params, clips, NARROW), ref, rtol=2e-4,
                             atol=2e-4 * np.abs(ref).max())


def test_the_importer_refuses_other_files_by_layer_and_shape(tmp_path):
  blobs = random_blobs(12, NARROW)
  torch_like = tmp_path / "torch_like.h5"
  with h5py.File(torch_like, "w") as f:
    for layer, (w, b) in blobs.items():
      f[f"{layer}.weight"], f[f"{layer}.bias"] = w, b
  with pytest.raises(ValueError, match=r"no layer conv1, conv2, .*fc7 \(found conv1\.bias, "
                     r"conv1\.weight, .*expected a Keras HDF5 file"):
    weights.load(str(torch_like), NARROW)
  bad = dict(blobs)
  bad["conv3b"] = (blobs["conv3b"][0][:, :2], blobs["conv3b"][1])
  path = tmp_path / "bad_conv3b.h5"
  write_keras_file(path, bad, NARROW, "keras_tf", keras2=True)
  with pytest.raises(ValueError, match=r"\(keras_tf\): layer conv3b has kernel \[3, 3, 3, 2, 4\] "
                     r"and bias \[4\]; expected \[3, 3, 3, 4, 4\] and \[4\]"):
    weights.load(str(path), NARROW)
  with pytest.raises(ValueError, match=r"conv1's kernel has shape .* neither TensorFlow-ordered "
                     r"\[3, 3, 3, 3, 64\] nor Theano-ordered \[64, 3, 3, 3, 3\]"):
    weights.load(str(tmp_path / "bad_conv3b.h5"))  # A narrow file is not the Sports-1M model.
  (tmp_path / "text.h5").write_text("not HDF5")
  with pytest.raises(ValueError, match="text.h5 is not a readable HDF5 file"):
    weights.load(str(tmp_path / "text.h5"))
  with pytest.raises(ValueError, match="does not exist"):
    weights.load(str(tmp_path / "none.h5"))


# ------------------------------------------------------------------------------ PCA and mean


def test_activitynets_pca_file_reduces_by_the_first_columns(tmp_path):
  rng = np.random.default_rng(8)
  u, s, x_mean = rng.normal(size=(16, 9)), rng.uniform(1, 2, 9), rng.normal(size=(1, 16))
  path = tmp_path / "PCA_activitynet_v1-3.hdf5"
  with h5py.File(path, "w") as f:
    f["data/U"], f["data/S"], f["data/x_mean"] = u, s, x_mean
  reduction, info = pca.load(str(path), in_dim=16, dims=5)
  x = rng.normal(size=(3, 16))
  np.testing.assert_allclose((x - reduction.mean) @ reduction.components,
                             (x - x_mean) @ u[:, :5], rtol=1e-5)
  assert reduction.dims == 5 and info["file"] == str(path)
  with h5py.File(tmp_path / "transposed.hdf5", "w") as f:
    f["data/U"], f["data/x_mean"] = u.T, x_mean
  with pytest.raises(ValueError, match=r"U has shape \[9, 16\] .*expected datasets data/U "
                     r"\[16, >= 5\] and data/x_mean \[16\]"):
    pca.load(str(tmp_path / "transposed.hdf5"), in_dim=16, dims=5)
  random = pca.random(0)
  assert random.components.shape == (4096, 500)
  np.testing.assert_allclose(random.components.T @ random.components, np.eye(500), atol=1e-4)


def _blob_proto(cube: np.ndarray) -> bytes:
  """C3D's BlobProto: num 1, channels 2, length 3, height 4, width 5 (varints), data 6 packed."""
  def varint(v: int) -> bytes:
    out = bytearray()
    while True:
      out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
      v >>= 7
      if not v:
        return bytes(out)
  data = cube.astype("<f4").tobytes()
  head = b"".join(bytes([field << 3]) + varint(v) for field, v in zip(range(1, 6), cube.shape))
  return head + bytes([6 << 3 | 2]) + varint(len(data)) + data


def test_the_mean_clip_files_are_read_and_cropped_like_the_clips(tmp_path):
  cube = np.random.default_rng(9).uniform(80, 140, (1, 3, 16, 128, 171)).astype(np.float32)
  expected = cube[0, :, :, 8:120, 29:141].transpose(1, 2, 3, 0)  # [16, 112, 112, 3]
  (tmp_path / "sport1m.binaryproto").write_bytes(_blob_proto(cube))
  np.save(tmp_path / "mean.npy", cube[0].transpose(1, 2, 3, 0))
  for name in ("sport1m.binaryproto", "mean.npy"):
    got, info = mean.load(str(tmp_path / name))
    np.testing.assert_array_equal(got, expected)
    assert len(info["sha256"]) == 64
  (tmp_path / "fb.binaryproto").write_bytes(_blob_proto(cube[:, :, :, :, :128]))
  with pytest.raises(ValueError, match=r"has shape \[3, 16, 128, 128\]; expected C3D's Sports-1M"):
    mean.load(str(tmp_path / "fb.binaryproto"))
  (tmp_path / "junk.binaryproto").write_bytes(b"\x0b\x00")
  with pytest.raises(ValueError, match="junk.binaryproto is unreadable"):
    mean.load(str(tmp_path / "junk.binaryproto"))
