"""Generated benchmark directories: written whole or not at all, and found again by manifest.

Both generators of the project (`vreloc_jax.data.synthetic`,
`vreloc_jax.data.recordings`) build a directory in the benchmark's on-disk
format. `build_directory` writes it into a temporary directory beside the
target and renames it into place, so an interrupted build never leaves a
half-written dataset; the manifest written last makes a second call with the
same settings a cache hit. A directory on cloud storage (``gs://…``) is built
locally and uploaded file by file, the manifest last: an upload cut short has
no manifest and is redone by the next build. `digest` fingerprints a built
directory so that several hosts can check they hold the same benchmark.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from typing import Any, Callable, Sequence

from vreloc_jax import storage


def dump_json(path: str, obj: Any, **kwargs) -> None:
  """Writes JSON into a directory being built (a local temporary one)."""
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, **kwargs)


def read_manifest(path: str) -> dict[str, Any] | None:
  """The manifest at `path` (any storage), or None when it is missing or unreadable."""
  try:
    found = storage.read_json(path)
  except (OSError, ValueError):
    return None
  return found if isinstance(found, dict) else None


def _tmp_prefix(out_dir: str) -> str:
  """Temporary build directories of ``out_dir`` start with this (then ``<pid>-``)."""
  return f".{os.path.basename(out_dir)}.tmp-{socket.gethostname()}-"


def remove_abandoned(out_dir: str) -> list[str]:
  """Removes the temporary build directories of ``out_dir`` that a killed build left.

  Only directories of this host whose builder process is gone are removed, so a
  build running at the same time (this host or another sharing the directory) is
  left alone.

  Returns:
    The paths removed.
  """
  parent, prefix = os.path.dirname(out_dir), _tmp_prefix(out_dir)
  removed = []
  for name in os.listdir(parent) if os.path.isdir(parent) else []:
    pid = name[len(prefix):].split("-", 1)[0]
    if name.startswith(prefix) and pid.isdigit() and not storage.process_alive(int(pid)):
      shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
      removed.append(os.path.join(parent, name))
  return removed


def digest(data_dir: str, names: Sequence[str]) -> bytes:
  """SHA-256 over the named files of a directory (a missing one counts as empty)."""
  h = hashlib.sha256()
  for name in names:
    path = storage.join(data_dir, name)
    h.update(name.encode() + b"\0")
    if storage.is_file(path):
      h.update(storage.as_path(path).read_bytes())
    h.update(b"\0")
  return h.digest()


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
  if not storage.is_local(out_dir):
    return _build_remote(os.fspath(out_dir), manifest, manifest_name, fill, what, overwrite,
                         start_time)
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
  remove_abandoned(out_dir)
  tmp = tempfile.mkdtemp(dir=parent, prefix=_tmp_prefix(out_dir) + f"{os.getpid()}-")
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would make the dataset private.
  try:
    summary = fill(tmp)
    dump_json(os.path.join(tmp, manifest_name), manifest, indent=1)
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
      # Another process (sharing this directory) finished first while we built.
      shutil.rmtree(tmp, ignore_errors=True)
      if same_manifest(manifest_path, manifest):
        return cached()
      raise ValueError(f"{out_dir} was filled with something other than {what} while it "
                       "was being built; choose another --out or pass --overwrite")
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


def _build_remote(out_dir: str, manifest: dict[str, Any], manifest_name: str,
                  fill: Callable[[str], dict[str, Any]], what: str, overwrite: bool,
                  start_time: float) -> dict[str, Any]:
  """`build_directory` on cloud storage: built locally, uploaded with the manifest last."""
  manifest_path = storage.join(out_dir, manifest_name)
  if same_manifest(manifest_path, manifest):
    return {**(read_manifest(manifest_path) or {}), "cached": True,
            "seconds": time.time() - start_time}
  present = storage.list_names(out_dir)
  if present and read_manifest(manifest_path) is not None and not overwrite:
    raise ValueError(f"{out_dir} already holds something other than {what}; "
                     "choose another --out or pass --overwrite")
  tmp = tempfile.mkdtemp(prefix="vreloc_jax-build-")
  try:
    summary = fill(tmp)
    built = set(os.listdir(tmp)) | {manifest_name}
    if present and not overwrite and not set(present) <= built:
      raise ValueError(f"{out_dir} already holds files other than {what} "
                       f"({sorted(set(present) - built)[:3]}); choose another --out or pass "
                       "--overwrite")
    if read_manifest(manifest_path) is not None:  # Replaced: no longer a complete dataset.
      storage.as_path(manifest_path).unlink()
    dump_json(os.path.join(tmp, manifest_name), manifest, indent=1)
    storage.copy_tree(tmp, out_dir, last=manifest_name)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return {**manifest, **summary, "cached": False, "seconds": time.time() - start_time}
