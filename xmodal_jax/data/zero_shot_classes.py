"""Class labels and zero-shot prompts of a split, for the zero-shot classification evaluator of the contrastive
tasks: shapes world's 10 classes (dominant shape x crowdedness; prompts `shapes_world.label_prompts`), or on
captioned real data the taxonomy classes derived from the captions (data/taxonomy.py, S1's labels: -1 where no
class has `label_min_votes` of the captions; prompts `taxonomy.class_prompts`)."""
from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from xmodal_jax.data import shapes_world, sources, taxonomy


@dataclasses.dataclass
class ZeroShotClasses:
  """labels int32 [N] (-1 = no class); names [C]; prompts: C lists of prompt texts."""
  labels: np.ndarray
  names: tuple[str, ...]
  prompts: list[list[str]]


def zero_shot_classes(data_config: ml_collections.ConfigDict, split: sources.SplitData) -> ZeroShotClasses:
  if str(data_config.source).partition(":")[0] == "shapes":
    return ZeroShotClasses(np.asarray(split.extras.label, np.int32), shapes_world.LABEL_NAMES,
                           shapes_world.label_prompts())
  concepts = taxonomy.FLICKR8K_CONCEPTS
  labels = taxonomy.caption_labels(split.captions, concepts, min_votes=int(data_config.get("label_min_votes", 3)))
  names = taxonomy.class_names(concepts)
  return ZeroShotClasses(labels, names, taxonomy.class_prompts(names))
