"""What the image<->text retrieval tasks share (VSE++ from scratch, the dual encoder over pretrained towers):
the tokenizer asset, tokenised caption tables per split, the `embed_image` / `embed_text` predict functions,
the retrieval evaluators' data (and, for a zero_shot evaluator, the split's classes and tokenised prompts), the
training batches of one caption per image, and the contrastive objective of config.loss."""
from __future__ import annotations

from typing import Sequence

import jax
import ml_collections
import numpy as np

from xmodal_jax import fileio
from xmodal_jax.data import tokenizers
from xmodal_jax.data.captions import TokenizedCaptions, tokenize_captions
from xmodal_jax.data.iterator import EpochBatchIterator
from xmodal_jax.data.zero_shot_classes import zero_shot_classes
from xmodal_jax.evaluation.evaluator import EvalData
from xmodal_jax.task_bases import contrastive_objective
from xmodal_jax.task_bases.base import ImageTextTask


class RetrievalTask(ImageTextTask):
  """Subclasses build `self.model` in `setup` and define `embed_image(variables, images)` and
  `embed_text(variables, tokens, mask)` (unit vectors).

  The raw-input interface every retrieval task has (serving, export): `embed_image(variables,
  **image_predict_inputs(images))` with uint8 centre crops [n, S, S, 3] (S = config.data.image_size) and
  `embed_text(variables, **encode_texts(captions))` -> unit vectors [n, D]. Tasks that score pairs jointly
  (`has_pairwise_scoring`) add `pair_image` (same inputs as embed_image) and `pair_text` (same as embed_text) ->
  dicts of per-item arrays [n, ...], and `score_pairs(variables, image, text)` -> float32 [P] for aligned rows of
  those dicts (higher = better match)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    super().__init__(config, workdir)
    if "loss" in config:
      contrastive_objective.check(config.loss)
    self._tokens: dict[str, TokenizedCaptions] = {}
    self.tokenizer = None
    self.model = None
    self._predict = {"embed_image": self.embed_image, "embed_text": self.embed_text}

  def embed_image(self, variables, images):
    raise NotImplementedError

  def embed_text(self, variables, tokens, mask):
    raise NotImplementedError

  @property
  def has_pairwise_scoring(self) -> bool:
    """Whether the task has pair_image / pair_text / score_pairs (a re-ranker of embed_image / embed_text)."""
    return all(name in self._predict for name in ("pair_image", "pair_text", "score_pairs"))

  def image_predict_inputs(self, images: np.ndarray, split: str | None = None, rows=None) -> dict[str, np.ndarray]:
    """The kwargs of embed_image (and pair_image) for uint8 images [n, S, S, 3]; `split` / `rows` (which images
    of that split they are) matter to tasks with regions (task_bases/frozen_tower_regions.py)."""
    del split, rows
    return {"images": np.asarray(images)}

  def load_or_build_tokenizer(self, training: bool):
    """The run's tokenizer lives in the workdir: built once on the first training run (from the train captions;
    a pretrained WordPiece vocabulary is copied as it is), reused on resume, eval and inference."""
    path = tokenizers.tokenizer_path(self.workdir)
    if fileio.exists(path) or not training:
      return tokenizers.load_tokenizer(path)
    cfg = self.config.data
    options = {"word": {"min_count": cfg.vocab_min_count},
               "sentencepiece": {"vocab_size": cfg.vocab_size}}.get(cfg.tokenizer, {})
    captions = () if cfg.tokenizer == "wordpiece" else (c for caps in self.split("train").captions for c in caps)
    tokenizer = tokenizers.build_tokenizer(cfg.tokenizer, captions, **options)
    if jax.process_index() == 0:
      tokenizer.save(path)
    return tokenizer

  def tokens(self, name: str) -> TokenizedCaptions:
    if name not in self._tokens:
      self._tokens[name] = tokenize_captions(self.split(name).captions, self.tokenizer, self.config.data.max_len, name)
    return self._tokens[name]

  def encode_texts(self, captions: Sequence[str]) -> dict[str, np.ndarray]:
    """Captions -> the inputs of `embed_text` ({"tokens", "mask"}), tokenised as in training."""
    tokens, mask = self.tokenizer.encode_batch(list(captions), self.config.data.max_len)
    return {"tokens": tokens, "mask": mask}

  def predict_fns(self):
    return self._predict

  def make_eval_data(self, split: str) -> EvalData:
    toks = self.tokens(split)
    data = EvalData(image_inputs={"images": self.eval_images(split)},
                    text_inputs={"tokens": toks.tokens, "mask": toks.mask}, text_to_image=toks.text_to_image,
                    extras=self.example_extras(split, images=False))
    if any(spec.type == "zero_shot" and spec.split == split for spec in self.config.evals.values()):
      classes = zero_shot_classes(self.data_config(), self.split(split))  # labels + prompts, tokenised as captions
      data.labels, data.label_names = classes.labels, classes.names
      data.extras.update(class_text_inputs=self.encode_texts([p for prompts in classes.prompts for p in prompts]),
                         class_of_text=np.repeat(np.arange(len(classes.names)), [len(p) for p in classes.prompts]))
    return data

  def objective(self, image_emb, text_emb, image_ids, ctx, scalars=None):
    """config.loss's objective (hinge | infonce | sigmoid, plain or chunked; contrastive_objective.py) of unit
    embeddings [B, D] over the global batch -> (loss, metrics). scalars: the model's logit_scale / logit_bias."""
    return contrastive_objective.contrastive_loss(self.config.loss, image_emb, text_emb, image_ids, scalars or {},
                                                  ctx.step, ctx.mesh)

  def caption_iterator(self, *, process_index: int, process_count: int) -> EpochBatchIterator:
    """Training batches of every train image once per epoch with one of its captions, drawn from the image's key:
    images (random crops, + flips), tokens, mask, image_ids."""
    data, toks = self.split("train"), self.tokens("train")

    def targets(indices: np.ndarray, keys: np.ndarray) -> dict[str, np.ndarray]:
      rows = toks.sample_one_per_image(indices, keys)
      return {"tokens": toks.tokens[rows], "mask": toks.mask[rows], "image_ids": data.image_ids[indices]}

    return self.image_iterator(np.arange(len(data)), targets, process_index=process_index,
                               process_count=process_count)
