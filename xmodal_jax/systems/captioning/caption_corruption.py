"""Caption negatives for S5: corrupted captions for the grammar head, attribute-stripped ones for the reward model.

S5 trains a grammar head g(c) in [0, 1] on grammatical captions (positives) and the same captions altered to
be ungrammatical (negatives), and fine-tunes its reward model with attribute-specific negatives: a caption
that names a colour or the background, against the same caption with those words removed.

Corruptions work on the whitespace-split words of a `normalize_caption`-style caption ("," and ":" are words):

  repeat   an n-gram (n in 1..3) repeated right after itself, the degenerate output captioners produce;
  remove   an n-gram (n in 1..3) dropped;
  insert   a random word of a vocabulary put at a random position;
  swap     two adjacent words, or two random words, exchanged;
  shuffle  the words of a short span, or of the whole caption, shuffled.

Each corruption is a function `(words, rng, ...) -> list[str] | None` whose output always differs from its
input; it returns None, without drawing from `rng`, exactly when that is impossible for these words (which does
not depend on the random draws), e.g. swap or shuffle of a caption whose words are all the same. A corruption is
not guaranteed to be ungrammatical ("a large red circle" with "large" removed is "a red circle"); `forbidden`
(e.g. every training caption) at least keeps true captions out of the negatives.

`strip_attributes` removes the attribute words (`COLOUR_WORDS`, `BACKGROUND_WORDS`) so that the caption stays
grammatical and differs only in the attribute: "a red circle" -> "a circle", not a caption with a hole. See its
docstring for the rules (a word-level heuristic, not a parser).
"""
from __future__ import annotations

import functools
from typing import Callable, Collection, Sequence

import numpy as np

Corruption = Callable[..., "list[str] | None"]

MAX_NGRAM = 3  # Longest n-gram that repeat / remove act on.
MAX_SHUFFLE_SPAN = 4  # Longest span that a local shuffle acts on.
# Words that insert draws from by default: function words, whose insertion almost never leaves a grammatical
# caption (a content word often does: "a red circle" + "large" -> "a large red circle").
INSERT_WORDS = ("a", "an", "the", "is", "are", "of", "and", "in", "on", "with", "to", "at", "which", "there")
MAX_TRIES = 20  # Default draws of a corruption until it is not a forbidden caption.
_MAX_SHUFFLES = 20  # Draws of a permutation until the shuffled span changes.

# ------------------------------------------------------------------------------------------------- corruptions


def _check_at_least(name: str, value: int, low: int):
  if value < low:
    raise ValueError(f"{name} must be at least {low}, got {value}.")


def _pick(rng: np.random.Generator, items: Sequence):
  return items[int(rng.integers(len(items)))]


def repeat_ngram(words: list[str], rng: np.random.Generator, max_n: int = MAX_NGRAM) -> list[str] | None:
  """A random n-gram (n uniform in 1..max_n, at most the caption's length) repeated right after itself.

  "a red circle" -> "a red red circle" or "a red circle a red circle". The output is n words longer, so it
  always differs; None only for an empty caption.
  """
  _check_at_least("max_n", max_n, 1)
  if not words:
    return None
  n = int(rng.integers(1, min(max_n, len(words)) + 1))
  start = int(rng.integers(len(words) - n + 1))
  return words[:start + n] + words[start:start + n] + words[start + n:]


def remove_ngram(words: list[str], rng: np.random.Generator, max_n: int = MAX_NGRAM) -> list[str] | None:
  """The caption without a random n-gram (n uniform in 1..max_n, leaving at least one word).

  The output is n words shorter, so it always differs; None for a caption of fewer than 2 words.
  """
  _check_at_least("max_n", max_n, 1)
  if len(words) < 2:
    return None
  n = int(rng.integers(1, min(max_n, len(words) - 1) + 1))
  start = int(rng.integers(len(words) - n + 1))
  return words[:start] + words[start + n:]


