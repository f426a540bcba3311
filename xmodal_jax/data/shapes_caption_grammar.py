"""The grammar of shapes world captions: a parser, the (colour, shape) pairs a caption names, and their accuracy.

A generated caption can be checked for form (`parses`, `parse_rate`: is it a sentence the shapes world caption
templates could have written?) and for content (`mentioned_pairs`, `attribute_scores`: does it name the colours
and shapes of the objects in its image?), e.g. to evaluate a captioning model trained on the shapes world.

The grammar is that of `shapes_world._captions`, for 1..4 objects: every template (`_listing`, `_clauses`,
`_counted`, `_related`, `_single`, `_fronted`) with every opener, position phrase, relation phrase and suffix, and
each template's constraints (a caption gives sizes to all objects or to none, positions to all or none, a
count word that matches its number of objects, a suffix only with one object). It is finite, so the parser is a
regular expression over the caption's word tokens, hand-built here from the generator's own word lists and
phrase tuples: no parsing library knows this template grammar, and sharing the lists keeps the two in step.
"""
from __future__ import annotations

import functools
import re
from typing import Sequence

import numpy as np

from xmodal_jax.data import shapes_world as sw
from xmodal_jax.errors import DataError

_COLOR_NAMES = tuple(sw.COLORS)
_SHAPES, _SIZES = frozenset(sw.SHAPES), frozenset(sw.SIZES)
_COLORS = frozenset(_COLOR_NAMES)


# "," and ":" are optional: the library's tokenizers drop punctuation (data/text.normalize_caption), so a captioner
# trained on these captions writes them without it ("three shapes a small green cross a ...").
_COMMA = "(?: ,)? "
_COLON = "(?: :)?"


def _words(caption: str) -> list[str]:
  """Word tokens: lower-cased, split on whitespace ("," and ":" are tokens of their own, as the generator writes
  them: "a red circle , a blue square")."""
  return caption.lower().split()


def _any(options) -> str:
  """Regex alternation of literal token sequences, longest first."""
  return "(?:" + "|".join(re.escape(o) for o in sorted(set(options), key=len, reverse=True)) + ")"


# ----------------------------------------------------------------------------------------------------- parser


def _noun_phrase(with_size: bool, strict_articles: bool) -> str:
  """ "a red circle", "an orange cross" / "a large red circle": article [size] colour shape."""
  shape = _any(sw.SHAPES)
  if not strict_articles:
    size = f"{_any(sw.SIZES)} " if with_size else ""
    return f"(?:a|an) {size}{_any(_COLOR_NAMES)} {shape}"
  if with_size:  # The article agrees with the size word.
    return f"{_any(sw._article(size) for size in sw.SIZES)} {_any(_COLOR_NAMES)} {shape}"
  return f"{_any(sw._article(color) for color in _COLOR_NAMES)} {shape}"


def _join(part: str, k: int) -> str:
  """k parts as `shapes_world._join` writes them: "P", "P and P", "P , P and P", ..."""
  return part if k == 1 else _COMMA.join([part] * (k - 1)) + f" and {part}"


@functools.lru_cache(maxsize=2)
def _grammar(strict_articles: bool) -> re.Pattern:
  """The compiled regex of all captions (tokens joined by single spaces)."""
  np_ = {s: _noun_phrase(s, strict_articles) for s in (False, True)}
  position = _any(phrase for p in sw.POSITIONS for phrase in sw._position_phrases(p))
  relation = _any(phrase for phrases in sw._RELATION_PHRASES.values() for phrase in phrases)
  list_opener = _any(o for o in sw._LIST_OPENERS if o)
  clause_opener = _any(o for o in sw._CLAUSE_OPENERS if o)
  suffix = f"(?:{_any(s for s in sw._SUFFIXES if s)})?"  # Each suffix starts with a space.
  templates = []
  for k in range(1, sw.MAX_OBJECTS + 1):
    tail = suffix if k == 1 else ""
    # _listing: sizes and positions for all objects or none (only both with one object, never neither).
    for with_size, with_position in ((True, True),) if k == 1 else ((True, True), (False, True), (True, False)):
      part = np_[with_size] + (f" {position}" if with_position else "")
      templates.append(f"(?:{list_opener})?{_join(part, k)}{tail}")
    # _clauses: "a red circle is in the top left and ...", sizes for all or none (all with one object).
    for with_size in (True,) if k == 1 else (False, True):
      templates.append(f"(?:{clause_opener})?{_join(f'{np_[with_size]} is {position}', k)}{tail}")
    templates.append(_counted(k, np_[True], position) + tail)
    if k == 1:
      templates += _one_object(np_[True], position, suffix)
    else:
      templates += [_related(k, np_[s], relation) for s in (False, True)]
  return re.compile("|".join(f"(?:{t})" for t in templates))


def _counted(k: int, noun_phrase: str, position: str) -> str:
  """ "three shapes : a small green cross , ..."; a lone object also gets its position."""
  count, plural = sw._COUNT_WORDS[k - 1], "s" if k > 1 else ""
  noun = f"(?:shape|object){plural}"
  head = (f"(?:{count} {noun}{_COLON}|there {'is' if k == 1 else 'are'} {count} {noun}{_COLON}|"
          f"{count} {noun}{_COMMA}namely)")
  return f"{head} {_join(noun_phrase + (f' {position}' if k == 1 else ''), k)}"


