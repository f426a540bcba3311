"""Image names -> image ids of a caption folder (`folder:PATH` sources), for inputs that name images by file: S1's
click logs and label files. An image is named by its path as written in captions.jsonl ("images/x.jpg") or by
its file name ("x.jpg") when no other image has that file name."""
from __future__ import annotations

import functools
import os

import ml_collections

from xmodal_jax import errors
from xmodal_jax.data import records
from xmodal_jax.systems.classifier import line_records

AMBIGUOUS = -1


def image_ids_by_name(data_config: ml_collections.ConfigDict, what: str) -> dict[str, int]:
  """{name: image id} of the folder source of `data_config`; `what` names the input that needs it."""
  kind, _, root = str(data_config.source).partition(":")
  if kind != "folder":
    raise errors.ConfigError(f"{what} names images by file, which needs a folder:PATH source; "
                             f"config.data.source is {data_config.source!r}.")
  return _names(os.path.abspath(root), bool(data_config.allow_outside_paths))


@functools.lru_cache(maxsize=4)
def _names(root: str, allow_outside: bool) -> dict[str, int]:
  found, _ = records.read_caption_folder(root, skip_bad=True, check_images=False, max_bad_fraction=1.0,
                                         allow_outside=allow_outside)
  names: dict[str, int] = {}
  for record in found:
    names[os.path.relpath(record.image_path, root)] = record.image_id
    base = os.path.basename(record.image_path)
    names[base] = AMBIGUOUS if base in names and names[base] != record.image_id else record.image_id
  return names


def lookup(names: dict[str, int], name: str, where: str, source: str) -> int:
  """The image id of `name`, or a BadInputError naming the line and the fix."""
  image_id = names.get(name.strip().removeprefix("./"), None)
  if image_id is None:
    raise line_records.bad(where, f"image {name!r} is not in {source}",
                           "Name images by their path in captions.jsonl (or their file name).")
  if image_id == AMBIGUOUS:
    raise line_records.bad(where, f"image file name {name!r} is used by several images of {source}",
                           "Name it by its path as written in captions.jsonl.")
  return image_id
