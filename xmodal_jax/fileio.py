"""The one path layer for workdirs and the files in them: local paths or URLs (gs://BUCKET/...).

A local path goes through `os` and the builtin `open`, exactly as before this layer existed. A URL
(anything with "://") goes through `etils.epath`, which reads and writes gs:// with tf.io.gfile when
TensorFlow is installed (it is: clu needs it) and with gcsfs otherwise. Paths stay strings everywhere;
`os.path.join` is right for URLs too ("gs://b/run" + "x" -> "gs://b/run/x").

Atomic writes (`write_atomic`): a local file is written to a temporary name and `os.replace`d, so a crash never
leaves half a file. A URL is written directly: a GCS object becomes visible only when its upload completes
(tf.io.gfile / gcsfs upload on close), so a reader sees the old object or the whole new one; a GCS "rename" is a
copy and a delete, which is no more atomic than that.

orbax-checkpoint takes a gs:// directory itself (`absolute` leaves URLs unchanged; never abspath one).
"""
from __future__ import annotations

import builtins
import glob as glob_lib
import hashlib
import io
import os
import shutil
from typing import IO, Any, Callable


def is_local(path: Any) -> bool:
  """True for a local path; False for a URL such as gs://BUCKET/dir."""
  return "://" not in os.fspath(path)


def _url(path: Any):
  from etils import epath  # pylint: disable=import-outside-toplevel  (installed with orbax)
  return epath.Path(os.fspath(path))


def absolute(path: str) -> str:
  """os.path.abspath of a local path; a URL unchanged."""
  return os.path.abspath(path) if is_local(path) else path


def exists(path: str) -> bool:
  return os.path.exists(path) if is_local(path) else _url(path).exists()


def isdir(path: str) -> bool:
  return os.path.isdir(path) if is_local(path) else _url(path).is_dir()


def isfile(path: str) -> bool:
  if is_local(path):
    return os.path.isfile(path)
  url = _url(path)
  return url.exists() and not url.is_dir()


def makedirs(path: str) -> None:
  """mkdir -p (exist_ok). On GCS directories are implicit; this writes nothing there that matters."""
  if is_local(path):
    os.makedirs(path, exist_ok=True)
  else:
    _url(path).mkdir(parents=True, exist_ok=True)


def open(path: str, mode: str = "r", encoding: str | None = None) -> IO:  # pylint: disable=redefined-builtin
  """The builtin open for a local path; epath's (tf.io.gfile) for a URL, text as UTF-8."""
  if is_local(path):
    return builtins.open(path, mode, encoding=encoding) if encoding else builtins.open(path, mode)
  return _url(path).open(mode)


def glob(pattern: str) -> list[str]:
  """Matching paths (strings, unsorted for a local pattern as glob.glob gives them)."""
  if is_local(pattern):
    return glob_lib.glob(pattern)
  from etils import epath  # pylint: disable=import-outside-toplevel
  directory, name = os.path.split(pattern)
  return [os.fspath(p) for p in epath.Path(directory).glob(name)]


def remove(path: str) -> None:
  if is_local(path):
    os.remove(path)
  else:
    _url(path).unlink()


def rmtree(path: str) -> None:
  """Delete a directory tree; a missing one is no error."""
  if is_local(path):
    shutil.rmtree(path, ignore_errors=True)
  elif _url(path).exists():
    _url(path).rmtree()


def rename_dir(src: str, dst: str) -> None:
  """Move a directory to a name that does not exist: os.replace locally (atomic). A URL has no directories to
  rename (GCS: objects under a prefix): each file is copied, then the source deleted; not atomic, and done
  file by file because backends differ on what a directory rename leaves behind."""
  if is_local(src):
    os.replace(src, dst)
    return
  top = os.fspath(_url(src))
  for root, _, files in _url(src).walk():
    rel = os.fspath(root)[len(top):].lstrip("/")
    target = _url(os.path.join(dst, rel) if rel else dst)
    target.mkdir(parents=True, exist_ok=True)
    for name in files:
      (root / name).copy(target / name, overwrite=True)
  _url(src).rmtree()


def write_atomic(path: str, write: Callable[[IO], None], mode: str = "w", *, tmp: str | None = None) -> None:
  """`write(f)` into `path` so that no reader sees half a file: locally a temporary file (`tmp`, default
  PATH.tmp-PID) then os.replace; for a URL a direct write (see the module docstring: GCS object uploads are
  atomic)."""
  if is_local(path):
    tmp = tmp or f"{path}.tmp-{os.getpid()}"
    with builtins.open(tmp, mode) as f:
      write(f)
    os.replace(tmp, path)
    return
  with _url(path).open(mode) as f:
    write(f)


def file_sha256(path: Any) -> str:
  """The sha256 (hex) of a local file's bytes, read in chunks (hashlib.file_digest)."""
  with builtins.open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def read_bytes(path: str) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def load_npz(path: str):
  """np.load of an .npz: the file itself when local; the bytes, read whole, for a URL (np.load seeks)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  if is_local(path):
    return np.load(path)
  return np.load(io.BytesIO(read_bytes(path)))


def save_npz(path: str, **arrays) -> None:
  """np.savez to a local path (as np.savez writes it) or, built in memory, to a URL."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  if is_local(path):
    np.savez(path, **arrays)
    return
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  with open(path, "wb") as f:
    f.write(buffer.getvalue())
