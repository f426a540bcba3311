"""S5 over the pretrained towers: the captioner speaks MiniLM's WordPiece vocabulary, so its sampled tokens are the
pretrained dual encoder's text input without remapping ([CLS] + the decoded row), and that dual encoder is the SCST
reward (configs/captioning/captioner_flickr8k_pretrained.py)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xmodal_jax import errors
from xmodal_jax.data import tokenizers
from xmodal_jax.data.captions import teacher_forcing, tokenize_captions
from xmodal_jax.systems.captioning import scorers
from xmodal_jax.systems.captioning.captioner_task import DecodeOptions
from tests.helpers import load_config, make_task

_CONFIG = "configs/captioning/captioner_flickr8k_pretrained.py"
_CAPTIONS = ["A dog runs through the grass .", "two children play on a red slide",
             "A man in a blue shirt is climbing a very tall rock wall while his friends watch from below ."]


@pytest.fixture(scope="module")
def wordpiece():
  return tokenizers.build_tokenizer("wordpiece", [])


def _small_task(tmp_path, *overrides):
  """The tiny captioner with the small CNN encoder (no EfficientNet weights), set up for training."""
  config = load_config(f"{_CONFIG}:tiny", "--config.model.encoder.kind=cnn", *overrides)
  task = make_task(config, tmp_path)
  task.setup(training=True)
  return task


def test_wordpiece_bos_eos_and_words(wordpiece):
  """[CLS] / [SEP] are the WordPiece tokenizer's bos / eos (the others keep 2 / 3); encode frames encode_words."""
  assert (wordpiece.bos_id, wordpiece.eos_id) == (wordpiece._tokenizer.token_to_id("[CLS]"),  # pylint: disable=protected-access
                                                  wordpiece._tokenizer.token_to_id("[SEP]"))  # pylint: disable=protected-access
  assert (tokenizers.WordVocab.build(_CAPTIONS).bos_id, tokenizers.WordVocab.build(_CAPTIONS).eos_id) == (2, 3)
  for caption in _CAPTIONS:
    assert wordpiece.encode(caption) == [wordpiece.bos_id] + wordpiece.encode_words(caption) + [wordpiece.eos_id]


def test_teacher_forcing_with_wordpiece_ids_gives_the_text_towers_input(wordpiece):
  """Targets are the word pieces then [SEP]; inputs start with [CLS]; [CLS] + targets is tokenizer.encode (a caption
  cut at max_len: its first max_len pieces, then [SEP], as encode_batch cuts)."""
  max_len = 12
  toks = tokenize_captions([[c] for c in _CAPTIONS], wordpiece, max_len, words_only=True)
  out = teacher_forcing(toks.tokens, max_len + 1, bos_id=wordpiece.bos_id, eos_id=wordpiece.eos_id)
  for row, caption in enumerate(_CAPTIONS):
    ids = wordpiece.encode(caption)
    targets, inputs = out["targets"][row], out["inputs"][row]
    assert inputs[0] == wordpiece.bos_id
    n = min(len(ids) - 1, max_len + 1)   # words + [SEP]
    expected, _ = wordpiece.encode_batch([caption], max_len + 2)
    assert [wordpiece.bos_id] + targets[:n].tolist() == expected[0, :n + 1].tolist() and not targets[n:].any()
    np.testing.assert_array_equal(inputs[1:n], targets[:n - 1])
  assert len(wordpiece.encode(_CAPTIONS[2])) > max_len + 2   # the cut case is tested


