"""Two-tower models that score captions: the SCST reward model, and the evaluation's scorers (an independent judge,
the base reward model, the grammar model).

A scorer is a finished two-tower run loaded frozen from its workdir: the `clip` task, the `dual_encoder` task
(pretrained EfficientNet-Lite + MiniLM, WordPiece), or one of S5's reward-model tasks over either (a grammar head
added). It offers pure functions for use inside a jitted step (`text_inputs`, `embed_text_fn`, `grammar_fn`)
and host-side helpers for evaluation (`embed_images` of a split at the scorer's own image size, `embed_captions` of
strings tokenised with the scorer's own tokenizer, `grammar` of strings). `SplitScorer` binds one to an evaluation
split and is what the shared captioning evaluator (evaluation/captioning.py) receives.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

from xmodal_jax import errors
from xmodal_jax.data import sources
from xmodal_jax.data.text import normalize_caption
from xmodal_jax.systems.captioning import sampling
from xmodal_jax.train.inference import LoadedModel

SCORER_TASKS = ("clip", "s5_reward_model", "dual_encoder", "s5_reward_model_dual_encoder")
# The data-section fields that decide which images a split holds and how they are stored.
_IMAGE_FIELDS = ("source", "seed", "num_train", "num_val", "num_test", "prepare_size", "prepared_dir", "tfds_data_dir",
                 "skip_bad", "max_bad_fraction", "allow_outside_paths")


@dataclasses.dataclass
class Scorer:
  """A loaded two-tower run (see the module docstring)."""
  name: str
  workdir: str
  loaded: LoadedModel

  @property
  def tokenizer(self):
    return self.loaded.task.tokenizer

  @property
  def max_len(self) -> int:
    return int(self.loaded.task.config.data.max_len)

  @property
  def image_size(self) -> int:
    return int(self.loaded.task.config.data.image_size)

  @property
  def has_grammar(self) -> bool:
    return "grammar_score" in self.loaded.task.predict_fns()

  # ---- pure functions (variables = self.loaded.variables, passed in as frozen params)
  def text_inputs(self, tokens):
    """A captioner's decoded tokens [n, T] -> this scorer's text input (tokens, mask) [n, max_len] (`text_inputs`)."""
    return text_inputs(self.tokenizer, tokens, self.max_len)

  def embed_text_fn(self, variables, tokens, mask):
    """Text-tower tokens, mask [n, max_len] (`text_inputs`) -> unit [n, D]."""
    return self.loaded.task.predict_fns()["embed_text"](variables, tokens, mask)

  def grammar_fn(self, variables, tokens, mask):
    """Text-tower tokens, mask [n, max_len] (`text_inputs`) -> g(c) in [0, 1] [n]."""
    return self.loaded.task.predict_fns()["grammar_score"](variables, tokens, mask)

  # ---- host helpers
  def embed_images(self, data: sources.SplitData, data_config=None, batch_size: int = 256) -> np.ndarray:
    """Every image of split `data` (read with `data_config`) -> float32 [N, D]. The images are read through this
    scorer's own data section (its prepared size and centre crop), from the same source; rows must be the same
    images as `data`'s. When both data sections read the images alike, `data` itself is used (no second load)."""
    ours = self.loaded.task.config.data
    same = data_config is not None and all(data_config.get(k) == ours.get(k) for k in _IMAGE_FIELDS)
    own = data if same else sources.load_split(ours, data.name)
    if len(own) != len(data) or not np.array_equal(np.asarray(own.image_ids), np.asarray(data.image_ids)):
      raise errors.ConfigError(f"The {self.name} model ({self.workdir}) was trained on another data source: its "
                               f"{data.name} split has other images ({len(own)} vs {len(data)}). Use a {self.name} "
                               "model of the same config.data.source (and shapes world sizes).")
    rows = np.arange(len(own))
    out = []
    for start in range(0, len(rows), 2048):
      images = own.load_images(rows[start:start + 2048], self.image_size)
      out.append(np.asarray(self.loaded.predict("embed_image", {"images": images}, batch_size), np.float32))
    return np.concatenate(out)

  def _encode(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, mask [n, max_len], has_words bool [n]); a caption without a word (an empty generated caption)
    is encoded as a placeholder (the tokenizers refuse empty text) and flagged."""
    keep = np.asarray([has_words(c) for c in captions], bool)
    tokens, mask = self.tokenizer.encode_batch([c if ok else "a" for c, ok in zip(captions, keep)], self.max_len)
    return tokens, mask, keep

  def embed_captions(self, captions: Sequence[str], batch_size: int = 512) -> np.ndarray:
    """Caption strings -> float32 [n, D]; an empty caption gets a zero row."""
    tokens, mask, keep = self._encode(list(captions))
    out = np.asarray(self.loaded.predict("embed_text", {"tokens": tokens, "mask": mask}, batch_size), np.float32)
    return np.where(keep[:, None], out, 0.0).astype(np.float32)

  def grammar(self, captions: Sequence[str], batch_size: int = 512) -> np.ndarray | None:
    """g(c) in [0, 1] [n] (0 for an empty caption), or None when the model has no grammar head."""
    if not self.has_grammar:
      return None
    tokens, mask, keep = self._encode(list(captions))
    out = np.asarray(self.loaded.predict("grammar_score", {"tokens": tokens, "mask": mask}, batch_size), np.float32)
    return np.where(keep, out, 0.0).astype(np.float32)


def text_inputs(tokenizer, tokens, max_len: int):
  """A captioner's decoded tokens [n, T] (words, <eos>, <pad>, in `tokenizer`'s ids) -> a text tower's input (tokens,
  mask) [n, max_len], equal to `tokenizer.encode_batch(decoded texts, max_len)` whenever decoding and re-encoding
  give the same pieces: the words, right-padded, for a word / SentencePiece tokenizer; [CLS] + words + [SEP] for
  WordPiece (`encode_adds_specials`; a caption longer than max_len - 2 pieces is cut and still ends with [SEP])."""
  words, mask = sampling.words_only(tokens, tokenizer.eos_id, tokenizer.pad_id)
  if not tokenizer.encode_adds_specials:
    return fit_length(words, mask, max_len)
  words, mask = fit_length(words, mask, max_len - 2)
  n = tokens.shape[0]
  length = jnp.sum(mask, axis=1)
  out = jnp.concatenate([jnp.full((n, 1), tokenizer.bos_id, words.dtype), words, jnp.zeros((n, 1), words.dtype)],
                        axis=1)
  out = out.at[jnp.arange(n), length + 1].set(tokenizer.eos_id)
  return out, jnp.arange(max_len)[None, :] < (length + 2)[:, None]


def fit_length(tokens, mask, max_len: int):
  """[n, L] -> [n, max_len]: cut, or right-padded with <pad>."""
  length = tokens.shape[1]
  if length >= max_len:
    return tokens[:, :max_len], mask[:, :max_len]
  pad = ((0, 0), (0, max_len - length))
  return jnp.pad(tokens, pad), jnp.pad(mask, pad)


def has_words(text: str) -> bool:
  """Whether the tokenizers' normalisation leaves anything of `text` (they refuse an empty text)."""
  try:
    return bool(normalize_caption(text))
  except ValueError:
    return False


