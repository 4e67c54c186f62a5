"""The pair figure (paper Fig. 4): drawn from model outputs, written whole, bad shapes named."""

import numpy as np
import pytest

from vreloc_jax import figures
from vreloc_jax.relocalizer import model


def _outputs(length=40, heads=40):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(length, 4))
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  return probs, rng.random((length, heads))


def test_plot_pair_writes_a_png(tmp_path):
  probs, attention = _outputs()
  path = tmp_path / "sub" / "pair.png"
  figures.plot_pair(str(path), probs, (10, 20), groundtruth=(12, 22), attention=attention,
                    groups=model.MULTISCALE_GROUPS, title="a pair", seconds_per_step=16 / 30)
  data = path.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
  from matplotlib import image
  pixels = image.imread(str(path))  # Decodes: [height, width, RGBA].
  assert pixels.shape == (847, 1100, 4)  # 10 x 7.7 inches at 110 dpi (three panels).
  assert pixels[..., :3].std() > 0.1  # Not a blank canvas.
  # Without attention (query-blind) or ground truth (a user's own pair): two panels.
  figures.plot_pair(str(tmp_path / "b.png"), probs, (0, 5), attention=np.zeros((40, 0)))
  assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
  # A comparator that scores whole segments (no per-step probabilities): the timeline alone.
  figures.plot_pair(str(tmp_path / "c.png"), None, (3, 9), groundtruth=(4, 8), length=40)
  assert image.imread(str(tmp_path / "c.png")).shape[0] < 300
  assert sorted(p.name for p in tmp_path.iterdir()) == ["b.png", "c.png", "sub"]


def test_head_labels_follow_the_groups():
  assert figures.head_labels(model.MULTISCALE_GROUPS) == [
      (0, "k1 d1"), (8, "k3 d1"), (16, "k3 d2"), (24, "k3 d3"), (32, "k3 d4")]


@pytest.mark.parametrize("probs_shape, attention_shape, message", [
    ((40, 3), (40, 40), r"probs must be \[len_ref, 4\]"),
    ((40, 4), (39, 40), r"attention must be \[len_ref=40, heads\]"),
])
def test_bad_shapes_are_named(tmp_path, probs_shape, attention_shape, message):
  with pytest.raises(ValueError, match=message):
    figures.plot_pair(str(tmp_path / "x.png"), np.zeros(probs_shape), (0, 1),
                      attention=np.ones(attention_shape))
  assert not (tmp_path / "x.png").exists()
