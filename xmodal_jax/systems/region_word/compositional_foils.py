"""Compositional foils of shapes world captions: the same words, re-bound so that the caption turns false.

A test of image-text matching models: given an image, does the model score its true caption above a foil made
of the very same words (a bag-of-words model cannot tell the two apart)?

  colour    two objects' colour words exchanged: "a red circle is left of a blue square" ->
            "a blue circle is left of a red square" (`colour_swap`);
  relation  one spatial relation replaced by its opposite: "... left of ..." -> "... right of ...",
            "above" <-> "below" (`relation_swap`).

Both work on the whitespace-split words of a caption and re-join them with single spaces (shapes world captions
are single-spaced, with "," and ":" as words). A foil function returns None, without drawing from its `rng`,
exactly when no such foil of the caption exists. `build_choices` picks, per image and kind, one (true caption,
foil) item for a two-way choice (systems/region_word/pair_choice_evaluator.py scores them).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from xmodal_jax import errors
from xmodal_jax.data import shapes_world

# "left" / "right" are relations only when followed by "of" ("left of", "to the left of"); alone they are
# positions ("in the top left", "on the left side").
_OPPOSITE_BEFORE_OF = {"left": "right", "right": "left"}
_OPPOSITE = {"above": "below", "below": "above"}


def _phrases(words: Sequence[str]) -> list[int]:
  """Indices of the colour words of the "<colour> <shape>" noun phrases of `words`."""
  return [i for i in range(len(words) - 1) if words[i] in shapes_world.COLORS and words[i + 1] in shapes_world.SHAPES]


def colour_swap(caption: str, rng: np.random.Generator) -> str | None:
  """The caption with the colour words of two of its "<colour> <shape>" noun phrases exchanged, or None.

  The two phrases are drawn uniformly among the pairs whose colours differ and whose shapes differ. Only such a
  swap is certainly false of the image: every shapes world caption names every object of its image exactly once,
  so a caption stands for the multiset of its (colour, shape) pairs, and swapping the colours of (cA, sA) and
  (cB, sB) replaces them by (cB, sA) and (cA, sB), a different multiset exactly when cA != cB and sA != sB.
  Swapping the colours of two objects of the same shape ("a red circle and a blue circle") describes the same
  image again, and two of the same colour give back the caption itself. Sizes between article and colour are
  fine ("a large red circle and a small blue square" -> "a large blue circle and a small red square"). An article
  right before a swapped colour follows it ("an orange circle and a red square" -> "a red circle and an orange
  square"), so that grammar gives no foil away.

  Args:
    caption: a caption, e.g. "a red circle is left of a blue square".
    rng: the generator of the random choice (not drawn from when the result is None).

  Returns:
    The foil re-joined with single spaces, or None when no two phrases differ in both colour and shape.
  """
  words = caption.split()
  phrases = _phrases(words)
  pairs = [(i, j) for a, i in enumerate(phrases) for j in phrases[a + 1:]
           if words[i] != words[j] and words[i + 1] != words[j + 1]]
  if not pairs:
    return None
  i, j = pairs[int(rng.integers(len(pairs)))]
  words[i], words[j] = words[j], words[i]
  for c in (i, j):  # "an orange circle" / "a red square" -> "a red circle" / "an orange square"
    if c and words[c - 1] in ("a", "an"):
      words[c - 1] = "an" if words[c][0] in "aeiou" else "a"
  return " ".join(words)


def _noun_phrase(words: Sequence[str], colour: int) -> tuple[str, ...]:
  """The words of the noun phrase whose colour word is at `colour`: (size,) colour, shape."""
  start = colour - 1 if colour and words[colour - 1] in shapes_world.SIZES else colour
  return tuple(words[start:colour + 2])


def relation_swap(caption: str, rng: np.random.Generator) -> str | None:
  """The caption with one of its spatial relations replaced by the opposite one, or None.

  Relations are "left of" <-> "right of" (so "to the left of" -> "to the right of") and "above" <-> "below";
  one occurrence is drawn uniformly. A shapes world relation is derived from the distinct grid cells of the two
  objects, so its opposite is false of them. That holds only when the caption's noun phrases tell the objects
  apart: a caption that names the same phrase twice ("a large red circle is left of a large red circle", two
  identical objects) is true either way round, so it gets None too.

  Args:
    caption: a caption, e.g. "a red circle is left of a blue square , which is above a green cross".
    rng: the generator of the random choice (not drawn from when the result is None).

  Returns:
    The foil re-joined with single spaces, or None when the caption has no relation (or repeats a noun phrase).
  """
  words = caption.split()
  spots = [i for i, w in enumerate(words)
           if w in _OPPOSITE or (w in _OPPOSITE_BEFORE_OF and i + 1 < len(words) and words[i + 1] == "of")]
  named = [_noun_phrase(words, i) for i in _phrases(words)]
  if not spots or len(set(named)) < len(named):
    return None
  i = spots[int(rng.integers(len(spots)))]
  words[i] = {**_OPPOSITE, **_OPPOSITE_BEFORE_OF}[words[i]]
  return " ".join(words)


FOILS: dict[str, Callable[[str, np.random.Generator], "str | None"]] = {
    "colour": colour_swap, "relation": relation_swap}


def build_choices(caption_lists: Sequence[Sequence[str]], *, seed: int = 0,
                  kinds: Sequence[str] = ("colour", "relation")) -> dict:
  """Two-way choice items (true caption vs foil) of a split's images, at most one per image and kind.

  For each image and each kind (in that order), the image's captions are tried in a random order and the first
  one that has a foil of the kind gives the item. Deterministic given `seed`.

  Args:
    caption_lists: per image, its captions (e.g. ShapesWorldSplit.captions).
    seed: seed of the random orders and foils.
    kinds: foil kinds, keys of FOILS.

  Returns:
    {"image_rows": int64 [K], the image (index into caption_lists) of each item; "true_captions": list of K
    true captions; "foil_captions": list of K foils; "kinds": list of K kinds}, items by image, then kind.

  Raises:
    ValueError: an unknown or no kind.
    errors.DataError: not one item can be built (e.g. captions without colours or relations).
  """
  kinds = tuple(kinds)
  unknown = [k for k in kinds if k not in FOILS]
  if unknown or not kinds:
    raise ValueError(f"Foil kinds {list(kinds)}: use one or more of {sorted(FOILS)}.")
  rng = np.random.default_rng(seed)
  out = {"image_rows": [], "true_captions": [], "foil_captions": [], "kinds": []}
  for row, captions in enumerate(caption_lists):
    for kind in kinds:
      for c in rng.permutation(len(captions)):
        foil = FOILS[kind](captions[c], rng)
        if foil is not None:
          out["image_rows"].append(row)
          out["true_captions"].append(captions[c])
          out["foil_captions"].append(foil)
          out["kinds"].append(kind)
          break
  if not out["kinds"]:
    raise errors.DataError(f"No compositional foil of kind(s) {list(kinds)} can be made from the captions of these "
                           f"{len(caption_lists)} images: colour foils need two '<colour> <shape>' phrases that "
                           "differ in colour and shape, relation foils a 'left of' / 'right of' / 'above' / 'below'.")
  out["image_rows"] = np.asarray(out["image_rows"], np.int64)
  return out
