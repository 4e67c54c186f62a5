"""Statistics of a benchmark directory's split files: the source of `layout`'s constants."""

from __future__ import annotations

import collections
from typing import Any

import numpy as np

from vreloc_jax import storage
from vreloc_jax.data.synthetic import layout


def measure_statistics(data_dir: str) -> dict[str, Any]:
  """Statistics of a benchmark directory's split files (real or synthetic).

  Returns:
    A dict with, over the three splits together: ``window_lengths``,
    ``segment_lengths``, ``relative_starts`` / ``relative_ends`` (s / W and
    e / W) as numpy arrays; ``entries_per_video`` counts (k = 1, 2, …);
    per split ``class_entry_counts`` (sorted), ``entries``, ``videos``,
    ``classes``; and the background tables ``gap_quantiles``,
    ``lead_quantiles``, ``trail_quantiles`` (at `layout.QUANTILE_LEVELS`) with the
    chances of an unlisted instance ``p_hidden_before`` / ``_between`` /
    ``_after``.
  """
  lengths = storage.read_json(storage.join(data_dir, "length.json"))
  n_feat = {k: v["n_feat"] for k, v in lengths.items()}
  out: dict[str, Any] = {"splits": {}}
  windows, segs, starts, ends, per_video = [], [], [], [], []
  gaps, leads, trails = [], [], []
  hidden = {"before": [0, 0], "between": [0, 0], "after": [0, 0]}
  for split in layout.SPLITS:
    raw = storage.read_json(storage.join(data_dir, f"{split}.json"))
    by_video = collections.defaultdict(list)
    for e in raw:
      by_video[e["id"]].append(e)
      (a, b), (s, t) = e["location"], e["groundtruth"]
      windows.append(b - a)
      segs.append(t - s)
      starts.append(s / (b - a))
      ends.append(t / (b - a))
    out["splits"][split] = {
        "entries": len(raw), "videos": len(by_video),
        "classes": len({e["label"] for e in raw}),
        "class_entry_counts": sorted(collections.Counter(e["label"] for e in raw).values())}
    for vid, es in by_video.items():
      per_video.append(len(es))
      es = sorted(es, key=lambda e: e["location"][0] + e["groundtruth"][0])
      spans = [(e["location"][0], e["location"][1], e["location"][0] + e["groundtruth"][0],
                e["location"][0] + e["groundtruth"][1]) for e in es]
      a, b, st, en = spans[0]
      if b - a < layout.MAX_WINDOW:
        hidden["before"][a != 0] += 1
        (leads if a == 0 else gaps).append(st if a == 0 else st - a - 1)
      a, b, st, en = spans[-1]
      if b - a < layout.MAX_WINDOW:
        hidden["after"][b != n_feat[vid]] += 1
        (trails if b == n_feat[vid] else gaps).append(
            n_feat[vid] - en if b == n_feat[vid] else b - 1 - en)
      for (pa, pb, pst, pen), (qa, qb, qst, qen) in zip(spans[:-1], spans[1:]):
        if pb - pa >= layout.MAX_WINDOW or qb - qa >= layout.MAX_WINDOW:
          continue
        adjacent = qa == pen - 1 and pb == qst + 1
        hidden["between"][not adjacent] += 1
        gaps.extend([qst - pen] if adjacent else [pb - 1 - pen, qst - qa - 1])
  out.update({
      "window_lengths": np.asarray(windows), "segment_lengths": np.asarray(segs),
      "relative_starts": np.asarray(starts), "relative_ends": np.asarray(ends),
      "entries_per_video": np.bincount(per_video)[1:].tolist(),
      "gap_quantiles": np.percentile(np.maximum(gaps, 0), layout.QUANTILE_LEVELS).tolist(),
      "lead_quantiles": np.percentile(leads, layout.QUANTILE_LEVELS).tolist(),
      "trail_quantiles": np.percentile(trails, layout.QUANTILE_LEVELS).tolist(),
      **{f"p_hidden_{k}": v[1] / max(1, sum(v)) for k, v in hidden.items()}})
  return out


def print_statistics(data_dir: str) -> None:
  stats = measure_statistics(data_dir)
  q = (0, 5, 10, 25, 50, 75, 90, 95, 100)
  for name in ("window_lengths", "segment_lengths", "relative_starts", "relative_ends"):
    values = stats[name]
    print(f"{name:16s} mean {values.mean():8.3f}  percentiles {q}: "
          f"{np.round(np.percentile(values, q), 3).tolist()}")
  for split, s in stats["splits"].items():
    print(f"{split}: {s['entries']} entries, {s['videos']} videos, {s['classes']} classes; "
          f"per-class counts {s['class_entry_counts']}")
  print("entries per video", stats["entries_per_video"])
  for name in ("gap_quantiles", "lead_quantiles", "trail_quantiles"):
    print(name, [int(np.floor(v)) for v in stats[name]])
  print("p_hidden before / between / after: "
        f"{stats['p_hidden_before']:.3f} / {stats['p_hidden_between']:.3f} / "
        f"{stats['p_hidden_after']:.3f}")
