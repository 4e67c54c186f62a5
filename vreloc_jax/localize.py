"""Where in this reference does this query happen? A trained model on pairs of your choosing.

  python -m vreloc_jax.localize --model=DIR --features=FILE \
      --query=VIDEO:START-END --reference=VIDEO[:START-END] [--fps=30] [--plot=pair.png]
  python -m vreloc_jax.localize --workdir=W [--checkpoint=best] ...
  python -m vreloc_jax.localize --model=DIR --pairs=PAIRS.json --output=OUT.jsonl
  python -m vreloc_jax.localize --model=DIR --query=clip.mp4[:START-END] \
      --reference=long.mp4 --weights=FILE --pca=FILE [--plot=pair.png]

``--model`` is an export (``python -m vreloc_jax.export``); ``--workdir`` exports the
run's ``--checkpoint`` to a temporary directory first (a few seconds). Videos are
named as in the feature file (``v_<id>`` or ``<id>``); ranges are in feature steps,
``[START, END)`` (end exclusive; one step is 16 frames, as in the benchmark). A
reference without a range is the whole video. ``--features`` defaults to the
features of the data the run trained on.

For each pair it prints the segment found: in feature steps of the reference
video, in frames, and in seconds when ``--fps`` (frames per second) or
``--duration`` (the reference video's length in seconds) is given, with its
score (the model's confidence in [0, 1]: the mean p_inside over the segment, or a
comparator's own candidate score). ``--pairs`` takes a JSON
list of ``{"query": "VIDEO:S-E", "reference": "VIDEO[:S-E]"}`` (optionally
``"fps"``, ``"duration"``, ``"groundtruth": [s, e]``) and writes one JSON line per
pair to ``--output`` (written whole at the end), or prints them.

Video files: a query and reference that name video files (ranges in seconds) are turned into
features by the C3D extractor (`vreloc_jax.features.inputs`), with the flags of
``python -m vreloc_jax.features`` (``--weights``, ``--pca``, ``--mean``, ``--clip_batch``); the
segment is printed in steps, frames and seconds of the reference video, with the extractor's
settings (the JSON lines record them). A model whose feature dimension differs from the
extractor's is refused before any video is read, with what to do.

Limits, checked before anything runs: a query longer than the model's largest
query bucket is refused (the run was trained on queries of at most that many
steps; choose a shorter range). A reference longer than the largest reference
bucket is not refused: the model runs on windows of that length sliding by half
of it, and the segment of the window with the highest score is reported (the
output says how many windows were used).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from typing import Any, Sequence

from absl import app
from absl import flags
import numpy as np

from vreloc_jax import cli
from vreloc_jax import exported as model_lib
from vreloc_jax import storage
from vreloc_jax.data import features as features_lib

FLAGS = flags.FLAGS
_RANGE = re.compile(r"^(?P<video>.+?)(?::(?P<start>\d+)-(?P<end>\d+))?$")


def define_flags() -> None:
  """Command-line flags; defined only when run as a program (the module is importable)."""
  flags.DEFINE_string("model", None, "An export directory (python -m vreloc_jax.export).")
  flags.DEFINE_string("workdir", None, "A work directory; its --checkpoint is exported first.")
  flags.DEFINE_string("checkpoint", "best", "With --workdir: best, latest, min_loss_c or a step.")
  flags.DEFINE_string("features", None, "HDF5 file or directory of v_<id>.npy (default: the "
                      "run's data).")
  flags.DEFINE_string("query", None, "VIDEO:START-END, the query clip in feature steps; or a "
                      "video file, FILE[:START-END] in seconds.")
  flags.DEFINE_string("reference", None, "VIDEO or VIDEO:START-END, where to look; or a video "
                      "file, FILE[:START-END] in seconds.")
  flags.DEFINE_list("groundtruth", None, "START,END of the true segment in the reference video, "
                    "when known (drawn in --plot).")
  flags.DEFINE_float("fps", None, "Frames per second of the reference video (for seconds).")
  flags.DEFINE_float("duration", None, "Length of the reference video in seconds (for seconds).")
  flags.DEFINE_string("plot", None, "Write the pair's figure (paper Fig. 4) to this PNG.")
  flags.DEFINE_string("pairs", None, "A JSON list of pairs to localize (see the docstring).")
  flags.DEFINE_string("output", None, "With --pairs: the JSON-lines file to write.")
  from vreloc_jax.features import extractor  # pylint: disable=g-import-not-at-top
  extractor.define_flags()  # --weights, --pca, --mean, --clip_batch: for video files.
  flags.register_multi_flags_validator(
      ["model", "workdir"], lambda f: (f["model"] is None) != (f["workdir"] is None),
      message="pass exactly one of --model and --workdir")


@dataclasses.dataclass(frozen=True)
class Span:
  """A range of feature steps of a video; ``end`` None: to the video's end."""

  video: str
  start: int
  end: int | None

  @classmethod
  def parse(cls, text: str, what: str) -> "Span":
    """``VIDEO`` or ``VIDEO:START-END`` (feature steps, end exclusive)."""
    match = _RANGE.match(text.strip()) if isinstance(text, str) else None
    if not match:
      raise ValueError(f"{what} {text!r} is not VIDEO or VIDEO:START-END")
    video = match["video"]
    if match["start"] is None:
      return cls(video, 0, None)
    start, end = int(match["start"]), int(match["end"])
    if end <= start:
      raise ValueError(f"{what} {text!r}: the range [{start}, {end}) is empty or inverted")
    return cls(video, start, end)

  def read(self, store: features_lib.FeatureStore, what: str) -> tuple[np.ndarray, int]:
    """The span's features (float32 [length, D]) and its start, checked against the video."""
    video = self.resolve(store, what)
    total = store.source.num_features(video)
    end = total if self.end is None else self.end
    if end > total:
      raise ValueError(f"{what} v_{video}:{self.start}-{end} ends past the video's "
                       f"{total} feature steps")
    return store.window(video, self.start, end), self.start

  def resolve(self, store: features_lib.FeatureStore, what: str) -> str:
    """The video's id in the store: as given, or without a ``v_`` prefix."""
    candidates = [self.video] + ([self.video[2:]] if self.video.startswith("v_") else [])
    for video in candidates:
      try:
        store.source.num_features(video)
        return video
      except ValueError as e:
        error = e
    raise ValueError(f"{what}: {error}") from None