def insert_word(words: list[str], rng: np.random.Generator,
                vocabulary: Sequence[str] = INSERT_WORDS) -> list[str] | None:
  """A random word of `vocabulary` (single tokens) inserted at a random position (also first or last).

  The output is one word longer, so it always differs; None for an empty vocabulary.
  """
  if not vocabulary:
    return None
  position = int(rng.integers(len(words) + 1))
  return words[:position] + [_pick(rng, vocabulary)] + words[position:]


def swap_words(words: list[str], rng: np.random.Generator, adjacent: bool | None = None) -> list[str] | None:
  """Two different words exchanged: two adjacent ones, or two anywhere (None: either, with a fair coin).

  Adjacent: a uniform pair among the neighbours that differ. Anywhere: a uniform first word, then a uniform
  partner among the words that differ from it. None when all words are the same (or there are fewer than 2).
  """
  if len(set(words)) < 2:
    return None
  if adjacent is None:
    adjacent = bool(rng.integers(2))
  if adjacent:
    i = _pick(rng, [k for k in range(len(words) - 1) if words[k] != words[k + 1]])
    j = i + 1
  else:
    i = int(rng.integers(len(words)))
    j = _pick(rng, [k for k, word in enumerate(words) if word != words[i]])
  out = list(words)
  out[i], out[j] = out[j], out[i]
  return out


def shuffle_words(words: list[str], rng: np.random.Generator, whole: bool | None = None,
                  max_span: int = MAX_SHUFFLE_SPAN) -> list[str] | None:
  """The words of a span (or of the whole caption; None: either, with a fair coin) in a new random order.

  A span has a uniform length in 2..max_span (at most the caption's length) and a uniform start among the spans
  of that length with 2 different words. The permutation is drawn again until the span changes (each draw
  succeeds with probability >= 1/2; after _MAX_SHUFFLES failures the span is rotated by one word instead). The
  output keeps the words with their counts. None when all words are the same (or there are fewer than 2).
  """
  _check_at_least("max_span", max_span, 2)
  if len(set(words)) < 2:
    return None
  if whole is None:
    whole = bool(rng.integers(2))
  if whole:
    start, stop = 0, len(words)
  else:
    size = int(rng.integers(2, min(max_span, len(words)) + 1))
    start = _pick(rng, [k for k in range(len(words) - size + 1) if len(set(words[k:k + size])) > 1])
    stop = start + size
  span = words[start:stop]
  for _ in range(_MAX_SHUFFLES):
    shuffled = [span[k] for k in rng.permutation(len(span))]
    if shuffled != span:
      break
  else:
    shuffled = span[1:] + span[:1]  # Differs: the span has 2 different words.
  return words[:start] + shuffled + words[stop:]


CORRUPTIONS: dict[str, Corruption] = {"repeat": repeat_ngram, "remove": remove_ngram, "insert": insert_word,
                                      "swap": swap_words, "shuffle": shuffle_words}
ALL_KINDS = tuple(CORRUPTIONS)


def _bound_corruptions(kinds: Sequence[str], vocabulary: Sequence[str]) -> list[Corruption]:
  """The corruption function of each kind, insert bound to `vocabulary`; raises on a bad kind or word."""
  if not kinds:
    raise ValueError(f"kinds must name at least one corruption of {ALL_KINDS}.")
  unknown = [kind for kind in kinds if kind not in CORRUPTIONS]
  if unknown or len(set(kinds)) != len(kinds):
    raise ValueError(f"kinds must be distinct corruptions of {ALL_KINDS}, got {tuple(kinds)}.")
  bad = [word for word in vocabulary if word.split() != [word]]
  if bad:
    raise ValueError(f"Insert vocabulary words must be single whitespace-free tokens, got {bad[:5]}.")
  vocabulary = tuple(vocabulary)
  return [functools.partial(insert_word, vocabulary=vocabulary) if kind == "insert" else CORRUPTIONS[kind]
          for kind in kinds]


def _words(caption: str) -> list[str]:
  words = caption.split()
  if not words:
    raise ValueError(f"Caption {caption!r} has no words; corrupt normalised, non-empty captions.")
  return words


