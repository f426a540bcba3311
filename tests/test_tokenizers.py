"""SentencePiece tokenizer, the tokenizer factory and the run's tokenizer file."""
import json
import pickle
import random

import numpy as np
import pytest

from xmodal_jax import errors
from xmodal_jax.data.text import WordVocab
from xmodal_jax.data.tokenizers import (SentencePieceTokenizer, build_tokenizer, load_tokenizer,
                                        tokenizer_path)

_COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
_SHAPES = ["circle", "square", "triangle", "ellipse", "rectangle", "pentagon", "star"]
_SIZES = ["big", "small", "tiny", "large", "huge"]
_RELATIONS = ["above", "below", "left of", "right of", "next to", "behind", "inside"]
_VOCAB_SIZE = 48


def _caption(rng: random.Random) -> str:
  def obj() -> str:
    return " ".join(rng.choice(words) for words in (["a", "the", "one"], _SIZES, _COLOURS, _SHAPES))

  text = f"{obj()} is {rng.choice(_RELATIONS)} {obj()}"
  return text.capitalize() + rng.choice([".", "!", "", " ."])   # raw captions: case and punctuation vary


@pytest.fixture(scope="module")
def captions() -> list[str]:
  rng = random.Random(0)
  return [_caption(rng) for _ in range(300)]


@pytest.fixture(scope="module")
def unigram(captions) -> SentencePieceTokenizer:
  return SentencePieceTokenizer.build(captions, vocab_size=_VOCAB_SIZE)


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_training_is_deterministic(captions, model_type):
  a = SentencePieceTokenizer.build(captions, vocab_size=_VOCAB_SIZE, model_type=model_type)
  b = SentencePieceTokenizer.build(iter(captions), vocab_size=_VOCAB_SIZE, model_type=model_type)
  assert a.serialized_model == b.serialized_model
  assert len(a) == _VOCAB_SIZE
  assert [a.encode(c) for c in captions[:50]] == [b.encode(c) for c in captions[:50]]


def test_special_ids_and_no_pad_in_real_text(unigram, captions):
  assert (unigram.pad_id, unigram.unk_id, unigram.bos_id, unigram.eos_id) == (0, 1, 2, 3)
  ids = [i for c in captions for i in unigram.encode(c)]
  assert min(ids) > unigram.pad_id
  assert unigram.unk_id not in ids                      # every training character is covered
  assert unigram.unk_id in unigram.encode("a zebra")     # 'z' never occurs in training


def test_normalisation_applied(unigram):
  assert unigram.encode("  A BIG Red Circle, above the star!! ") == unigram.encode("a big red circle above the star")
  assert unigram.decode(unigram.encode("The Tiny, blue star.")) == "the tiny blue star"
  with pytest.raises(ValueError, match="[Cc]aption"):
    unigram.encode(" ... ")


def test_encode_batch_pads_masks_and_truncates(unigram):
  texts = ["a red star", "the huge purple pentagon is left of one small white square"]
  ids = [unigram.encode(t) for t in texts]
  max_len = len(ids[0]) + 2
  assert len(ids[1]) > max_len
  tokens, mask = unigram.encode_batch(texts, max_len)
  assert tokens.dtype == np.int32 and mask.dtype == bool and tokens.shape == mask.shape == (2, max_len)
  np.testing.assert_array_equal(tokens[0], ids[0] + [0, 0])
  np.testing.assert_array_equal(mask[0], [True] * len(ids[0]) + [False, False])
  np.testing.assert_array_equal(tokens[1], ids[1][:max_len])
  assert mask[1].all()


def test_save_load_round_trip(unigram, captions, tmp_path):
  path = str(tmp_path / "sub" / "tok.json")
  unigram.save(path)
  assert json.load(open(path))["kind"] == "sentencepiece"
  loaded = SentencePieceTokenizer.load(path)
  assert loaded.serialized_model == unigram.serialized_model and len(loaded) == len(unigram)
  np.testing.assert_array_equal(loaded.encode_batch(captions, 40)[0], unigram.encode_batch(captions, 40)[0])
  assert pickle.loads(pickle.dumps(unigram)).encode(captions[0]) == unigram.encode(captions[0])


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_too_large_vocab_names_the_maximum(captions, model_type):
  with pytest.raises(ValueError, match=r"vocab_size=8000 is too large.*at most \d+ pieces"):
    SentencePieceTokenizer.build(captions, vocab_size=8000, model_type=model_type)


def test_bad_build_arguments(captions):
  with pytest.raises(ValueError, match="model_type"):
    SentencePieceTokenizer.build(captions, vocab_size=_VOCAB_SIZE, model_type="char")
  with pytest.raises(ValueError, match="required_chars"):       # smaller than the character set
    SentencePieceTokenizer.build(captions, vocab_size=10)
  with pytest.raises(ValueError, match="No training captions"):
    SentencePieceTokenizer.build([], vocab_size=_VOCAB_SIZE)


@pytest.mark.parametrize("kind,kwargs,cls", [("word", {"min_count": 2}, WordVocab),
                                             ("sentencepiece", {"vocab_size": _VOCAB_SIZE}, SentencePieceTokenizer)])
def test_factory_round_trip(captions, tmp_path, kind, kwargs, cls):
  tok = build_tokenizer(kind, captions, **kwargs)
  assert isinstance(tok, cls)
  path = tokenizer_path(str(tmp_path))
  assert path == str(tmp_path / "tokenizer.json")
  tok.save(path)
  loaded = load_tokenizer(path)
  assert isinstance(loaded, cls) and len(loaded) == len(tok)
  np.testing.assert_array_equal(loaded.encode_batch(captions, 24)[0], tok.encode_batch(captions, 24)[0])


def test_factory_errors(captions, tmp_path):
  with pytest.raises(ValueError, match=r"Unknown tokenizer kind 'bert'.*\['sentencepiece', 'word', 'wordpiece'\]"):
    build_tokenizer("bert", captions)
  with pytest.raises(ValueError, match="does not take options \\['vocab_size'\\]"):
    build_tokenizer("word", captions, vocab_size=100)
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps({"kind": "mystery"}))
  with pytest.raises(errors.WorkdirError, match="unknown tokenizer kind 'mystery'"):
    load_tokenizer(str(bad))
  WordVocab.build(captions).save(str(bad))
  with pytest.raises(errors.WorkdirError, match="load_tokenizer"):
    SentencePieceTokenizer.load(str(bad))


@pytest.mark.parametrize("load", [load_tokenizer, SentencePieceTokenizer.load])
def test_missing_file(tmp_path, load):
  path = tokenizer_path(str(tmp_path / "run"))
  with pytest.raises(FileNotFoundError, match=rf"{path}.*workdir"):
    load(path)
