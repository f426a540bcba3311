"""VSE++ (Faghri et al. 2018): ResNet image encoder + GRU text encoder, hinge loss with hardest negatives.

Config sections used: data (source, image_size, max_len, tokenizer, vocab_min_count / vocab_size, ...),
model.image, model.text, model.embed_dim, loss (margin, max_violation, max_violation_warmup_steps), evals
(retrieval evaluators). Asset: the tokenizer (workdir/tokenizer.json), built from the train captions.
"""
from __future__ import annotations

import os
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from xmodal_jax.data import tokenizers
from xmodal_jax.data.captions import TokenizedCaptions, tokenize_captions
from xmodal_jax.data.iterator import EpochBatchIterator
from xmodal_jax.data.preprocess import normalize_images
from xmodal_jax.evaluation.evaluator import EvalData
from xmodal_jax.models.dual_encoder import DualEncoder
from xmodal_jax.models.gru_text import GRUTextEncoder
from xmodal_jax.models.resnet import ResNetEncoder
from xmodal_jax.objectives.contrastive_hinge import contrastive_hinge_loss
from xmodal_jax.tasks.base import ImageTextTask


class VSEPPTask(ImageTextTask):
  """Image-text retrieval with VSE++. Predict functions: embed_image, embed_text (unit vectors)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    super().__init__(config, workdir)
    self._tokens: dict[str, TokenizedCaptions] = {}
    self.tokenizer = None
    self.model = None
    self._predict = {"embed_image": self.embed_image, "embed_text": self.embed_text}

  def setup(self, *, training: bool) -> None:
    if self.model is not None:
      return
    self.tokenizer = self._tokenizer(training)
    if training:
      self.check_eval_splits()
    config, dtype = self.config, jnp.dtype(self.config.model.dtype)
    self.model = DualEncoder(
        image_backbone=ResNetEncoder(**config.model.image, dtype=dtype),
        text_encoder=GRUTextEncoder(vocab_size=len(self.tokenizer), **config.model.text, dtype=dtype),
        embed_dim=config.model.embed_dim)

  def _tokenizer(self, training: bool):
    """The run's tokenizer lives in the workdir: built from the train captions once, reused on resume, eval
    and inference."""
    path = tokenizers.tokenizer_path(self.workdir)
    if os.path.exists(path) or not training:
      return tokenizers.load_tokenizer(path)
    cfg = self.config.data
    options = ({"min_count": cfg.vocab_min_count} if cfg.tokenizer == "word" else {"vocab_size": cfg.vocab_size})
    tokenizer = tokenizers.build_tokenizer(cfg.tokenizer, (c for caps in self.split("train").captions for c in caps),
                                           **options)
    if jax.process_index() == 0:
      tokenizer.save(path)
    return tokenizer

  # ---- data
  def tokens(self, name: str) -> TokenizedCaptions:
    if name not in self._tokens:
      self._tokens[name] = tokenize_captions(self.split(name).captions, self.tokenizer, self.config.data.max_len, name)
    return self._tokens[name]

  def encode_texts(self, captions: Sequence[str]) -> dict[str, np.ndarray]:
    """Captions -> the inputs of `embed_text` ({"tokens", "mask"}), tokenised as in training."""
    tokens, mask = self.tokenizer.encode_batch(list(captions), self.config.data.max_len)
    return {"tokens": tokens, "mask": mask}

  def train_iterator(self, *, process_index: int, process_count: int) -> EpochBatchIterator:
    data, toks = self.split("train"), self.tokens("train")

    def targets(indices: np.ndarray, keys: np.ndarray) -> dict[str, np.ndarray]:
      rows = toks.sample_one_per_image(indices, keys)  # one caption per image, drawn from its key
      return {"tokens": toks.tokens[rows], "mask": toks.mask[rows], "image_ids": data.image_ids[indices]}

    return self.image_iterator(np.arange(len(data)), targets, process_index=process_index,
                               process_count=process_count)

  # ---- model and objective
  def init_variables(self, rng: jax.Array):
    size, max_len = self.config.data.image_size, self.config.data.max_len
    images = jnp.zeros((1, size, size, 3), jnp.float32)
    tokens = jnp.zeros((1, max_len), jnp.int32)
    return {"params": self.model.init(rng, images, tokens, tokens > 0)["params"]}

  def loss_fn(self, params, batch, rng, ctx):
    image_emb, text_emb = self.model.apply({"params": params}, normalize_images(batch["images"]),
                                           batch["tokens"], batch["mask"])
    cfg = self.config.loss
    max_violation = jnp.logical_and(bool(cfg.max_violation), ctx.step >= cfg.max_violation_warmup_steps)
    loss, aux = contrastive_hinge_loss(image_emb, text_emb, margin=cfg.margin, max_violation=max_violation,
                                       image_ids=batch["image_ids"])
    return loss, dict(aux, max_violation=max_violation.astype(jnp.float32))

  # ---- predict functions and evaluation data
  def embed_image(self, variables, images):
    """uint8 [batch, H, W, 3] -> unit [batch, embed_dim]."""
    return self.model.apply({"params": variables["params"]}, normalize_images(images),
                            method=DualEncoder.encode_image)

  def embed_text(self, variables, tokens, mask):
    """tokens, mask [batch, max_len] -> unit [batch, embed_dim]."""
    return self.model.apply({"params": variables["params"]}, tokens, mask, method=DualEncoder.encode_text)

  def predict_fns(self):
    return self._predict

  def make_eval_data(self, split: str) -> EvalData:
    toks = self.tokens(split)
    return EvalData(image_inputs={"images": self.eval_images(split)},
                    text_inputs={"tokens": toks.tokens, "mask": toks.mask}, text_to_image=toks.text_to_image)
