"""CIDEr-D reward for SCST (systems/captioning/cider_reward.py) against pycocoevalcap's Cider."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider

from xmodal_jax import errors
from xmodal_jax.data.text import WordVocab, normalize_caption, pad_token_ids
from xmodal_jax.systems.captioning.cider_reward import CiderDReward, jax_cider_reward

REFS = [
    ["A dog runs on the grass.", "A brown dog is running across a field", "The dog plays in the green grass .",
     "a dog running"],
    ["Two children play in the water", "Kids splash in a pool", "Two kids are swimming in the water ."],
    ["A man rides a red bike down the street", "A cyclist on a red bicycle", "Man riding a bike on a road",
     "a person on a bike in the city", "A man on a red bike ."],
    ["A woman sits on a bench in the park", "A lady resting on a park bench", "Woman sitting on a wooden bench"],
    ["A black cat sleeps on a sofa", "The cat is lying on the couch", "A cat asleep on a black sofa",
     "Cat on a couch"],
    ["People walk down a busy street", "A crowd of people in the city", "Many people walking on a street ."],
]
# Two rounds of one candidate per image (pycocoevalcap takes one hypothesis per image per call).
CANDIDATES = [
    ["A brown dog is running across a field",          # an exact copy of a reference
     "water the in play children Two",                 # a reference shuffled
     "a a a a bike bike bike",                         # repeated words
     "",                                               # empty
     "A cat on a couch!",                              # close paraphrase, punctuation and case
     "a zebra juggles purple umbrellas"],              # words no reference uses
    ["dog", "Two kids swimming in a pool", "A man on a red bike down the street", "a dog runs on the grass",
     "A cat asleep on the black sofa in the living room of a house", "people"],
]
COPY, SHUFFLED, REPEATED, EMPTY = 0, 1, 2, 3   # positions in the first round


def _tokenised(text):
  return " ".join(normalize_caption(text).split()) if text else ""


def _pycoco(refs, candidates):
  """pycocoevalcap's per-caption CIDEr-D, one candidate per image, df over `refs`."""
  gts = {i: [_tokenised(r) for r in rs] for i, rs in enumerate(refs)}
  res = {i: [_tokenised(c)] for i, c in enumerate(candidates)}
  return Cider().compute_score(gts, res)[1]


@pytest.fixture(scope="module")
def reward():
  return CiderDReward(REFS)


def test_matches_pycocoevalcap(reward):
  for candidates in CANDIDATES:
    ours = reward.score(candidates, range(len(REFS)))
    assert ours.dtype == np.float32 and ours.shape == (len(REFS),)
    np.testing.assert_allclose(ours, _pycoco(REFS, candidates), atol=1e-5, rtol=1e-6)
  # Both rounds in one call, in another order: per-caption scores do not depend on the batch.
  flat = CANDIDATES[1][::-1] + CANDIDATES[0]
  rows = list(range(len(REFS)))[::-1] + list(range(len(REFS)))
  np.testing.assert_allclose(reward.score(flat, rows)[len(REFS):], reward.score(CANDIDATES[0], range(len(REFS))))


def test_document_frequencies_fixed_over_the_corpus(reward):
  candidates, subset = CANDIDATES[1], [1, 2, 4]
  full = reward.score(candidates, range(len(REFS)))
  ours = reward.score([candidates[i] for i in subset], subset)
  np.testing.assert_array_equal(ours, full[subset])
  # pycocoevalcap recomputes df (and |I|) from the images of each call, so the same captions score otherwise.
  theirs_subset = _pycoco([REFS[i] for i in subset], [candidates[i] for i in subset])
  theirs_full = _pycoco(REFS, candidates)
  assert not np.allclose(theirs_subset, theirs_full[subset], atol=1e-3)
  np.testing.assert_allclose(ours, theirs_full[subset], atol=1e-5, rtol=1e-6)


def test_ordering_sanity(reward):
  scores = reward.score(CANDIDATES[0], range(len(REFS)))
  assert scores[EMPTY] == 0.0 and scores[-1] == 0.0   # nothing, or only words no reference uses
  reference = REFS[1][0]
  copy, shuffled, repeated = reward.score(
      [reference, " ".join(reference.split()[::-1]), "two two two children children water water"], [1, 1, 1])
  # A shuffle keeps the unigrams and loses the longer n-grams; repeated words are clipped by min(g(c), g(s)).
  assert copy > 2 * shuffled > 0 and copy > 2 * repeated > 0
  assert reward.score([reference], [1])[0] > reward.score([reference], [0])[0]   # its own image beats another's


def test_jax_wrapper_in_jit_matches_score(reward):
  vocab = WordVocab.build([r for refs in REFS for r in refs])
  candidates = CANDIDATES[0] + CANDIDATES[1]
  tokens, _ = pad_token_ids([vocab.encode(c) if c else [] for c in candidates], 16)
  rows = np.array(list(range(len(REFS))) * 2, np.int32)

  def decode_text(token_rows):
    return [vocab.decode(row) for row in token_rows]

  fn = jax_cider_reward(reward, decode_text)
  got = jax.jit(fn)(jnp.asarray(tokens), jnp.asarray(rows))
  want = reward.score(decode_text(tokens), rows)
  assert got.dtype == jnp.float32 and got.shape == (len(candidates),)
  np.testing.assert_array_equal(np.asarray(got), want)
  assert want[COPY] > 1.0   # the copy survives the round trip through token ids
  batched = jax.jit(jax.vmap(fn))(jnp.stack([tokens, tokens[::-1]]), jnp.stack([rows, rows[::-1]]))
  np.testing.assert_array_equal(np.asarray(batched), np.stack([want, want[::-1]]))


def test_bad_inputs_say_what_to_fix(reward):
  with pytest.raises(errors.DataError, match="image row 1"):
    CiderDReward([["a dog"], "a cat"])
  with pytest.raises(ValueError, match="empty after normalisation"):
    CiderDReward([["a dog", "?!"]])
  with pytest.raises(ValueError, match=r"image rows must lie in \[0, 6\)"):
    reward.score(["a dog"], [6])
  with pytest.raises(ValueError, match="1 candidates but 2 image rows"):
    reward.score(["a dog"], [0, 1])