def _related(k: int, noun_phrase: str, relation: str) -> str:
  """ "a red circle is left of a blue square , which is above a green cross" (k >= 2 objects)."""
  first = (f"(?:{noun_phrase} is {relation} {noun_phrase}|there is {noun_phrase} {relation} {noun_phrase}|"
           f"{noun_phrase} {relation} {noun_phrase})")
  return first + f"{_COMMA}which is {relation} {noun_phrase}" * (k - 2)


def _one_object(noun_phrase: str, position: str, suffix: str) -> list[str]:
  """_single ("just one small red circle at the top", "the only shape is ...") and _fronted ("at the top there is
  a small red circle"), each with an optional suffix."""
  label = f"{_any(sw.SIZES)} {_any(_COLOR_NAMES)} {_any(sw.SHAPES)}"
  return [f"{_any(sw._SINGLE_OPENERS)} {label} {position}{suffix}",
          f"the only (?:shape|object) is {noun_phrase} {position}{suffix}",
          f"{position} (?:there is|is) {noun_phrase}{suffix}"]


def parses(caption: str, *, strict_articles: bool = True) -> bool:
  """Whether `caption` is a sentence of the shapes world caption grammar (see the module docstring).

  Words are compared lower-cased and whitespace is collapsed; "," and ":" are optional, but where present must be
  separate tokens, as the generator writes them; there is no final full stop.

  Args:
    caption: the caption.
    strict_articles: require "an" before a vowel ("an orange circle") and "a" otherwise, as the generator writes
      them; False accepts either article before any noun phrase.
  """
  return _grammar(strict_articles).fullmatch(" ".join(_words(caption))) is not None


def parse_rate(captions: Sequence[str], *, strict_articles: bool = True) -> float:
  """Share in [0, 1] of `captions` ([N] str, N >= 1) that `parses` accepts."""
  _check_captions(captions, "parse_rate")
  return float(np.mean([parses(c, strict_articles=strict_articles) for c in captions]))


# ----------------------------------------------------------------------------------------- attribute accuracy


def mentioned_pairs(caption: str) -> set[tuple[str, str]]:
  """The (colour, shape) pairs `caption` names: a colour word directly followed by a shape word ("red circle").

  The generator writes size before colour ("a large red circle"), so a size word never separates them there; one
  in between ("red large circle") is tolerated. Other words do not count, so "red and blue circles" names nothing.
  """
  words, pairs = _words(caption), set()
  for i, word in enumerate(words[:-1]):
    if word in _COLORS:
      j = i + 2 if words[i + 1] in _SIZES else i + 1
      if j < len(words) and words[j] in _SHAPES:
        pairs.add((word, words[j]))
  return pairs


def true_pairs_of(split: sw.ShapesWorldSplit) -> list[set[tuple[str, str]]]:
  """Per image of `split` (e.g. from `shapes_world.generate_split`), the set of its objects' (colour, shape)
  names, e.g. {("red", "circle"), ("blue", "square")}; two objects of the same colour and shape give one pair."""
  return [{(_COLOR_NAMES[color], sw.SHAPES[shape]) for shape, color in zip(shapes[:n], colors[:n])}
          for shapes, colors, n in zip(split.object_shape.tolist(), split.object_color.tolist(),
                                       split.num_objects.tolist())]


def attribute_scores(captions: Sequence[str], true_pairs: Sequence[set[tuple[str, str]]]) -> dict[str, float]:
  """Whether captions name the (colour, shape) pairs of their images, micro-averaged over all images.

  With named_i = mentioned_pairs(captions[i]) and true_i = true_pairs[i]:
  attribute_recall = sum_i |named_i & true_i| / sum_i |true_i| (the share of the images' true pairs that their
  captions name) and attribute_precision = sum_i |named_i & true_i| / sum_i |named_i| (the share of named pairs
  that are in the image). A ratio with a zero denominator (no true pairs, or nothing named) is 0.

  Args:
    captions: [N] one caption per image.
    true_pairs: [N] per image, its set of (colour, shape) pairs, e.g. from `true_pairs_of`.

  Returns:
    {"attribute_recall", "attribute_precision"}, fractions in [0, 1].
  """
  _check_captions(captions, "attribute_scores")
  if len(true_pairs) != len(captions):
    raise DataError(f"attribute_scores: {len(captions)} captions but {len(true_pairs)} sets of true pairs; pass one "
                    "set of (colour, shape) pairs per caption, in the same image order (see true_pairs_of).")
  named = [mentioned_pairs(c) for c in captions]
  hits = sum(len(n & set(t)) for n, t in zip(named, true_pairs))
  num_true, num_named = sum(len(set(t)) for t in true_pairs), sum(len(n) for n in named)
  return {"attribute_recall": hits / num_true if num_true else 0.0,
          "attribute_precision": hits / num_named if num_named else 0.0}


def _check_captions(captions: Sequence[str], caller: str):
  if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
    raise DataError(f"{caller}: captions must be a sequence of caption strings (wrap a single caption in a list).")
  if len(captions) == 0:
    raise DataError(f"{caller}: no captions; pass at least one.")
