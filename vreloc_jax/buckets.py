"""The padded length of a batch: the smallest bucket that holds its longest sequence.

Shared by the batches of training and evaluation (`vreloc_jax.data.batching`) and by
the exported model's loader (`vreloc_jax.exported`), so that a model is run at the
lengths it was evaluated at. The standard library only.
"""

from __future__ import annotations

from typing import Sequence


def bucket_for(length: int, buckets: Sequence[int], what: str = "sequence",
               advice: str = "raise the config's bucket lengths") -> int:
  """The smallest of ``buckets`` that holds ``length`` steps.

  Raises:
    ValueError: none does (the message names ``what`` and ends with ``advice``).
  """
  fitting = [int(b) for b in buckets if length <= b]
  if not fitting:
    raise ValueError(f"a {what} of {length} steps is longer than the largest {what} bucket "
                     f"{max(buckets)} (buckets: {sorted(int(b) for b in buckets)}); {advice}")
  return min(fitting)