def test_sampled_tokens_are_the_reward_input_without_remapping(tmp_path, wordpiece):
  """Captions sampled by the (untrained) captioner over the caption pieces, and rows of real captions: [CLS] + the
  row (scorers.text_inputs, what the SCST step feeds the reward) is exactly tokenizer.encode_batch of the decoded
  text, cut or not; every sampled token is a train-caption piece or [SEP]."""
  task = _small_task(tmp_path)
  assert scorers.same_tokenizer(task.tokenizer, wordpiece) and (task.bos_id, task.eos_id) == (101, 102)
  variables = jax.jit(task.init_variables)(jax.random.PRNGKey(0))
  context = jax.random.normal(jax.random.PRNGKey(1), (6, 4, int(task.config.model.decoder.width)))
  sampled = np.asarray(jax.jit(lambda v, c, k: task.decode(v, c, DecodeOptions("sample"), k))(
      variables, context, jax.random.PRNGKey(2)))
  allowed = set(np.unique(task.tokens("train").tokens).tolist()) - {0} | {task.eos_id}
  assert set(np.unique(sampled).tolist()) - {0} <= allowed and len(allowed) < len(wordpiece) // 100
  real = teacher_forcing(tokenize_captions([[c] for c in _CAPTIONS], wordpiece, task.seq_len - 1,
                                           words_only=True).tokens, task.seq_len, bos_id=101, eos_id=102)["targets"]
  for rows in (sampled, real):
    texts = task.decode_text(rows)
    assert all(texts)
    for max_len in (10, 40):
      tokens, mask = scorers.text_inputs(task.tokenizer, jnp.asarray(rows), max_len)
      expected, expected_mask = wordpiece.encode_batch(texts, max_len)
      np.testing.assert_array_equal(np.asarray(tokens), expected)
      np.testing.assert_array_equal(np.asarray(mask), expected_mask)


def test_decoder_embeddings_from_minilm_need_width_384(tmp_path):
  with pytest.raises(errors.ConfigError, match="width=384"):
    _small_task(tmp_path, "--config.model.decoder.init_embeddings=minilm")
  task = _small_task(tmp_path, "--config.model.decoder.init_embeddings=minilm", "--config.model.decoder.width=384",
                     "--config.model.decoder.num_heads=6")
  table = task.pretrained_params()["decoder"]["token_embed"]["embedding"]
  shapes = jax.eval_shape(task.init_variables, jax.random.PRNGKey(0))["params"]
  assert table.shape == shapes["decoder"]["token_embed"]["embedding"].value.shape
  from xmodal_jax.models import minilm  # pylint: disable=import-outside-toplevel
  ids = task._vocab.tokenizer_ids  # pylint: disable=protected-access  (row i of the decoder's table: this id's)
  np.testing.assert_array_equal(table[:len(ids)],
                                minilm.load_params()[1]["params"]["word_embeddings"]["embedding"][ids])


def test_the_decoders_softmax_covers_only_the_caption_tokens(tmp_path, wordpiece):
  """output_vocab="captions": the decoder's vocabulary is <pad>, <bos> and the train captions' tokens + <eos>
  (its output layer that size, not MiniLM's 30,522), mapped to tokenizer ids and back without loss; <pad> and
  <bos> are never emitted; "all" keeps the tokenizer's ids."""
  task = _small_task(tmp_path)
  vocab = task._vocab  # pylint: disable=protected-access
  allowed = sorted(set(np.unique(task.tokens("train").tokens).tolist()) - {0} | {task.eos_id})
  assert vocab.tokenizer_ids.tolist() == [0, task.bos_id] + allowed and vocab.to_tokenizer(vocab.eos) == task.eos_id
  np.testing.assert_array_equal(vocab.to_tokenizer(vocab.to_decoder(np.asarray(allowed))), allowed)
  np.testing.assert_array_equal(np.asarray(vocab.to_decoder(jnp.asarray(allowed))), vocab.to_decoder(np.asarray(allowed)))
  logits = jax.eval_shape(task.init_variables, jax.random.PRNGKey(0))["params"]["decoder"]["logits"]["bias"]
  assert vocab.size <= logits.value.shape[0] < vocab.size + 128 < len(wordpiece)
  bias = vocab.logit_bias(-1e9)
  assert bias[0] == bias[1] == -1e9 and not bias[2:vocab.size].any() and np.all(bias[vocab.size:] == -1e9)
  assert _small_task(tmp_path / "all", "--config.model.output_vocab=all")._vocab is None  # pylint: disable=protected-access