@dataclasses.dataclass
class Localized:
  """The segment found for one pair, in the reference video's feature steps."""

  query: str
  reference: str
  segment: tuple[int, int]  # [start, end) in the reference video's feature steps.
  score: float  # The model's confidence, in [0, 1] (`exported.ExportedModel.predict`).
  windows: int  # Reference windows the model ran on (1 unless the reference was slid over).
  window: tuple[int, int]  # The window the segment was found in.
  probs: np.ndarray  # [window length, 4], of that window.
  attention: np.ndarray  # [window length, heads], of that window.

  def record(self, fps: float | None = None, duration: float | None = None,
             num_features: int | None = None) -> dict[str, Any]:
    """The JSON line of this result (seconds when fps, or duration and num_features, given)."""
    start, end = self.segment
    out: dict[str, Any] = {
        "query": self.query, "reference": self.reference, "segment": [start, end],
        "frames": [start * features_lib.FRAMES_PER_FEATURE,
                   end * features_lib.FRAMES_PER_FEATURE],
        "score": round(self.score, 6), "windows": self.windows, "window": list(self.window)}
    if fps:
      out["seconds"] = [round(f / fps, 3) for f in out["frames"]]
    elif duration and num_features:
      out["seconds"] = [round(s / num_features * duration, 3) for s in (start, end)]
    return out


