"""Files anywhere: local paths and cloud storage (``gs://``, ``s3://``) through `etils.epath`.

Every file the project reads or writes under a work directory, a data
directory or a generated benchmark's cache goes through these functions, so
``--workdir=gs://bucket/run`` on a Cloud TPU VM writes to the bucket and
not into a local folder named ``gs:``. `etils.epath` (which orbax already
uses for checkpoints) gives one `Path` type for both; cloud paths use its
fsspec backend (``gcsfs`` for ``gs://``, installed separately on clusters
that need it).

Writes are never half-done: a local file is written to a temporary file in
the same directory and renamed into place (a kill leaves the old file or the
new one, plus at worst a ``.tmp-`` file that the next write in that directory
does not trip over); a cloud object is published only when its upload
completes, so a plain write is already all-or-nothing there. Appends to a
cloud object (which cannot be appended to) rewrite it whole.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, BinaryIO, Union

from etils import epath

PathLike = Union[str, os.PathLike]


def as_path(path: PathLike) -> epath.Path:
  """``path`` as an `epath.Path` (a local path or a ``scheme://`` URI)."""
  return epath.Path(path)


def is_local(path: PathLike) -> bool:
  """Whether ``path`` is on the local file system (no ``scheme://`` prefix)."""
  return "://" not in os.fspath(path)


def join(path: PathLike, *parts: str) -> str:
  """``path / part / …`` as a string, for local paths and URIs alike."""
  return os.fspath(as_path(path).joinpath(*parts))


def absolute(path: PathLike) -> str:
  """An absolute local path, or the URI unchanged."""
  return os.path.abspath(os.fspath(path)) if is_local(path) else os.fspath(path)


def exists(path: PathLike) -> bool:
  return as_path(path).exists()


def is_file(path: PathLike) -> bool:
  return as_path(path).is_file()


def is_dir(path: PathLike) -> bool:
  return as_path(path).is_dir()


def list_names(path: PathLike) -> list[str]:
  """The names in a directory (empty when it does not exist)."""
  path = as_path(path)
  return sorted(p.name for p in path.iterdir()) if path.is_dir() else []


def make_dirs(path: PathLike) -> None:
  as_path(path).mkdir(parents=True, exist_ok=True)


def read_text(path: PathLike) -> str:
  return as_path(path).read_text(encoding="utf-8")


def read_json(path: PathLike) -> Any:
  """The JSON content of a file.

  Raises:
    FileNotFoundError: no such file.
    ValueError: the file is not valid JSON (the message names it).
  """
  text = read_text(path)
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"{os.fspath(path)} is not valid JSON ({e})") from None


def open_binary(path: PathLike) -> BinaryIO:
  """A binary file object for reading (what h5py and numpy accept for a cloud object)."""
  return as_path(path).open("rb")


def write_bytes(path: PathLike, data: bytes) -> None:
  """Writes a file whole: the old content or the new one, never a mix."""
  if not is_local(path):
    target = as_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)  # An object appears when its upload completes.
    return
  path = os.path.abspath(os.fspath(path))
  directory = os.path.dirname(path)
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make the file private.
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_text(path: PathLike, text: str) -> None:
  """Writes a text file whole (`write_bytes`, UTF-8)."""
  write_bytes(path, text.encode("utf-8"))


def write_json(path: PathLike, obj: Any, indent: int | None = 1) -> None:
  """Writes JSON whole (`write_text`); nothing is written if ``obj`` cannot be encoded."""
  write_text(path, json.dumps(obj, indent=indent) + "\n")


def append_text(path: PathLike, text: str) -> None:
  """Appends to a text file (a cloud object is rewritten whole: objects cannot grow)."""
  if is_local(path):
    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
      f.write(text)
    return
  old = read_text(path) if exists(path) else ""
  write_text(path, old + text)


def copy_tree(source: str, destination: PathLike, last: str | None = None) -> None:
  """Copies a local directory's files to ``destination`` (any storage), ``last`` last.

  Used to upload a generated benchmark: its manifest goes last, so a copy cut
  short is never taken for a complete one.
  """
  make_dirs(destination)
  names = sorted(os.listdir(source), key=lambda n: (n == last, n))
  for name in names:
    src = os.path.join(source, name)
    dst = as_path(destination) / name
    if os.path.isdir(src):
      copy_tree(src, dst)
    else:
      epath.Path(src).copy(dst, overwrite=True)


def process_alive(pid: int) -> bool:
  """Whether process ``pid`` of this host runs (it may hold files it has not finished)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Someone else's process.
    return True
  return True