@pytest.mark.slow  # the session's tiny dual encoder (4 steps) and a tiny MLE captioner (2 steps): minutes on 2 cores
def test_the_pretrained_dual_encoder_and_cider_d_are_scst_rewards(dual_encoder_tiny_run, tmp_path):
  """A run of vsepp_flickr8k_pretrained.py:tiny is the reward: SCST steps run under "clip" and "cider" (no reward
  model), and the in-step "cider+clip" reward of sampled tokens equals CIDEr-D + lambda * 2.5 * max(cos, 0), cos from
  the dual encoder's own embed_image / embed_text on the decoded strings."""
  from xmodal_jax import systems  # pylint: disable=import-outside-toplevel
  from xmodal_jax.systems.captioning import cider_reward  # pylint: disable=import-outside-toplevel
  from xmodal_jax.train import trainer  # pylint: disable=import-outside-toplevel
  from tests.helpers import one_train_step  # pylint: disable=import-outside-toplevel
  reward_dir, mle_dir = dual_encoder_tiny_run, str(tmp_path / "mle")
  trainer.train_and_evaluate(systems.create(load_config(f"{_CONFIG}:tiny"), mle_dir))
  scst = lambda *o: load_config(f"{_CONFIG}:tiny_scst", f"--config.init_from={mle_dir}", *o)
  metrics = one_train_step(scst(f"--config.reward.workdir={reward_dir}"), tmp_path / "clip", jax.devices())
  assert np.isfinite(metrics["loss"]) and 0.0 <= metrics["clip_reward"] <= 2.5
  metrics = one_train_step(scst("--config.scst.reward=cider"), tmp_path / "cider", jax.devices())
  assert np.isfinite(metrics["loss"]) and metrics["cider_d"] >= 0.0 and "clip_reward" not in metrics

  config = scst(f"--config.reward.workdir={reward_dir}", "--config.scst.reward=cider+clip",
                "--config.scst.cider_weight=0.5")
  task = make_task(config, tmp_path / "mixed")
  task.setup(training=True)
  scorer = task._reward  # pylint: disable=protected-access
  assert scorer.loaded.task.config.task == "dual_encoder"
  variables = jax.jit(task.init_variables)(jax.random.PRNGKey(0))
  context = jax.random.normal(jax.random.PRNGKey(1), (6, 4, int(config.model.decoder.width)))
  sampled = jax.jit(lambda v, c, k: task.decode(v, c, DecodeOptions("sample"), k))(variables, context,
                                                                                   jax.random.PRNGKey(3))
  # The sampled captions and the images' own first captions (in tokenizer ids, as decode returns them).
  rows = np.r_[np.arange(6) * 5, np.arange(6) * 7].astype(np.int32) % len(task.split("train"))
  toks = task.tokens("train")
  own = teacher_forcing(toks.tokens[toks.offsets[rows[6:]]], task.seq_len, bos_id=task.bos_id,
                        eos_id=task.eos_id)["targets"]
  tokens = jnp.concatenate([sampled, jnp.asarray(own)])
  image_emb = task.reward_image_embeddings()[rows]
  reward_of = jax.jit(task._reward_of)  # pylint: disable=protected-access
  texts = task.decode_text(np.asarray(tokens))
  image = np.asarray(scorer.loaded.predict("embed_image", {"images": task.split("train").load_images(
      rows, scorer.image_size)}))
  cos = np.sum(image * scorer.embed_captions(texts), axis=1)
  cider = cider_reward.CiderDReward(task.split("train").captions).score(texts, rows)
  # A 4-step tiny dual encoder may put every caption on one side of every image (the modality gap of a fresh
  # projection), where max(cos, 0) is 0 throughout: the image embeddings and their negatives both go in, so the
  # clip term is checked where it is positive.
  for sign in (1.0, -1.0):
    reward, _ = reward_of(scorer.loaded.variables, tokens, sign * image_emb, rows)
    np.testing.assert_allclose(np.asarray(reward), cider + 0.5 * 2.5 * np.maximum(sign * cos, 0.0), atol=5e-5)
  # Both terms are live: the cosines differ and are not all 0, and the images' own captions score CIDEr-D > 0.
  assert np.ptp(cos) > 0 and np.any(np.abs(cos) > 1e-3) and np.all(cider[6:] > 0)
