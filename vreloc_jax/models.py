"""The model families by name (``config.model_name``): the one place that lists them.

A configuration without ``model_name`` (the paper's model, and work directories of
every version) is "relocalizer". Everything else reaches a model through its family
(`vreloc_jax.family.Family`).
"""

from __future__ import annotations

import ml_collections

from vreloc_jax import family
from vreloc_jax.comparators import cgbm
from vreloc_jax.comparators import sst
from vreloc_jax.comparators import video_level
from vreloc_jax.relocalizer import model as relocalizer

FAMILIES: dict[str, type[family.Family]] = {
    "relocalizer": relocalizer.ReLocalizerFamily,  # The paper's model.
    "cgbm": cgbm.CGBMFamily,  # Feng et al.'s Cross Gated Bilinear Matching.
    "sst": sst.SSTFamily,  # Buch et al.'s query-agnostic SST proposals.
    "video_level": video_level.VideoLevelFamily,  # Feng et al.'s video-level baseline.
}


def model_name(config: ml_collections.ConfigDict) -> str:
  """``config.model_name``; absent: "relocalizer", the paper's."""
  return config.get("model_name", "relocalizer")


def family_class(config: ml_collections.ConfigDict) -> type[family.Family]:
  """The family of the configured model."""
  name = model_name(config)
  if name not in FAMILIES:
    raise ValueError(f"model_name must be one of {sorted(FAMILIES)}, got {name!r}")
  return FAMILIES[name]


def create(config: ml_collections.ConfigDict) -> family.Family:
  """The configured model's family, holding its module."""
  return family_class(config)(config)
