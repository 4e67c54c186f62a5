"""The mean subtracted from C3D's input clips.

C3D's Sports-1M feature extraction subtracts ``sport1m_train16_128_mean.binaryproto``
(``mean_file`` of ``c3d_sport1m_feature_extractor_frm.prototxt``): a mean clip of 3 × 16 ×
128 × 171 (channels BGR, frames, height, width), pixel by pixel before the crop
(``video_data_layer.cpp``). The repository lists that file but its content was not
obtainable here (the snapshot lacks it; there is no other way out of this machine), so:

* ``--mean=FILE`` takes the cube: C3D's ``.binaryproto`` (its ``BlobProto``: num 1,
  channels 2, length 3, height 4, width 5, packed float data 6; ``src/caffe/proto/
  caffe.proto`` of C3D v1.0) or a ``.npy`` of shape [3, 16, 128, 171] (c3d-keras'
  ``.npy`` mean files are in that order) or [16, 128, 171, 3]; it is cropped like the clips.
* Without it, a per-channel mean (`FALLBACK_BGR`): the channel averages of the other video
  mean cube of the C3D v1.0 release, ``examples/c3d_feature_extraction/
  fb_train16_128_mean.binaryproto`` (3 × 16 × 128 × 128; computed here: B 105.70, G 115.76,
  R 127.54). It is not the Sports-1M mean: features made with it are not ActivityNet's.
"""

from __future__ import annotations

import os

import numpy as np

from vreloc_jax import exported
from vreloc_jax.features import video

FALLBACK_BGR = (105.70, 115.76, 127.54)
CUBE_SHAPE = (3, video.CLIP_FRAMES, *video.RESIZE_HW)  # (c, l, h, w) as C3D stores it.


def _varint(data: bytes, pos: int) -> tuple[int, int]:
  value, shift = 0, 0
  while True:
    if pos >= len(data):
      raise ValueError("truncated varint")
    byte = data[pos]
    pos += 1
    value |= (byte & 0x7F) << shift
    shift += 7
    if byte < 0x80:
      return value, pos


def read_binaryproto(data: bytes) -> np.ndarray:
  """C3D's ``BlobProto`` → float32 [num, channels, length, height, width]."""
  dims = {1: 0, 2: 0, 3: 0, 4: 0, 5: 0}
  values: list[np.ndarray] = []
  pos = 0
  while pos < len(data):
    key, pos = _varint(data, pos)
    field, wire = key >> 3, key & 7
    if wire == 0:
      value, pos = _varint(data, pos)
      if field in dims:
        dims[field] = value
    elif wire == 2:
      size, pos = _varint(data, pos)
      if field == 6:
        values.append(np.frombuffer(data[pos:pos + size], "<f4"))
      pos += size
    elif wire == 5:
      if field == 6:
        values.append(np.frombuffer(data[pos:pos + 4], "<f4"))
      pos += 4
    elif wire == 1:
      pos += 8
    else:
      raise ValueError(f"unexpected protobuf wire type {wire}")
  flat = np.concatenate(values) if values else np.zeros(0, np.float32)
  shape = tuple(dims[k] for k in (1, 2, 3, 4, 5))
  if not all(shape) or flat.size != np.prod(shape):
    raise ValueError(f"not a C3D BlobProto: shape (num, channels, length, height, width) "
                     f"{shape} with {flat.size} values")
  return flat.reshape(shape).astype(np.float32)


def load(path: str) -> tuple[np.ndarray, dict[str, str]]:
  """A mean cube file → float32 [16, 112, 112, 3] (BGR, cropped like the clips).

  Raises:
    ValueError: the file is missing, unreadable or of another shape.
  """
  if not os.path.isfile(path):
    raise ValueError(f"mean file {path} does not exist")
  try:
    if path.endswith(".npy"):
      cube = np.load(path, allow_pickle=False).astype(np.float32)
    else:
      with open(path, "rb") as f:
        cube = read_binaryproto(f.read())
  except (OSError, ValueError) as e:
    raise ValueError(f"mean file {path} is unreadable: {e}") from None
  cube = cube.reshape(cube.shape[1:]) if cube.ndim == 5 and cube.shape[0] == 1 else cube
  if cube.shape == CUBE_SHAPE:
    cube = cube.transpose(1, 2, 3, 0)
  if cube.shape != (*CUBE_SHAPE[1:], 3):
    raise ValueError(f"mean file {path} has shape {list(cube.shape)}; expected C3D's Sports-1M "
                     f"mean clip {list(CUBE_SHAPE)} (channels, frames, height, width) or "
                     f"{[*CUBE_SHAPE[1:], 3]}")
  cropped = np.stack([video.crop(frame) for frame in cube])  # [16, 112, 112, 3]
  return np.ascontiguousarray(cropped), {"file": os.path.abspath(path),
                                         "sha256": exported.sha256_file(path)}
