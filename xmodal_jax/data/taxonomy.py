"""One class label per Flickr8k image, derived from its captions (Flickr8k has no class labels).

The rule, in plain words:
- A caption votes for a class if it contains any of the class's trigger words as a whole word (words are
  `normalize_caption(caption).split()`).
- The image's label is the FIRST class, in `FLICKR8K_CONCEPTS` order, that at least `min_votes` (default 3) of its
  captions vote for. The order is a priority and part of the rule: 5 x "a dog runs through the snow" is "dog",
  "a boy rides a bike" is "bike", "a man holds a baby" is "child".
- Images where no class gets `min_votes` votes get label -1: they are dropped from classification and counted.

The concept list was tuned on the Flickr8k captions (train 6,000 / val 1,000 images): with it about 11% of the
images are dropped and the smallest class ("skateboard") has about 2.3% of the images (25 in val). Scenes,
activities and animals come first (they are what a photo is "about"), then people, children before adults.
"""
from __future__ import annotations

import collections
from typing import Sequence

import numpy as np

from xmodal_jax.data.text import normalize_caption

DROPPED = "(dropped)"

FLICKR8K_CONCEPTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("dog", ("dog", "dogs", "puppy", "puppies", "pup", "greyhound", "greyhounds", "terrier", "terriers", "poodle",
             "collie", "retriever", "doberman")),
    ("snow", ("snow", "snowy", "skier", "skiers", "skiing", "ski", "skis", "snowboarder", "snowboarders", "snowboard",
              "snowboarding", "sled", "sledding", "sleds", "snowmobile", "snowbank", "snowball", "snowsuit")),
    ("water", ("water", "ocean", "lake", "river", "pool", "beach", "sea", "shore", "surf", "surfer", "surfers",
               "surfing", "surfs", "surfboard", "wave", "waves", "swim", "swimming", "swims", "swimmer", "swimmers",
               "splash", "splashes", "splashing", "splashed", "wade", "wades", "wading", "stream", "fountain",
               "puddle", "boat", "boats", "canoe", "kayak", "kayaker", "kayaking", "waterskiing")),
    ("bike", ("bike", "bikes", "bicycle", "bicycles", "biker", "bikers", "biking", "cyclist", "cyclists", "bicyclist",
              "bicyclists", "bmx", "motorcycle", "motorcycles", "motorcyclist", "motorbike", "motorbikes")),
    ("skateboard", ("skateboard", "skateboards", "skateboarder", "skateboarders", "skateboarding", "skater",
                    "skaters")),
    ("ball sport", ("soccer", "football", "footballer", "basketball", "baseball", "softball", "rugby", "volleyball",
                    "tennis", "lacrosse", "goalie")),
    ("child", ("boy", "boys", "girl", "girls", "child", "children", "kid", "kids", "toddler", "toddlers", "baby",
               "babies", "infant")),
    ("woman", ("woman", "women", "lady", "ladies")),
    ("man", ("man", "men", "guy", "guys", "gentleman")),
)


# Zero-shot classification: a phrase per concept (what a caption of such a photo says) and the templates it fills.
FLICKR8K_PHRASES: dict[str, str] = {
    "dog": "a dog", "snow": "people in the snow", "water": "a person in the water", "bike": "a person riding a bike",
    "skateboard": "a skateboarder on a skateboard", "ball sport": "people playing soccer", "child": "a child",
    "woman": "a woman", "man": "a man"}
PROMPT_TEMPLATES = ("{}", "a photo of {} .", "a picture of {} .")


def class_prompts(names: Sequence[str] = (), templates: Sequence[str] = PROMPT_TEMPLATES) -> list[list[str]]:
  """Zero-shot prompts per class of FLICKR8K_CONCEPTS (or of `names`, each used as its own phrase when it has no
  entry in FLICKR8K_PHRASES): every template filled with the class's phrase."""
  names = tuple(names) or class_names()
  return [[t.format(FLICKR8K_PHRASES.get(n, n)) for t in templates] for n in names]


def class_names(concepts: Sequence[tuple[str, Sequence[str]]] = FLICKR8K_CONCEPTS) -> tuple[str, ...]:
  """The class names, in label order (label i is `class_names()[i]`)."""
  return tuple(name for name, _ in concepts)


def _check_concepts(concepts: Sequence[tuple[str, Sequence[str]]]) -> None:
  names = class_names(concepts)
  if not names or len(set(names)) != len(names) or DROPPED in names:
    raise ValueError(f"Concept names must be non-empty, unique and not {DROPPED!r}; got {names}.")
  for name, triggers in concepts:
    for word in triggers:
      if normalize_caption(word) != word or " " in word:
        raise ValueError(f"Trigger {word!r} of class {name!r} must be one normalised word (see normalize_caption).")


def caption_labels(captions_per_image: Sequence[Sequence[str]],
                   concepts: Sequence[tuple[str, Sequence[str]]] = FLICKR8K_CONCEPTS,
                   min_votes: int = 3) -> np.ndarray:
  """Label int32 [N]: the first class that >= min_votes of an image's captions mention, else -1 (dropped)."""
  if min_votes < 1:
    raise ValueError(f"min_votes must be >= 1, got {min_votes}.")
  _check_concepts(concepts)
  triggers = [frozenset(words) for _, words in concepts]
  labels = np.full(len(captions_per_image), -1, np.int32)
  for row, captions in enumerate(captions_per_image):
    words = [set(normalize_caption(c).split()) for c in captions]
    for label, trigger in enumerate(triggers):
      if sum(not trigger.isdisjoint(w) for w in words) >= min_votes:
        labels[row] = label
        break
  return labels


def class_distribution(labels: np.ndarray, names: Sequence[str]) -> dict[str, int]:
  """Images per class name, in class order, then the DROPPED ("(dropped)") count of label -1."""
  labels = np.asarray(labels)
  if labels.size and (labels.min() < -1 or labels.max() >= len(names)):
    raise ValueError(f"Labels must be in [-1, {len(names)}); got range [{labels.min()}, {labels.max()}].")
  counts = collections.Counter(labels.tolist())
  return {**{name: counts[i] for i, name in enumerate(names)}, DROPPED: counts[-1]}