def _corrupt_words(words: list[str], rng: np.random.Generator, kinds: Sequence[str], corruptions: list[Corruption],
                   forbidden: Collection[str], max_tries: int) -> tuple[str, str] | None:
  for _ in range(max_tries):
    # The first kind that applies in a uniformly random order is uniform among the kinds that apply.
    for index in rng.permutation(len(kinds)).tolist():
      out = corruptions[index](words, rng)
      if out is not None:
        break
    else:
      return None
    text = " ".join(out)
    if text not in forbidden:
      return text, kinds[index]
  return None


def corrupt(caption: str, rng: np.random.Generator, kinds: Sequence[str] = ALL_KINDS,
            vocabulary: Sequence[str] = INSERT_WORDS, forbidden: Collection[str] = frozenset(),
            max_tries: int = MAX_TRIES) -> tuple[str, str] | None:
  """(corrupted caption, kind): one corruption of a kind drawn uniformly among `kinds` that apply to the caption.

  Args:
    caption: a normalised caption (`normalize_caption`); its words are its whitespace-split tokens.
    rng: the random source.
    kinds: names of corruptions to draw from (keys of CORRUPTIONS).
    vocabulary: the words insert draws from (e.g. a training vocabulary's words, specials left out).
    forbidden: captions a corruption must not equal (e.g. every training caption, as a set), so that no
      negative is a true caption; a corruption that equals one is drawn again, kind included. Compared with the
      words joined by single spaces.
    max_tries: how many corruptions to draw before giving up on a caption whose corruptions are forbidden.

  Returns:
    None when no kind applies (e.g. kinds=("swap",) on a one-word caption) or every draw was forbidden.
  """
  _check_at_least("max_tries", max_tries, 1)
  kinds = tuple(kinds)
  return _corrupt_words(_words(caption), rng, kinds, _bound_corruptions(kinds, vocabulary), forbidden, max_tries)


def corrupt_batch(captions: Sequence[str], seed: int, kinds: Sequence[str] = ALL_KINDS,
                  vocabulary: Sequence[str] = INSERT_WORDS, forbidden: Collection[str] = frozenset(),
                  max_tries: int = MAX_TRIES) -> tuple[list[str | None], list[str | None]]:
  """`corrupt` of every caption: (corrupted captions, their kinds), None for both where `corrupt` gives None.

  Caption i uses its own random stream, np.random.default_rng((seed, i)): the output is a function of (seed, i,
  caption) alone, so it does not change with the batch's length or other captions (use a new seed per epoch for
  fresh negatives).
  """
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
  _check_at_least("max_tries", max_tries, 1)
  kinds = tuple(kinds)
  corruptions = _bound_corruptions(kinds, vocabulary)
  texts, names = [], []
  for i, caption in enumerate(captions):
    result = _corrupt_words(_words(caption), np.random.default_rng((int(seed), i)), kinds, corruptions, forbidden,
                            max_tries)
    texts.append(None if result is None else result[0])
    names.append(None if result is None else result[1])
  return texts, names


# ------------------------------------------------------------------------------------------------- attributes

COLOUR_WORDS = frozenset({
    "red", "green", "blue", "yellow", "purple", "orange",  # The shapes world's COLORS.
    "white", "black", "brown", "pink", "grey", "gray", "tan", "beige", "gold", "golden", "silver", "maroon",
    "violet", "turquoise", "teal", "colorful", "colourful", "multicolored", "multicoloured"})
# Scene nouns of Flickr8k-style captions ("a dog runs on the grass") and the shapes world's "background".
BACKGROUND_NOUNS = frozenset({
    "background", "grass", "snow", "water", "beach", "sand", "ocean", "sea", "surf", "waves", "shore", "field",
    "fields", "street", "streets", "road", "sidewalk", "park", "pool", "lake", "river", "stream", "pond",
    "mountain", "mountains", "hill", "hills", "hillside", "forest", "woods", "desert", "lawn", "yard", "meadow",
    "trail", "dirt", "mud"})
BACKGROUND_ADJECTIVES = frozenset({"grassy", "snowy", "sandy", "rocky", "muddy", "wooded", "dusty"})
BACKGROUND_WORDS = BACKGROUND_NOUNS | BACKGROUND_ADJECTIVES
ATTRIBUTE_WORDS = COLOUR_WORDS | BACKGROUND_WORDS

