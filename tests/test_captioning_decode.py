"""S5 decoding: the cache gives the teacher-forced logits, cached == recomputing decoding, beam 1 == greedy, EOS
handling, top-k / nucleus filtering; for the transformer and the GRU decoder."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xmodal_jax.data.text import SPECIALS, TokenizerBase, WordVocab
from xmodal_jax.systems.captioning import beam_search, sampling
from xmodal_jax.systems.captioning.captioner_model import Captioner
from xmodal_jax.systems.captioning.captioner_task import CaptioningTask, DecodeOptions, PAD
from tests.helpers import load_config

_CONFIG = "configs/captioning/captioner_shapes.py"
EOS = TokenizerBase.eos_id


def _task(decoder: str, tmp_path, encoder: str = "cnn") -> tuple[CaptioningTask, dict]:
  config = load_config(f"{_CONFIG}:tiny")
  config.model.decoder.kind = decoder
  config.model.encoder.kind = encoder
  config.model.encoder.vit.update(width=16, depth=1, num_heads=2, patch_size=16)
  config.model.decoder.dropout_rate = 0.0
  config.data.max_len = 7
  task = CaptioningTask(config, str(tmp_path))
  task.tokenizer = WordVocab(list(SPECIALS) + [f"w{i}" for i in range(20)])
  task.model, task.decode_model = task._build(decode=False), task._build(decode=True)
  variables = jax.jit(task.init_variables)(jax.random.PRNGKey(1))
  params = jax.tree.map(lambda x: x * 3.0 if x.ndim == 2 else x, variables["params"])  # peakier distributions
  return task, {"params": params}


@pytest.fixture(params=["transformer", "gru"])
def task_and_vars(request, tmp_path):
  return _task(request.param, tmp_path)


def _context(task, variables, n=3, seed=0):
  images = np.random.default_rng(seed).integers(0, 255, (n, 64, 64, 3), dtype=np.uint8)
  return jax.jit(lambda v, x: task._context(v, {"images": x}))(variables, images)


def test_step_by_step_cache_gives_the_teacher_forced_logits(task_and_vars):
  task, variables = task_and_vars
  context = _context(task, variables)
  tokens = np.random.default_rng(2).integers(4, 24, (3, task.seq_len)).astype(np.int32)
  full = jax.jit(lambda v, t, c: task._logits(v, t, c))(variables, tokens, context)
  step = jax.jit(lambda v, c, cache, t, pos: task._step_fn(v, c)(t, cache, pos))
  cache = task._empty_cache(variables, context)
  for t in range(task.seq_len):
    logits, cache = step(variables, context, cache, tokens[:, t:t + 1], t)
    np.testing.assert_allclose(logits, full[:, t], atol=2e-4, rtol=2e-4)


def test_cached_greedy_equals_recomputing_greedy(task_and_vars):
  task, variables = task_and_vars
  context = _context(task, variables, n=4)
  run = jax.jit(lambda v, c, cached: task.decode(v, c, DecodeOptions("greedy"), cached=cached), static_argnums=2)
  np.testing.assert_array_equal(run(variables, context, True), run(variables, context, False))


def test_cached_sampling_equals_recomputing_sampling_for_one_key(task_and_vars):
  task, variables = task_and_vars
  context = _context(task, variables, n=4)
  options = DecodeOptions("sample", temperature=1.0, top_k=5)
  run = jax.jit(lambda v, c, key, cached: task.decode(v, c, options, key, cached=cached), static_argnums=3)
  key = jax.random.PRNGKey(7)
  np.testing.assert_array_equal(run(variables, context, key, True), run(variables, context, key, False))


def test_beam_of_one_is_greedy_and_wider_beams_are_at_least_as_likely(task_and_vars):
  task, variables = task_and_vars
  context = _context(task, variables, n=5, seed=3)
  decode = jax.jit(lambda v, c, method, k: task.decode(v, c, DecodeOptions(method, beam_size=k)),
                   static_argnums=(2, 3))
  greedy = decode(variables, context, "greedy", 1)
  np.testing.assert_array_equal(decode(variables, context, "beam", 1), greedy)
  images = np.random.default_rng(3).integers(0, 255, (5, 64, 64, 3), dtype=np.uint8)
  logp = jax.jit(task.caption_log_probs)
  beam3 = decode(variables, context, "beam", 3)
  assert np.all(np.asarray(logp(variables, images, beam3)) >= np.asarray(logp(variables, images, greedy)) - 1e-4)


def test_decoded_rows_end_with_eos_then_padding(task_and_vars):
  task, variables = task_and_vars
  context = _context(task, variables, n=6)
  tokens = np.asarray(jax.jit(lambda v, c, k: task.decode(v, c, DecodeOptions("sample"), k))(
      variables, context, jax.random.PRNGKey(0)))
  for row in tokens:
    ends = np.flatnonzero(row == EOS)
    if len(ends):
      assert np.all(row[ends[0] + 1:] == PAD)
    assert not np.any(row[:ends[0] if len(ends) else len(row)] == PAD)


def test_vit_encoder_gives_patch_tokens_and_cached_greedy_equals_recomputing(tmp_path):
  """The seed's transformer variant: ViT patch tokens (64 px / patch 16 = 16 tokens) as the decoder's context."""
  task, variables = _task("transformer", tmp_path, encoder="vit")
  context = _context(task, variables, n=2)
  assert context.shape == (2, 16, task.config.model.decoder.width)
  run = jax.jit(lambda v, c, cached: task.decode(v, c, DecodeOptions("greedy"), cached=cached), static_argnums=2)
  np.testing.assert_array_equal(run(variables, context, True), run(variables, context, False))


def test_sampling_and_beam_search_stop_at_eos_on_a_scripted_decoder():
  """A decoder that always prefers token 5, then <eos> after two tokens: rows end [5, 5, eos, pad, pad]."""
  vocab, batch, max_len = 8, 2, 5

  def step(tokens, cache, position):
    del tokens
    logits = jnp.where(position >= 2, jnp.zeros(vocab).at[EOS].set(5.0), jnp.zeros(vocab).at[5].set(5.0))
    return jnp.broadcast_to(logits, (tokens_rows(cache), vocab)), cache

  tokens_rows = lambda cache: cache.shape[0]
  expected = np.array([5, 5, EOS, PAD, PAD])
  out = sampling.sample(step, jnp.zeros((batch, 1)), batch, max_len, jax.random.PRNGKey(0), bos_id=2, eos_id=EOS,
                        greedy=True)
  np.testing.assert_array_equal(out, np.stack([expected] * batch))
  beams, score = beam_search.beam_search(step, jnp.zeros((batch * 3, 1)), batch, 3, max_len, bos_id=2, eos_id=EOS)
  np.testing.assert_array_equal(beams, np.stack([expected] * batch))
  assert np.all(np.isfinite(score))


def test_length_penalty_is_gnmt():
  np.testing.assert_allclose(beam_search.length_penalty(jnp.asarray(7), 0.6), (12 / 6) ** 0.6, rtol=1e-6)
  assert float(beam_search.length_penalty(jnp.asarray(3), 0.0)) == 1.0


def test_top_k_and_nucleus_filtering_on_a_hand_case():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  kept = lambda x: np.asarray(x[0] > -1e8)
  np.testing.assert_array_equal(kept(sampling.filter_logits(logits, top_k=2)), [True, True, False, False])
  # Nucleus 0.7: 0.5 (mass before 0) and 0.3 (mass before 0.5 < 0.7) kept; 0.15 (mass before 0.8) dropped.
  np.testing.assert_array_equal(kept(sampling.filter_logits(logits, top_p=0.7)), [True, True, False, False])
  np.testing.assert_array_equal(kept(sampling.filter_logits(logits, top_p=0.85)), [True, True, True, False])
  np.testing.assert_array_equal(kept(sampling.filter_logits(logits, top_p=0.1)), [True, False, False, False])


def test_captioner_module_runs_from_cached_features():
  """`features=` skips the encoder: the context from features equals the one from images through the encoder."""
  from xmodal_jax.models.caption_decoder import TransformerCaptionDecoder
  from xmodal_jax.models.resnet import ResNetEncoder
  model = Captioner(ResNetEncoder(stage_widths=(8,), blocks_per_stage=(1,), stem_width=8, norm_groups=4),
                    TransformerCaptionDecoder(vocab_size=10, max_len=4, width=16, depth=1, num_heads=2), width=16)
  images = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(0), images, np.zeros((2, 4), np.int32))
  features = model.apply(variables, images, method=Captioner.features)
  assert features.shape == (2, 64, 8)
  np.testing.assert_allclose(model.apply(variables, features=features, method=Captioner.encode),
                             model.apply(variables, images, method=Captioner.encode), atol=1e-6)