def windows_of(length: int, size: int) -> list[tuple[int, int]]:
  """Windows of ``size`` steps sliding by half of it that cover ``[0, length)``."""
  if length <= size:
    return [(0, length)]
  stride = max(1, size // 2)
  starts = list(range(0, length - size + 1, stride))
  if starts[-1] + size < length:
    starts.append(length - size)
  return [(s, s + size) for s in starts]


def localize(model: Any, store: features_lib.FeatureStore, query: Span, reference: Span
             ) -> Localized:
  """Localizes one query in one reference with an exported model (`vreloc_jax.exported`).

  Raises:
    ValueError: an unknown video, a range out of the video, non-finite features, a
      query longer than the model's largest query bucket (the message says what to do).
  """
  query_features, _ = query.read(store, "query")  # [len_query, D]
  largest_query = max(model.query_buckets)
  if len(query_features) > largest_query:
    raise ValueError(f"the query has {len(query_features)} feature steps; this model takes at "
                     f"most {largest_query} (its largest query bucket, what it was trained "
                     "on): choose a shorter query range")
  reference_features, offset = reference.read(store, "reference")  # [len_ref, D]
  spans = windows_of(len(reference_features), max(model.reference_buckets))
  size = max(b - a for a, b in spans)
  batch = len(spans)
  q = np.broadcast_to(query_features, (batch, *query_features.shape))
  r = np.zeros((batch, size, reference_features.shape[1]), np.float32)  # [windows, size, D]
  for i, (a, b) in enumerate(spans):
    r[i, :b - a] = reference_features[a:b]
  out = model.predict(q, [len(query_features)] * batch, r, [b - a for a, b in spans])
  scores = out["score"].tolist()  # [windows]
  best = int(np.argmax(scores))
  a, b = spans[best]
  s, e = (int(v) for v in out["segments"][best])
  return Localized(
      query=f"v_{query.resolve(store, 'query')}:{query.start}-"
            f"{query.start + len(query_features)}",
      reference=f"v_{reference.resolve(store, 'reference')}:{offset}-"
                f"{offset + len(reference_features)}",
      segment=(offset + a + s, offset + a + e), score=scores[best], windows=batch,
      window=(offset + a, offset + b), probs=out["probs"][best, :b - a],
      attention=out["attention"][best, :b - a])


def describe(result: Localized, fps: float | None, duration: float | None,
             num_features: int | None) -> str:
  """The lines printed for one result."""
  record = result.record(fps, duration, num_features)
  lines = [f"query {result.query} in reference {result.reference}:",
           f"  segment [{record['segment'][0]}, {record['segment'][1]}) feature steps, "
           f"frames [{record['frames'][0]}, {record['frames'][1]})"
           + (f", seconds [{record['seconds'][0]:.2f}, {record['seconds'][1]:.2f})"
              if "seconds" in record else "")
           + f"; score {result.score:.3f}"]
  if result.windows > 1:
    lines.append(f"  (the reference is longer than the model's largest bucket: slid "
                 f"{result.windows} windows of {result.window[1] - result.window[0]} steps over "
                 f"it; the segment is from window [{result.window[0]}, {result.window[1]}))")
  return "\n".join(lines)


def plot(result: Localized, path: str, model: Any,
         groundtruth: Sequence[int] | None = None) -> None:
  """The figure of a result (`vreloc_jax.figures.plot_pair`), over its window."""
  from vreloc_jax import figures  # Imported lazily: only figures need matplotlib.
  a = result.window[0]
  truth = None
  if groundtruth is not None:
    truth = (int(groundtruth[0]) - a, int(groundtruth[1]) - a)
  # A comparator that scores whole segments has no per-step probabilities to draw.
  probs = result.probs if model.per_step_probabilities else None
  figures.plot_pair(path, probs, (result.segment[0] - a, result.segment[1] - a),
                    groundtruth=truth, attention=result.attention,
                    groups=model.metadata.get("config", {}).get("model", {}).get(
                        "attention_groups"),
                    attention_label=model.attention_rows,
                    title=f"query {result.query} in {result.reference} (window from step {a})",
                    length=result.window[1] - a)


def _load_model(model_dir: str | None, workdir: str | None, checkpoint: str, tmp: str) -> Any:
  if model_dir is None:
    from vreloc_jax import export  # Imported lazily: it needs the training code.
    model_dir = os.path.join(tmp, "model")
    export.export_model(workdir, checkpoint, model_dir, platforms=("cpu",), verify=False)
  return model_lib.load(model_dir)


def _features_path(model: Any, features: str | None) -> str:
  if features:
    return features
  data = model.metadata.get("config", {}).get("data", {})
  if data.get("features"):
    return data["features"]
  data_dir = data.get("resolved_dir") or data.get("dir")
  if not data_dir:
    raise ValueError("the model does not record its data; pass --features")
  return features_lib.find_features(data_dir)


def _num_features(store: features_lib.FeatureStore, span: Span) -> int:
  return store.source.num_features(span.resolve(store, "reference"))


class _Inputs:
  """Where a pair's features come from: the feature file, or video files (read on demand)."""

  def __init__(self, model: Any):
    self.model = model
    self.store: features_lib.FeatureStore | None = None
    self.videos = None  # vreloc_jax.features.inputs.VideoInputs, once a video file is named.

  def spans(self, query: str, reference: str, what: tuple[str, str] = ("query", "reference")
            ) -> tuple[Span, Span, features_lib.FeatureStore, float | None]:
    """The query's and reference's spans, their store, and the reference's frame rate."""
    from vreloc_jax.features import inputs  # pylint: disable=g-import-not-at-top
    named = [inputs.parse(query), inputs.parse(reference)]
    if named == [None, None]:
      if self.store is None:
        self.store = features_lib.open_features(_features_path(self.model, FLAGS.features),
                                                expected_dim=self.model.feature_dim)
      return Span.parse(query, what[0]), Span.parse(reference, what[1]), self.store, None
    if None in named:
      raise ValueError(f"{what[named.index(None)]} {[query, reference][named.index(None)]!r} "
                       "is not a video file, but the other one is: give both as video files "
                       "or both as videos of the feature file")
    if self.videos is None:
      from vreloc_jax.features import extractor  # pylint: disable=g-import-not-at-top
      self.videos = inputs.VideoInputs(extractor.from_flags(FLAGS), self.model.feature_dim)
    (q, qa, qb), (r, ra, rb) = (self.videos.add(s, w) for s, w in zip(named, what))
    return Span(q, qa, qb), Span(r, ra, rb), self.videos.store, self.videos.fps[r]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  from vreloc_jax import distributed  # pylint: disable=g-import-not-at-top  (jax and absl only)
  distributed.quiet_library_logs()
  with cli.one_line_errors("vreloc_jax.localize"):
    if FLAGS.pairs is None and (FLAGS.query is None or FLAGS.reference is None):
      raise ValueError("pass --query and --reference, or --pairs")
    if FLAGS.pairs is not None and (FLAGS.query or FLAGS.reference):
      raise ValueError("pass either --pairs or --query/--reference, not both")
    with tempfile.TemporaryDirectory() as tmp:
      model = _load_model(FLAGS.model, FLAGS.workdir, FLAGS.checkpoint, tmp)
      inputs = _Inputs(model)
      if FLAGS.pairs is None:
        truth = [int(v) for v in FLAGS.groundtruth] if FLAGS.groundtruth else None
        if truth is not None and (len(truth) != 2 or truth[1] <= truth[0]):
          raise ValueError(f"--groundtruth must be START,END with END > START, got {truth}")
        query, reference, store, fps = inputs.spans(FLAGS.query, FLAGS.reference,
                                                    ("--query", "--reference"))
        result = localize(model, store, query, reference)
        print(describe(result, fps or FLAGS.fps, FLAGS.duration,
                       _num_features(store, reference)))
        if store is not inputs.store:
          print(f"  videos: {inputs.videos.describe(query.video, reference.video)}")
          print(f"  features: {inputs.videos.extractor.describe()}")
        if FLAGS.plot:
          plot(result, FLAGS.plot, model, truth)
          print(f"figure: {FLAGS.plot}")
        return
      try:
        requests = storage.read_json(FLAGS.pairs)
      except FileNotFoundError:
        raise ValueError(f"pairs file {FLAGS.pairs} does not exist") from None
      if not isinstance(requests, list) or not requests:
        raise ValueError(f"{FLAGS.pairs} must hold a non-empty JSON list of pairs")
      lines = []
      for k, request in enumerate(requests):
        if not isinstance(request, dict) or "query" not in request or "reference" not in request:
          raise ValueError(f"{FLAGS.pairs}: pair {k} needs 'query' and 'reference'")
        try:
          query, reference, store, fps = inputs.spans(request["query"], request["reference"])
          result = localize(model, store, query, reference)
        except ValueError as e:
          raise ValueError(f"{FLAGS.pairs}: pair {k}: {e}") from None
        record = result.record(fps or request.get("fps", FLAGS.fps),
                               request.get("duration", FLAGS.duration),
                               _num_features(store, reference))
        if store is not inputs.store:
          record.update(inputs.videos.record(query.video, reference.video))
        if "groundtruth" in request:
          record["groundtruth"] = list(request["groundtruth"])
        lines.append(json.dumps(record))
      if FLAGS.output:
        storage.write_text(FLAGS.output, "\n".join(lines) + "\n")
        print(f"{len(lines)} pairs localized: {FLAGS.output}")
      else:
        print("\n".join(lines))


if __name__ == "__main__":
  define_flags()
  cli.run(main, "vreloc_jax.localize")
