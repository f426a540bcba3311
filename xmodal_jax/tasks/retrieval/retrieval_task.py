"""What the image<->text retrieval tasks share (VSE++ from scratch, the dual encoder over pretrained towers):
the tokenizer asset, tokenised caption tables per split, the `embed_image` / `embed_text` predict functions
and the retrieval evaluators' data."""
from __future__ import annotations

import os
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from xmodal_jax.data import tokenizers
from xmodal_jax.data.captions import TokenizedCaptions, tokenize_captions
from xmodal_jax.evaluation.evaluator import EvalData
from xmodal_jax.objectives.contrastive_hinge import contrastive_hinge_loss
from xmodal_jax.tasks.base import ImageTextTask


class RetrievalTask(ImageTextTask):
  """Subclasses build `self.model` in `setup` and define `embed_image(variables, images)` and
  `embed_text(variables, tokens, mask)` (unit vectors)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    super().__init__(config, workdir)
    self._tokens: dict[str, TokenizedCaptions] = {}
    self.tokenizer = None
    self.model = None
    self._predict = {"embed_image": self.embed_image, "embed_text": self.embed_text}

  def embed_image(self, variables, images):
    raise NotImplementedError

  def embed_text(self, variables, tokens, mask):
    raise NotImplementedError

  def load_or_build_tokenizer(self, training: bool):
    """The run's tokenizer lives in the workdir: built once on the first training run (from the train captions;
    a pretrained WordPiece vocabulary is copied as it is), reused on resume, eval and inference."""
    path = tokenizers.tokenizer_path(self.workdir)
    if os.path.exists(path) or not training:
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
    return EvalData(image_inputs={"images": self.eval_images(split)},
                    text_inputs={"tokens": toks.tokens, "mask": toks.mask}, text_to_image=toks.text_to_image)

  def hinge_loss(self, image_emb, text_emb, image_ids, step):
    """VSE++'s loss (config.loss: margin, max_violation from step max_violation_warmup_steps on) -> (loss,
    metrics)."""
    cfg = self.config.loss
    max_violation = jnp.logical_and(bool(cfg.max_violation), step >= cfg.max_violation_warmup_steps)
    loss, aux = contrastive_hinge_loss(image_emb, text_emb, margin=cfg.margin, max_violation=max_violation,
                                       image_ids=image_ids)
    return loss, dict(aux, max_violation=max_violation.astype(jnp.float32))
