"""User-supplied class labels per image, with the label set declared (config.data.label_set), for S1's pixel
embedding and fusion classifier; the taxonomy rules (data/taxonomy.py) remain the default way to make labels.

Where the labels are:
  config.data.labels_file = PATH    JSON Lines `{"image": "images/x.jpg", "label": "dog"}` or a .tsv with the
                                    columns image, label
  config.data.labels_field = NAME   a field NAME of each record of the folder's captions.jsonl
Images are named as in captions.jsonl (systems/classifier/image_names.py). A label outside label_set, an unknown image, or an
image given two different labels is an error naming the line (systems/classifier/line_records.py); an image without a label
is unlabelled (-1) and counted in the features report.
"""
from __future__ import annotations

import json
import os

import ml_collections
import numpy as np
from absl import logging

from xmodal_jax import errors
from xmodal_jax.data import records
from xmodal_jax.systems.classifier import image_names, line_records

COLUMNS = ("image", "label")


def declared(data_config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The declared label set (empty: labels come from the taxonomy)."""
  names = tuple(data_config.get("label_set", ()) or ())
  has_source = bool(data_config.get("labels_file", "") or data_config.get("labels_field", ""))
  if bool(names) != has_source:
    raise errors.ConfigError("User labels need both config.data.label_set (the class names) and one of "
                             "config.data.labels_file / config.data.labels_field; set both or neither.")
  if data_config.get("labels_file", "") and data_config.get("labels_field", ""):
    raise errors.ConfigError("Set config.data.labels_file or config.data.labels_field, not both.")
  if len(set(names)) != len(names) or not all(isinstance(n, str) and n.strip() for n in names):
    raise errors.ConfigError(f"config.data.label_set={names}: give distinct, non-empty class names.")
  return names


def load(data_config: ml_collections.ConfigDict, image_ids: np.ndarray) -> np.ndarray:
  """int32 [N]: the label index (into the declared set) of each image of `image_ids`, -1 = unlabelled."""
  names = declared(data_config)
  index = {n: i for i, n in enumerate(names)}
  by_name = image_names.image_ids_by_name(data_config, "config.data.labels_file / labels_field")
  source = str(data_config.source)

  def parse(fields, where):
    image = image_names.lookup(by_name, line_records.text_field(fields["image"], where, "image", "Name the image."),
                               where, source)
    label = fields["label"]
    if label not in index:
      raise line_records.bad(where, f"label {label!r} is not in config.data.label_set {names}",
                             "Use one of the declared labels, or declare it in config.data.label_set.")
    return image, index[label]

  if data_config.get("labels_file", ""):
    rows, summary = line_records.read(os.path.abspath(str(data_config.labels_file)), COLUMNS,
                                      lambda fields, where: (parse(fields, where), where),
                                      what="label file (config.data.labels_file)")
  else:
    rows, summary = _field_rows(data_config, parse)
  labels: dict[int, tuple[int, str]] = {}
  for (image, label), where in rows:
    if image in labels and labels[image][0] != label:
      raise line_records.bad(where, f"image {image} is labelled {names[label]!r} here but {names[labels[image][0]]!r} "
                             f"at {labels[image][1]}", "Give each image one label.")
    labels[image] = (label, where)
  out = np.asarray([labels.get(i, (-1, ""))[0] for i in np.asarray(image_ids).tolist()], np.int32)
  logging.info("Labels %s: %d of %d images of the split labelled.", summary.describe(), int(np.sum(out >= 0)), len(out))
  return out


def _field_rows(data_config: ml_collections.ConfigDict, parse):
  """(image, label) per captions.jsonl record that has the field, with its line."""
  field = str(data_config.labels_field)
  path = os.path.join(os.path.abspath(str(data_config.source).partition(":")[2]), records.CAPTIONS_FILE)

  def read(fields, where):
    obj = {"image": fields["image"], "label": fields.get(field)}
    return None if obj["label"] is None else (parse(obj, where), where)

  rows, summary = line_records.read(path, ("image",), read, what="caption file (config.data.labels_field)",
                                    required=1)
  return [r for r in rows if r is not None], summary