_COORDINATORS = frozenset({",", "and", "or"})
_COPULAS = frozenset({"is", "are", "was", "were"})
_PREPOSITIONS = frozenset({
    "on", "in", "into", "onto", "at", "across", "through", "along", "by", "near", "against", "over", "under",
    "underneath", "beneath", "beside", "behind", "down", "up", "to", "toward", "towards", "from", "around", "past",
    "inside", "outside", "off", "of", "with", "within", "above", "below", "between", "among"})
_COMPOUND_PREPOSITIONS = (("in", "front", "of"), ("on", "top", "of"), ("out", "of"), ("next", "to"))
# Words after which a phrase has ended, besides prepositions and "-ing" participles.
_PHRASE_ENDS = _COORDINATORS | _COPULAS | frozenset({":", "but", "while", "as", "where", "which", "that", "who"})
_ING_NOUNS = frozenset({"building", "buildings", "ceiling", "clothing", "crossing", "painting", "railing", "ring",
                        "spring", "string", "swing", "swings", "thing", "wing", "parking", "wedding"})
_LEFT_STOPS = _COORDINATORS | frozenset({":", "but", "while", "as", "where", "which", "that", "who"})
_MAX_PHRASE_GAP = 4  # Words between a preposition and the attribute words it governs ("on a snow covered").


def _attribute_runs(tokens: Sequence[str], words: Collection[str]) -> list[tuple[int, int]]:
  """[start, stop) of each maximal run of attribute words, adjacent or joined by a coordinator ("black and
  white", "red , white and blue", "snowy field")."""
  runs, i = [], 0
  while i < len(tokens):
    if tokens[i] not in words:
      i += 1
      continue
    stop = i + 1
    while True:
      if stop < len(tokens) and tokens[stop] in words:
        stop += 1
      elif stop + 1 < len(tokens) and tokens[stop] in _COORDINATORS and tokens[stop + 1] in words:
        stop += 2
      else:
        break
    runs.append((i, stop))
    i = stop
  return runs


def _ends_phrase(token: str | None) -> bool:
  """Whether a run followed by `token` (None: the caption's end) heads its phrase rather than modifying a noun
  ("on the grass ," vs "a grass field")."""
  return (token is None or token in _PHRASE_ENDS or token in _PREPOSITIONS or
          (token.endswith("ing") and len(token) > 4 and token not in _ING_NOUNS))


def _removal_start(tokens: Sequence[str], start: int, stop: int) -> int:
  """Where removing the run tokens[start:stop] begins: `start`, or earlier to take the phrase it heads.

  A run that heads its phrase takes the nearest preposition before it (at most _MAX_PHRASE_GAP words away, no
  coordinator between) with it: "on a dark background", "in front of the water". A run without a scene noun
  also takes a copula there ("the dog is black"). A prepositional phrase that ends the clause also takes a
  copula right before it ("a dog is in the water" -> "a dog").
  """
  following = tokens[stop] if stop < len(tokens) else None
  if not _ends_phrase(following):
    return start
  openers = _PREPOSITIONS if any(t in BACKGROUND_NOUNS for t in tokens[start:stop]) else _PREPOSITIONS | _COPULAS
  for j in range(start - 1, max(start - 2 - _MAX_PHRASE_GAP, -1), -1):
    if tokens[j] in openers:
      if tokens[j] in _COPULAS:
        return j
      for compound in _COMPOUND_PREPOSITIONS:
        first = j - len(compound) + 1
        if first >= 0 and tuple(tokens[first:j + 1]) == compound:
          j = first
          break
      clause_end = following is None or following == ","
      return j - 1 if clause_end and j > 0 and tokens[j - 1] in _COPULAS else j
    if tokens[j] in _LEFT_STOPS or tokens[j] in _COPULAS:
      break
  return start


