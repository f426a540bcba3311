"""A folder of a user's photos as export input (`xmodal export --images=DIR`): every JPEG / PNG / WebP file under
DIR (recursive; hidden files and folders skipped; other files ignored), in sorted order of the relative path, and
each decoded as the run's data is (`data/image_files.load_image_file`, as `xmodal caption` reads files: upright by
EXIF, 16-bit scaled, alpha over white, greyscale to RGB, resized as the data was and centre-cropped at
`data.image_size`; a corrupt, truncated or extreme file is a `BadInputError`).

  folder = ImageFolder(DIR)                      # lists the files (errors.DataError if there is none)
  folder.files, folder.fingerprint()             # relative paths; sha256 of (path, size, mtime) of every file
  images, good, skipped = folder.load(range(0, 10), task.data_config())
      # uint8 [n_good, S, S, 3], int64 positions of the good files [n_good], [{"file", "reason"}] of the others
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import os
from typing import Sequence

import numpy as np

from xmodal_jax import errors
from xmodal_jax.data import image_files
from xmodal_jax.data import records as records_lib

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


class ImageFolder:
  """The image files under `root`; see the module docstring."""

  def __init__(self, root: str):
    self.root = os.path.abspath(root)
    if not os.path.isdir(self.root):
      raise errors.MissingError(f"--images={root}: no such folder; give a folder of JPEG / PNG / WebP photos.")
    files, self.ignored = [], 0
    for folder, dirs, names in os.walk(self.root):
      dirs[:] = sorted(d for d in dirs if not d.startswith("."))
      for name in names:
        if name.startswith("."):
          continue
        if name.lower().endswith(EXTENSIONS):
          files.append(os.path.relpath(os.path.join(folder, name), self.root).replace(os.sep, "/"))
        else:
          self.ignored += 1
    self.files = sorted(files)
    if not self.files:
      raise errors.DataError(f"--images={root}: no JPEG / PNG / WebP file in it or its subfolders ({self.ignored} "
                             "other files ignored); point --images at a folder of photos.")

  def __len__(self) -> int:
    return len(self.files)

  def fingerprint(self) -> str:
    """sha256 of every file's relative path, size and modification time: another file list, another export."""
    digest = hashlib.sha256()
    for name in self.files:
      stat = os.stat(os.path.join(self.root, name))
      digest.update(f"{name}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()

  def _decode(self, position: int, data_config) -> np.ndarray | str:
    """The centre crop uint8 [S, S, 3] of file `position` (`image_files.load_image_file`), or why it is unusable."""
    path = os.path.join(self.root, self.files[position])
    try:
      return image_files.load_image_file(path, data_config)
    except records_lib.BadInputError as e:
      return str(e)
    except (OSError, ValueError) as e:  # e.g. the file vanished or became unreadable since it was listed
      return f"{path}: {type(e).__name__}: {e}"

  def load(self, positions: Sequence[int], data_config, threads: int = 8
           ) -> tuple[np.ndarray, np.ndarray, list[dict[str, str]]]:
    """The files at `positions` decoded (in threads) as a run of `data_config` reads them -> (uint8 [n_good, S, S, 3]
    with S = data_config.image_size, int64 positions [n_good], skipped [{"file": relative path, "reason": message}])."""
    positions = [int(p) for p in positions]
    with concurrent.futures.ThreadPoolExecutor(max(1, min(threads, len(positions)))) as pool:
      decoded = list(pool.map(lambda p: self._decode(p, data_config), positions))
    good = [(p, d) for p, d in zip(positions, decoded) if not isinstance(d, str)]
    skipped = [{"file": self.files[p], "reason": d} for p, d in zip(positions, decoded) if isinstance(d, str)]
    size = int(data_config.image_size)
    images = np.stack([d for _, d in good]) if good else np.zeros([0, size, size, 3], np.uint8)
    return images, np.asarray([p for p, _ in good], np.int64), skipped
