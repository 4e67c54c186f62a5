"""Padded, bucketed batches laid out for data-parallel accelerators.

Shapes are padded to a small fixed set of bucket lengths so that the number
of compiled programs stays bounded: every query to ``query_buckets`` and every
reference to the smallest of ``reference_buckets`` that holds the longest
reference of the batch. A batch is a dict of numpy arrays:

  query             f32 [batch, len_query, dim]
  query_mask        bool [batch, len_query]      True on valid steps
  query_length      i32 [batch]
  reference         f32 [batch, len_ref, dim]
  reference_mask    bool [batch, len_ref]
  reference_length  i32 [batch]
  segment           i32 [batch, 2]   [s, e) in the reference; absent in weak training
  example_mask      bool [batch]     False for fillers of the last evaluation batch

Padding holds zeros. A global batch is described by its examples on every
process alike (cheap: indices only); each process then reads the features of
its own contiguous slice only.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator, Sequence

import numpy as np

from vreloc_jax.buckets import bucket_for
from vreloc_jax.data.features import FeatureStore
from vreloc_jax.data.pairs import Example, Pair, example_from_pair


def local_slice(global_size: int, process_index: int, process_count: int) -> slice:
  """The contiguous part of a global batch that one process materializes."""
  if global_size % process_count:
    raise ValueError(f"global batch {global_size} is not divisible by {process_count} processes")
  per = global_size // process_count
  return slice(process_index * per, (process_index + 1) * per)


def batch_layout(size: int, query_length: int, reference_length: int, dim: int,
                 with_segment: bool) -> dict[str, tuple[tuple[int, ...], type]]:
  """Name -> (shape, dtype) of every array of a batch (the module docstring's table)."""
  layout = {
      "query": ((size, query_length, dim), np.float32),
      "query_mask": ((size, query_length), np.bool_),
      "query_length": ((size,), np.int32),
      "reference": ((size, reference_length, dim), np.float32),
      "reference_mask": ((size, reference_length), np.bool_),
      "reference_length": ((size,), np.int32),
      "example_mask": ((size,), np.bool_),
  }
  if with_segment:
    layout["segment"] = ((size, 2), np.int32)
  return layout


def make_batch(examples: Sequence[Example], store: FeatureStore, query_length: int,
               reference_length: int, example_mask: Sequence[bool] | None = None) -> dict[str, np.ndarray]:
  """Reads and pads the features of ``examples`` into one batch dict.

  ``segment`` is included only if every example carries one.
  """
  n, dim = len(examples), store.feature_dim
  if dim is None:
    first = examples[0]
    store.window(first.query_video, *first.query_span)
    dim = store.feature_dim
  annotated = [ex.segment is not None for ex in examples]
  if any(annotated) and not all(annotated):
    raise ValueError("a batch mixes annotated and unannotated examples")
  with_segment = all(annotated)
  batch = {name: np.zeros(shape, dtype) for name, (shape, dtype)
           in batch_layout(n, query_length, reference_length, dim, with_segment).items()}
  batch["example_mask"][:] = True if example_mask is None else np.asarray(example_mask, bool)
  for i, ex in enumerate(examples):
    lq, lr = ex.query_length, ex.reference_length
    if lq > query_length or lr > reference_length:
      raise ValueError(f"example of video v_{ex.reference_video} does not fit its bucket "
                       f"({lq}>{query_length} or {lr}>{reference_length})")
    batch["query"][i, :lq] = store.window(ex.query_video, *ex.query_span)
    batch["query_mask"][i, :lq] = True
    batch["query_length"][i] = lq
    batch["reference"][i, :lr] = store.window(ex.reference_video, *ex.reference_span)
    batch["reference_mask"][i, :lr] = True
    batch["reference_length"][i] = lr
    if with_segment:
      batch["segment"][i] = ex.segment
  return batch


class TrainBatches:
  """Training batches, each a pure function of ``(seed, step)``.

  The batch of step ``t`` is drawn with ``numpy.random.default_rng((seed, t))``:
  a first example fixes the reference bucket (so buckets come with their
  natural frequency), and more examples are drawn until the global batch is
  full of examples of that bucket. A resumed run therefore sees exactly the
  batches an uninterrupted one would.
  """

  def __init__(self, sample: Callable[[np.random.Generator], Example], store: FeatureStore,
               global_batch_size: int, query_buckets: Sequence[int],
               reference_buckets: Sequence[int], seed: int, process_index: int = 0,
               process_count: int = 1):
    self.sample = sample
    self.store = store
    self.global_batch_size = global_batch_size
    self.query_buckets = tuple(query_buckets)
    self.reference_buckets = tuple(reference_buckets)
    self.seed = seed
    self.slice = local_slice(global_batch_size, process_index, process_count)

  def examples(self, step: int) -> list[Example]:
    """The global batch of a step, on every process alike (no features read)."""
    rng = np.random.default_rng((self.seed, step))
    first = self.sample(rng)
    bucket = bucket_for(first.reference_length, self.reference_buckets, "reference")
    chosen = [first]
    for _ in range(10_000 * self.global_batch_size):
      if len(chosen) == self.global_batch_size:
        break
      ex = self.sample(rng)
      if bucket_for(ex.reference_length, self.reference_buckets, "reference") == bucket:
        chosen.append(ex)
    else:
      raise RuntimeError(f"could not fill a batch of reference bucket {bucket}")
    return chosen

  def _buckets(self, examples: Sequence[Example]) -> tuple[int, int]:
    """(query bucket, reference bucket) of a batch of ``examples``."""
    return (bucket_for(max(ex.query_length for ex in examples), self.query_buckets, "query"),
            bucket_for(max(ex.reference_length for ex in examples), self.reference_buckets,
                       "reference"))

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's slice of the batch of ``step``."""
    examples = self.examples(step)
    return make_batch(examples[self.slice], self.store, *self._buckets(examples))

  def layout(self, step: int, dim: int) -> dict[str, tuple[tuple[int, ...], type]]:
    """The global batch of ``step``'s `batch_layout`, without reading features.

    With one query bucket only the first example is drawn (it fixes the reference
    bucket), so this is cheap enough to plan a whole run's compilations.
    """
    if len(self.query_buckets) == 1:
      first = self.sample(np.random.default_rng((self.seed, step)))  # as `examples` draws it
      buckets = (self.query_buckets[0],
                 bucket_for(first.reference_length, self.reference_buckets, "reference"))
      annotated = first.segment is not None
    else:
      examples = self.examples(step)
      buckets = self._buckets(examples)
      annotated = all(ex.segment is not None for ex in examples)
    return batch_layout(self.global_batch_size, *buckets, dim, annotated)


def eval_batches(pairs: Sequence[Pair], store: FeatureStore, global_batch_size: int,
                 query_buckets: Sequence[int], reference_buckets: Sequence[int],
                 process_index: int = 0, process_count: int = 1
                 ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
  """Evaluation batches over all pairs, grouped by reference bucket.

  Yields:
    ``(pair_indices, local_batch)``: the global batch's pair indices
    (``-1`` for fillers, whose ``example_mask`` is False) and this process's
    slice of the batch.
  """
  examples = [example_from_pair(p) for p in pairs]
  part = local_slice(global_batch_size, process_index, process_count)
  for query_len, bucket, members in _eval_groups(examples, query_buckets, reference_buckets):
    for start in range(0, len(members), global_batch_size):
      chunk = members[start:start + global_batch_size]
      indices = np.full((global_batch_size,), -1, np.int64)
      indices[:len(chunk)] = chunk
      filled = [examples[i if i >= 0 else chunk[0]] for i in indices]
      batch = make_batch(filled[part], store, query_len, bucket, (indices >= 0)[part])
      yield indices, batch


def _eval_groups(examples: Sequence[Example], query_buckets: Sequence[int],
                 reference_buckets: Sequence[int]) -> list[tuple[int, int, list[int]]]:
  """(query bucket, reference bucket, example indices) of each reference bucket, in order."""
  by_bucket: dict[int, list[int]] = {}
  for i, ex in enumerate(examples):
    by_bucket.setdefault(bucket_for(ex.reference_length, reference_buckets, "reference"), []).append(i)
  return [(bucket_for(max(examples[i].query_length for i in by_bucket[b]), query_buckets, "query"),
           b, by_bucket[b]) for b in sorted(by_bucket)]


def eval_layouts(pairs: Sequence[Pair], global_batch_size: int, query_buckets: Sequence[int],
                 reference_buckets: Sequence[int], dim: int
                 ) -> list[dict[str, tuple[tuple[int, ...], type]]]:
  """The `batch_layout` of each global batch shape `eval_batches` yields, in its order."""
  examples = [example_from_pair(p) for p in pairs]
  annotated = bool(examples) and all(ex.segment is not None for ex in examples)
  return [batch_layout(global_batch_size, query_len, bucket, dim, annotated)
          for query_len, bucket, _ in _eval_groups(examples, query_buckets, reference_buckets)]


def prefetch(iterator: Iterator, size: int = 2) -> Iterator:
  """Runs ``iterator`` in a background thread, ``size`` items ahead.

  An error in ``iterator`` is raised in the consumer; a consumer that stops early
  (closes the generator) also stops the thread.
  """
  q: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()
  done = object()

  def put(item) -> bool:  # False once the consumer has gone.
    while not stop.is_set():
      try:
        q.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def worker():
    try:
      for item in iterator:
        if not put(item):
          return
      put(done)
    except BaseException as e:  # pylint: disable=broad-except  (re-raised by the consumer)
      put(e)

  threading.Thread(target=worker, daemon=True).start()
  try:
    while True:
      item = q.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