def _tidy_coordinators(tokens: Sequence[str], removed: list[bool]) -> list[bool]:
  """Also removes coordinators ("," "and" "or") left dangling by the removals: between two removed words, or,
  next to a removed word, first, last or before another coordinator."""
  removed = list(removed)
  for i, token in enumerate(tokens):
    if token in _COORDINATORS and 0 < i < len(tokens) - 1 and removed[i - 1] and removed[i + 1]:
      removed[i] = True
  changed = True
  while changed:
    changed = False
    kept = [i for i, r in enumerate(removed) if not r]
    for k, i in enumerate(kept):
      near_removal = (i > 0 and removed[i - 1]) or (i + 1 < len(tokens) and removed[i + 1])
      if tokens[i] not in _COORDINATORS or not near_removal:
        continue
      if k == 0 or k == len(kept) - 1 or tokens[kept[k + 1]] in _COORDINATORS:
        removed[i] = changed = True
        break
  return removed


def _article_for(word: str) -> str:
  """The indefinite article before `word`, by its first letter (the shapes world's rule: "an orange")."""
  return "an" if word[0] in "aeiou" else "a"


def _kept_words(tokens: Sequence[str], removed: Sequence[bool]) -> list[str]:
  """The kept tokens, each "a"/"an" right before a removal fitted to the next kept word."""
  kept = [i for i, r in enumerate(removed) if not r]
  out = []
  for k, i in enumerate(kept):
    word = tokens[i]
    if word in ("a", "an") and i + 1 < len(tokens) and removed[i + 1] and k + 1 < len(kept):
      word = _article_for(tokens[kept[k + 1]])
    out.append(word)
  return out


def strip_attributes(caption: str, words: Collection[str] = ATTRIBUTE_WORDS) -> str | None:
  """The caption without its attribute words `words`, kept grammatical; None when it has none of them.

  Reading: only the attribute goes, so the negative differs from the caption in the attribute alone and stays
  grammatical ("a red circle" -> "a circle", not the ungrammatical "a red" nor a caption with a hole), and the
  reward model cannot tell the pair apart by grammar. Rules, over whitespace-split tokens:
    - a run of attribute words (adjacent, or joined by "and" / "or" / ",": "black and white") is removed;
    - a run that heads its phrase (followed by the caption's end, a coordinator, a copula, a preposition or an
      "-ing" word, not by a noun it modifies) is removed with the preposition that governs it: the shapes world's
      " on a dark background" / " against a dark background", "a dog runs on the grass" -> "a dog runs",
      "a man in front of a blue background" -> "a man", "a man dressed in black" -> "a man dressed"; a colour
      after a copula goes with it ("the dog is black" -> "the dog"), and so does a copula right before a
      prepositional phrase that ends the clause ("a dog is in the water" -> "a dog");
    - coordinators left dangling go too; an "a"/"an" right before a removal is fitted to the next kept word by
      its first letter ("an orange circle" -> "a circle", "a red apple" -> "an apple").
  A heuristic, not a parser: e.g. a scene noun as subject ("the grass is green" -> "the is green") or a verb
  right after a scene noun ("children in a park play" -> "children in a play") come out ungrammatical.

  Args:
    caption: a normalised caption.
    words: the attribute words to remove (default colours and backgrounds); only the words in
      BACKGROUND_NOUNS stop a copula from being taken with them.

  Returns:
    None also when nothing would be left (a caption of attribute words only).
  """
  tokens = caption.split()
  words = frozenset(words)
  runs = _attribute_runs(tokens, words)
  if not runs:
    return None
  removed = [False] * len(tokens)
  for start, stop in runs:
    for i in range(_removal_start(tokens, start, stop), stop):
      removed[i] = True
  kept = _kept_words(tokens, _tidy_coordinators(tokens, removed))
  return " ".join(kept) or None


def attribute_pairs(captions: Sequence[str], words: Collection[str] = ATTRIBUTE_WORDS) -> list[tuple[int, str]]:
  """(index, stripped caption) for every caption that has attribute words: the reward model's positive is
  captions[index], its negative the stripped caption (`strip_attributes`)."""
  words = frozenset(words)
  pairs = []
  for i, caption in enumerate(captions):
    stripped = strip_attributes(caption, words)
    if stripped is not None:
      pairs.append((i, stripped))
  return pairs