@functools.lru_cache(maxsize=8)
def _load(workdir: str, mesh_shape: tuple[int, ...]) -> LoadedModel:
  from xmodal_jax import systems  # pylint: disable=import-outside-toplevel  (the registry, to load another run)
  return systems.load_run(workdir, mesh_shape=mesh_shape)


def load_scorer(workdir: str, field: str, *, name: str = "reward", mesh_shape: tuple[int, ...] = (-1, 1)) -> Scorer:
  """The finished two-tower run in `workdir` (named by config `field` in errors), loaded once per process."""
  try:
    loaded = _load(workdir, tuple(mesh_shape))
  except FileNotFoundError as e:
    raise errors.MissingError(f"{field}={workdir!r}: {e}") from None
  if loaded.task.config.task not in SCORER_TASKS:
    raise errors.ConfigError(f"{field}={workdir!r} is a {loaded.task.config.task!r} run; it must be one of "
                             f"{SCORER_TASKS} (a two-tower model with embed_image / embed_text).")
  return Scorer(name, workdir, loaded)


def same_tokenizer(a, b) -> bool:
  """Whether two tokenizers encode alike (same class, size and ids of a probe text)."""
  probe = "a red circle on a dark background , two dogs run in the grass"
  return type(a) is type(b) and len(a) == len(b) and a.encode(probe) == b.encode(probe)


@dataclasses.dataclass
class SplitScorer:
  """A scorer bound to one evaluation split: its image and reference embeddings are computed once."""
  scorer: Scorer
  data: Any
  data_config: Any = None
  _images: np.ndarray | None = None
  _references: tuple[np.ndarray, np.ndarray] | None = None

  @property
  def name(self) -> str:
    return self.scorer.name

  def image_embeddings(self) -> np.ndarray:
    if self._images is None:
      self._images = self.scorer.embed_images(self.data, self.data_config)
    return self._images

  def reference_embeddings(self) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings [M, D] of every human caption of the split, owner image row [M])."""
    if self._references is None:
      flat = [c for caps in self.data.captions for c in caps]
      owner = np.repeat(np.arange(len(self.data)), [len(c) for c in self.data.captions])
      self._references = (self.scorer.embed_captions(flat), owner)
    return self._references

  def caption_embeddings(self, captions: Sequence[str]) -> np.ndarray:
    return self.scorer.embed_captions(captions)

  def grammar(self, captions: Sequence[str]) -> np.ndarray | None:
    return self.scorer.grammar(captions)


def eval_scorers(config, data) -> list[SplitScorer]:
  """The evaluation scorers of a captioning config (config.scorers: name -> workdir, '' = none), bound to `data`.
  The same scorers for every captioner of a table (e.g. "judge": an independent model, "clip": the base reward
  model, "grammar": the reward model with a grammar head), whatever reward each was trained under."""
  out = []
  for name, workdir in config.scorers.items():
    if workdir:
      scorer = load_scorer(str(workdir), f"config.scorers.{name}", name=name, mesh_shape=tuple(config.mesh.shape))
      out.append(SplitScorer(scorer, data, config.data))
  return out
