"""C3D (Tran et al., ICCV 2015) in Flax, up to fc7: the network of the Sports-1M model.

The layers of C3D v1.0's ``c3d_sport1m_feature_extractor_frm.prototxt`` (facebookarchive/C3D):
eight 3 × 3 × 3 convolutions (stride 1, padding 1; 64, 128, 256, 256, 512, 512, 512, 512
filters; conv1, conv2, conv3a, conv3b, conv4a, conv4b, conv5a, conv5b), each followed by a
ReLU; max pooling after conv1 (1 × 2 × 2), conv2, conv3b, conv4b and conv5b (2 × 2 × 2),
stride equal to the window; fc6 and fc7 (4096 each, ReLU; dropout is the identity at test
time). The feature is fc7 after its ReLU: Caffe's ``relu7`` works in place on the
``fc7-1`` blob that feature extraction reads.

Pooling is Caffe's: the output length is ``ceil((n - k) / s) + 1``, windows start at 0 and
the last one is clipped at the edge (``pool3d_layer.cpp``). Only pool5 meets an odd size (7
→ 4 on a 112 × 112 clip); the Keras ports pad conv5b by one on both sides instead
(``ZeroPadding3D((0, 1, 1))``), which moves pool5's windows one pixel up and left. Here the
last window is clipped, as in Caffe.

Layout: activations ``[clips, time, height, width, channels]``, kernels ``[t, h, w, in,
out]`` (cross-correlation, as Caffe), fc6's input is pool5 flattened in (t, h, w, c) order.
`Architecture` fixes the widths and the clip size; tests use a narrow one on small clips.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

CONV_LAYERS = ("conv1", "conv2", "conv3a", "conv3b", "conv4a", "conv4b", "conv5a", "conv5b")
FC_LAYERS = ("fc6", "fc7")
# The pooling window (= stride), (t, h, w), after these convolutions.
POOLS = {"conv1": (1, 2, 2), "conv2": (2, 2, 2), "conv3b": (2, 2, 2), "conv4b": (2, 2, 2),
         "conv5b": (2, 2, 2)}


@dataclasses.dataclass(frozen=True)
class Architecture:
  """C3D's widths and input size.

  Attributes:
    conv_widths: output channels of conv1 … conv5b.
    fc_width: width of fc6 and fc7 (the feature dimension without PCA).
    frames: frames of a clip.
    crop: height and width of a clip.
  """

  conv_widths: tuple[int, ...] = (64, 128, 256, 256, 512, 512, 512, 512)
  fc_width: int = 4096
  frames: int = 16
  crop: int = 112

  def __post_init__(self):
    if len(self.conv_widths) != len(CONV_LAYERS):
      raise ValueError(f"conv_widths needs {len(CONV_LAYERS)} entries, got {self.conv_widths}")

  @property
  def pool5_shape(self) -> tuple[int, int, int, int]:
    """(t, h, w, c) of pool5's output: (1, 4, 4, 512) for the Sports-1M model."""
    t, h, w = self.frames, self.crop, self.crop
    for window in POOLS.values():
      t, h, w = (pooled_size(n, k) for n, k in zip((t, h, w), window))
    return t, h, w, self.conv_widths[-1]

  def input_channels(self, layer: str) -> int:
    """Input features of a convolution or fully connected layer."""
    if layer in CONV_LAYERS:
      index = CONV_LAYERS.index(layer)
      return 3 if index == 0 else self.conv_widths[index - 1]
    return math.prod(self.pool5_shape) if layer == "fc6" else self.fc_width

  def output_channels(self, layer: str) -> int:
    return (self.conv_widths[CONV_LAYERS.index(layer)] if layer in CONV_LAYERS
            else self.fc_width)


SPORTS1M = Architecture()


def pooled_size(n: int, k: int) -> int:
  """Caffe's pooled length of ``n`` by a window ``k`` of stride ``k``: ``ceil((n - k) / k) + 1``."""
  return max(0, -(-(n - k) // k)) + 1


def max_pool_caffe(x: jax.Array, window: tuple[int, int, int]) -> jax.Array:
  """Max pooling of ``[clips, t, h, w, c]`` as Caffe's POOLING3D (stride = window)."""
  pads = [(0, 0)]
  for n, k in zip(x.shape[1:4], window):
    pads.append((0, (pooled_size(n, k) - 1) * k + k - n))  # Past the edge: never the max.
  pads.append((0, 0))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *window, 1), (1, *window, 1),
                               pads)


class C3D(nn.Module):
  """C3D up to fc7: uint8-range clips (mean already subtracted) → fc7 features.

  Attributes:
    arch: widths and clip size.
  """

  arch: Architecture = SPORTS1M

  @nn.compact
  def __call__(self, clips: jax.Array) -> jax.Array:
    """``[clips, frames, crop, crop, 3]`` float32 → ``[clips, fc_width]`` (fc7 after ReLU)."""
    x = clips
    for layer, width in zip(CONV_LAYERS, self.arch.conv_widths):
      x = nn.relu(nn.Conv(width, (3, 3, 3), padding=1, name=layer)(x))  # [clips, t, h, w, width]
      if layer in POOLS:
        x = max_pool_caffe(x, POOLS[layer])
    x = x.reshape(x.shape[0], -1)  # [clips, t·h·w·c], (t, h, w, c) order
    for layer in FC_LAYERS:
      x = nn.relu(nn.Dense(self.arch.fc_width, name=layer)(x))  # [clips, fc_width]
    return x


def param_shapes(arch: Architecture = SPORTS1M) -> dict[str, dict[str, tuple[int, ...]]]:
  """The Flax parameter shapes, ``{layer: {"kernel": ..., "bias": ...}}``."""
  out = {}
  for layer in CONV_LAYERS + FC_LAYERS:
    cin, cout = arch.input_channels(layer), arch.output_channels(layer)
    kernel = (3, 3, 3, cin, cout) if layer in CONV_LAYERS else (cin, cout)
    out[layer] = {"kernel": kernel, "bias": (cout,)}
  return out


def flops_per_clip(arch: Architecture = SPORTS1M) -> float:
  """Multiply-adds × 2 of the convolutions and fc6, fc7 for one clip (pooling not counted)."""
  total = 0.0
  t, h, w = arch.frames, arch.crop, arch.crop
  for layer in CONV_LAYERS:
    total += 2.0 * t * h * w * arch.output_channels(layer) * 27 * arch.input_channels(layer)
    if layer in POOLS:
      t, h, w = (pooled_size(n, k) for n, k in zip((t, h, w), POOLS[layer]))
  for layer in FC_LAYERS:
    total += 2.0 * arch.input_channels(layer) * arch.output_channels(layer)
  return total
