"""Generated benchmark directories: written whole or not at all, and found again by manifest.

Both generators of the project (`vreloc_jax.data.synthetic`,
`vreloc_jax.data.recordings`) build a directory in the benchmark's on-disk
format. `build_directory` writes it into a temporary directory beside the
target and renames it into place, so an interrupted build never leaves a
half-written dataset; the manifest written last makes a second call with the
same settings a cache hit.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from typing import Any, Callable


def dump_json(path: str, obj: Any, **kwargs) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, **kwargs)


def read_manifest(path: str) -> dict[str, Any] | None:
  """The manifest at `path`, or None when it is missing or unreadable."""
  try:
    with open(path, "r", encoding="utf-8") as f:
      found = json.load(f)
  except (OSError, json.JSONDecodeError):
    return None
  return found if isinstance(found, dict) else None


def same_manifest(path: str, manifest: dict[str, Any]) -> bool:
  """Whether the manifest at `path` has every field of `manifest` with the same value."""
  found = read_manifest(path)
  if found is None:
    return False
  return {k: found.get(k) for k in manifest} == json.loads(json.dumps(manifest))


def build_directory(out_dir: str, manifest: dict[str, Any], manifest_name: str,
                    fill: Callable[[str], dict[str, Any]], what: str,
                    overwrite: bool = False) -> dict[str, Any]:
  """Builds a dataset directory atomically, or finds it already built.

  Args:
    out_dir: the directory to create.
    manifest: what identifies the dataset (generator, version, settings); written
      as ``<out_dir>/<manifest_name>`` after everything else.
    manifest_name: the manifest's file name.
    fill: writes the dataset's files into the directory it is given (a temporary
      one) and returns a summary.
    what: the dataset's description for error messages ("this synthetic dataset").
    overwrite: replace an existing, different dataset at `out_dir`.

  Returns:
    The manifest plus `fill`'s summary, ``cached`` (False) and ``seconds``; or,
    when `out_dir` already holds the same dataset, its manifest with ``cached``
    True.

  Raises:
    ValueError: `out_dir` holds something else (and not `overwrite`) or is a file.
  """
  start_time = time.time()
  out_dir = os.path.abspath(os.fspath(out_dir))
  manifest_path = os.path.join(out_dir, manifest_name)

  def cached() -> dict[str, Any]:
    return {**(read_manifest(manifest_path) or {}), "cached": True,
            "seconds": time.time() - start_time}

  if os.path.isdir(out_dir) and os.listdir(out_dir):
    if same_manifest(manifest_path, manifest):
      return cached()
    if not overwrite:
      raise ValueError(f"{out_dir} already holds something other than {what}; "
                       "choose another --out or pass --overwrite")
  elif os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise ValueError(f"{out_dir} exists and is not a directory")

  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out_dir)}.tmp-")
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would make the dataset private.
  try:
    summary = fill(tmp)
    dump_json(os.path.join(tmp, manifest_name), manifest, indent=1)
    if os.path.isdir(out_dir):
      if os.listdir(out_dir):  # overwrite=True: move the old dataset aside, then delete it.
        old = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out_dir)}.old-")
        os.rename(out_dir, os.path.join(old, "d"))
        os.rename(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
      else:
        os.rmdir(out_dir)
        os.rename(tmp, out_dir)
    else:
      os.rename(tmp, out_dir)
  except OSError:
    shutil.rmtree(tmp, ignore_errors=True)
    if same_manifest(manifest_path, manifest):  # Another process finished it first.
      return cached()
    raise
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return {**manifest, **summary, "cached": False, "seconds": time.time() - start_time}
