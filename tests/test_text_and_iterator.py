"""Caption normalisation, the word vocabulary, and the checkpointable batch iterator."""
import numpy as np
import pytest

from xmodal_jax.data.captions import tokenize_captions
from xmodal_jax.data.iterator import EpochBatchIterator
from xmodal_jax.data.text import WordVocab, normalize_caption


def test_normalize_caption():
  assert normalize_caption("  A Dog, running!\tFast .") == "a dog running fast"
  assert normalize_caption("the dog's ball") == "the dog's ball"
  for bad in ["", "  ", " ... ", None, 3]:
    with pytest.raises(ValueError, match="[Cc]aption"):
      normalize_caption(bad)


def test_vocab_build_encode_roundtrip(tmp_path):
  vocab = WordVocab.build(["a red circle", "a blue circle", "A red square."], min_count=2)
  assert vocab.words[:4] == ["<pad>", "<unk>", "<bos>", "<eos>"]
  assert vocab.words[4:] == ["a", "circle", "red"]          # by count, then alphabetically
  assert vocab.encode("a green circle") == [4, vocab.unk_id, 5]
  tokens, mask = vocab.encode_batch(["a red circle", "red"], max_len=2)
  np.testing.assert_array_equal(tokens, [[4, 6], [6, 0]])
  np.testing.assert_array_equal(mask, [[True, True], [True, False]])
  vocab.save(str(tmp_path / "v.json"))
  assert WordVocab.load(str(tmp_path / "v.json")).words == vocab.words
  with pytest.raises(FileNotFoundError, match="workdir"):
    WordVocab.load(str(tmp_path / "missing.json"))


def test_tokenize_captions_offsets_and_sampling():
  vocab = WordVocab.build(["a b c", "d e"])
  toks = tokenize_captions([["a b", "c"], ["d"], ["e", "a", "b"]], vocab, max_len=4)
  np.testing.assert_array_equal(toks.text_to_image, [0, 0, 1, 2, 2, 2])
  np.testing.assert_array_equal(toks.offsets, [0, 2, 3, 6])
  rows = toks.sample_one_per_image(np.array([2, 0, 1]), np.array([4, 7, 9], np.uint32))
  np.testing.assert_array_equal(rows, [3 + 4 % 3, 0 + 7 % 2, 2])
  with pytest.raises(ValueError, match="no captions"):
    tokenize_captions([["a"], []], vocab, max_len=4)


def _collect(it, n):
  return [next(it) for _ in range(n)]


def _load(indices, keys):
  return {"idx": indices.copy(), "key": keys.copy()}


def test_iterator_epochs_are_permutations_and_deterministic():
  it = EpochBatchIterator(10, 4, _load, seed=3)
  assert it.batches_per_epoch == 2
  epoch0 = np.concatenate([b["idx"] for b in _collect(it, 2)])
  assert len(set(epoch0.tolist())) == 8
  epoch1 = np.concatenate([b["idx"] for b in _collect(it, 2)])
  assert not np.array_equal(epoch0, epoch1)
  again = EpochBatchIterator(10, 4, _load, seed=3)
  np.testing.assert_array_equal(np.concatenate([b["idx"] for b in _collect(again, 2)]), epoch0)


def test_iterator_resume_and_host_shards():
  ref = _collect(EpochBatchIterator(20, 4, _load, seed=0), 9)
  it = EpochBatchIterator(20, 4, _load, seed=0)
  _collect(it, 6)
  state = it.get_state()
  fresh = EpochBatchIterator(20, 4, _load, seed=0)
  fresh.set_state(state)
  for a, b in zip(_collect(fresh, 3), ref[6:]):
    np.testing.assert_array_equal(a["idx"], b["idx"])
    np.testing.assert_array_equal(a["key"], b["key"])
  # Two processes: disjoint halves of every global batch, same per-example keys as one process.
  hosts = [EpochBatchIterator(20, 4, _load, seed=0, process_index=p, process_count=2) for p in range(2)]
  for step in range(5):
    parts = [next(h) for h in hosts]
    np.testing.assert_array_equal(np.concatenate([p["idx"] for p in parts]), ref[step]["idx"])
    np.testing.assert_array_equal(np.concatenate([p["key"] for p in parts]), ref[step]["key"])
  with pytest.raises(ValueError, match="seed"):
    EpochBatchIterator(20, 4, _load, seed=1).set_state(state)


def test_iterator_rejects_bad_sizes():
  with pytest.raises(ValueError, match="batch"):
    EpochBatchIterator(3, 4, _load)
  with pytest.raises(ValueError, match="divisible"):
    EpochBatchIterator(30, 5, _load, process_count=2)
