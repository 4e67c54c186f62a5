"""What the model saw on one pair: the paper's Fig. 4 as a PNG.

`plot_pair` draws, over the reference's steps (x axis shared by all panels):

1. the timeline: the ground-truth segment (when known) and the predicted one;
2. the per-step probabilities p_start, p_end and p_inside;
3. the multiscale attention H^matt as a heat map, one row per head, grouped by
   (kernel, dilation) as in the paper's Table 1.

Used for the fixed val pairs drawn at every evaluation (``W/plots/``) and by
``python -m vreloc_jax.localize --plot=FILE``. Drawn with matplotlib's Agg
backend (no display needed) and written whole through `vreloc_jax.storage`.
"""

from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np

from vreloc_jax import losses
from vreloc_jax import storage

# The curves drawn from the model's 4-way output, with their columns.
_CURVES = (("p_start", losses.START, "tab:blue"), ("p_end", losses.END, "tab:red"),
           ("p_inside", losses.INSIDE, "tab:green"))


def head_labels(groups: Sequence[Sequence[int]]) -> list[tuple[int, str]]:
  """(first head row, label) of each head group ``(num_heads, kernel, dilation)``."""
  labels, row = [], 0
  for num_heads, kernel, dilation in groups:
    labels.append((row, f"k{kernel} d{dilation}"))
    row += num_heads
  return labels


def plot_pair(path: str, probs: np.ndarray | None, predicted: Sequence[int], *,
              groundtruth: Sequence[int] | None = None, attention: np.ndarray | None = None,
              groups: Sequence[Sequence[int]] | None = None, title: str = "",
              seconds_per_step: float | None = None,
              attention_label: str = "attention head", length: int | None = None) -> None:
  """Writes the figure of one localized pair as a PNG.

  Args:
    path: the PNG to write (local or cloud storage).
    probs: float [len_ref, 4] per-step probabilities (start, end, inside, outside)
      of the valid reference steps; None for a model without them (a comparator that
      scores whole segments): no curves panel.
    predicted: the predicted ``[start, end)`` in reference steps.
    groundtruth: the annotated ``[start, end)``, when known.
    attention: float [len_ref, heads] H^matt, or None (no heat map panel).
    groups: the attention's head groups ``(num_heads, kernel, dilation)``, for the
      heat map's row labels.
    attention_label: what the attention's rows are (`vreloc_jax.family.Family.attention_rows`).
    title: the figure's title (which pair, which checkpoint).
    seconds_per_step: when given, a second x axis in seconds.
    length: the reference's valid steps, when ``probs`` is None (default: up to the
      last segment's end).

  Raises:
    ValueError: the arrays' shapes do not agree.
  """
  import matplotlib  # Imported lazily: only figures need it.
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  if probs is not None:
    probs = np.asarray(probs, np.float32)
    if probs.ndim != 2 or probs.shape[1] != 4:
      raise ValueError(f"probs must be [len_ref, 4], got {probs.shape}")
    length = probs.shape[0]
  else:
    length = length or int(max(predicted[1], groundtruth[1] if groundtruth is not None else 0))
  has_attention = attention is not None and np.asarray(attention).size > 0
  if has_attention:
    attention = np.asarray(attention, np.float32)
    if attention.ndim != 2 or attention.shape[0] != length:
      raise ValueError(f"attention must be [len_ref={length}, heads], got {attention.shape}")
  heights = [0.6] + ([2.0] if probs is not None else []) + ([2.4] if has_attention else [])
  fig, axes = plt.subplots(len(heights), 1, figsize=(10, 1.2 + 1.3 * sum(heights)),
                           sharex=True, gridspec_kw={"height_ratios": heights}, squeeze=False)
  axes = axes[:, 0]
  steps = np.arange(length)
  edges = np.arange(length + 1) - 0.5

  timeline = axes[0]
  bars = []
  if groundtruth is not None:
    bars.append(("ground truth", groundtruth, "tab:green"))
  bars.append(("predicted", predicted, "tab:orange"))
  for y, (name, (start, end), color) in enumerate(bars):
    timeline.broken_barh([(start - 0.5, end - start)], (y - 0.35, 0.7), color=color)
    timeline.text(end - 0.3, y, f" [{start}, {end})", va="center", fontsize=8)
  timeline.set_yticks(range(len(bars)), [b[0] for b in bars], fontsize=8)
  timeline.set_ylim(-0.6, len(bars) - 0.4)
  timeline.invert_yaxis()
  if title:
    timeline.set_title(title, fontsize=9)

  if probs is not None:
    curves = axes[1]
    for name, column, color in _CURVES:
      curves.plot(steps, probs[:, column], color=color, label=name, linewidth=1.2)
    if groundtruth is not None:
      curves.axvspan(groundtruth[0] - 0.5, groundtruth[1] - 0.5, color="tab:green", alpha=0.08)
    curves.set_ylim(0.0, 1.0)
    curves.set_ylabel("probability", fontsize=8)
    curves.legend(loc="upper right", fontsize=7, ncol=3)

  if has_attention:
    heat = axes[-1]
    image = heat.pcolormesh(edges, np.arange(attention.shape[1] + 1) - 0.5, attention.T,
                            cmap="viridis", shading="flat")
    heat.invert_yaxis()
    heat.set_ylabel(attention_label, fontsize=8)
    if groups:
      for row, label in head_labels(groups):
        heat.axhline(row - 0.5, color="white", linewidth=0.5)
        heat.text(length - 0.5, row + 0.5, f" {label}", va="top", fontsize=7)
    # The colour bar sits outside the panel, so that all panels keep the same x extent.
    fig.colorbar(image, cax=heat.inset_axes([1.07, 0.0, 0.015, 1.0]))
  axes[-1].set_xlabel("reference step", fontsize=8)
  axes[-1].set_xlim(-0.5, length - 0.5)
  if seconds_per_step:
    top = axes[0].secondary_xaxis("top", functions=(lambda s: s * seconds_per_step,
                                                    lambda t: t / seconds_per_step))
    top.set_xlabel("seconds", fontsize=8)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=110)
  plt.close(fig)
  storage.write_bytes(path, buffer.getvalue())
