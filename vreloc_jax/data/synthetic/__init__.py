"""A synthetic stand-in for the ActivityNet re-localization benchmark (generator version 5).

  python -m vreloc_jax.data.synthetic --out=DIR [--seed=0] [--scale=1.0]
  python -m vreloc_jax.data.synthetic --out=DIR --splits_from=REAL_DIR
  python -m vreloc_jax.data.synthetic --out=DIR --positive_control
  python -m vreloc_jax.data.synthetic --measure=REAL_DIR

`generate` writes a directory in the real benchmark's on-disk format, so the
real readers read it unchanged: the split files, ``length.json``, the features
as one HDF5 file in the ActivityNet layout (group ``v_<id>``, dataset
``c3d_features`` ``[2 * n_feat - 1, 500]`` float16, a row every 8 frames) and a
manifest that makes a second call a cache hit; it is written beside the target
and renamed into place, so an interrupted run leaves nothing half-written.

Modules: `layout` (videos, instances and windows from the real split
statistics), `features` (the feature model), `writer` (the files),
`statistics` (measuring a benchmark directory). The feature model
(`features.FeatureParams`) gives what ActivityNet's C3D features have: a
per-video appearance that dominates similarity across videos; a video's own
*action look* on its action instances, which sets them apart from its
background without being shared across videos (what a query-agnostic
proposal model can learn); class-specific content shared by a class's
instances across videos (the order of its atoms, which only the query tells);
soft boundaries. It is calibrated on the paper's training-free and
query-agnostic rows, never on its own models' scores: the figures and the
record of why versions 2-4 were replaced are in docs/results.md ("Synthetic
benchmark (generator v5)").
"""

from vreloc_jax.data.synthetic.features import FEATURE_DIM
from vreloc_jax.data.synthetic.features import ControlParams
from vreloc_jax.data.synthetic.features import FeatureParams
from vreloc_jax.data.synthetic.features import make_world
from vreloc_jax.data.synthetic.features import render_video
from vreloc_jax.data.synthetic.layout import CLASS_ENTRY_COUNTS
from vreloc_jax.data.synthetic.layout import SPLITS
from vreloc_jax.data.synthetic.layout import scaled_class_counts
from vreloc_jax.data.synthetic.statistics import measure_statistics
from vreloc_jax.data.synthetic.writer import HDF5_DATASET
from vreloc_jax.data.synthetic.writer import HDF5_NAME
from vreloc_jax.data.synthetic.writer import MANIFEST_NAME
from vreloc_jax.data.synthetic.writer import POSITIVE_CONTROL
from vreloc_jax.data.synthetic.writer import VERSION
from vreloc_jax.data.synthetic.writer import class_subspace_projector
from vreloc_jax.data.synthetic.writer import generate
from vreloc_jax.data.synthetic.writer import generate_splits
