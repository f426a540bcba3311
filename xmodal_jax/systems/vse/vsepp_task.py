"""VSE++ (Faghri et al. 2018): ResNet image encoder + GRU text encoder, hinge loss with hardest negatives.

Config sections used: data (source, image_size, max_len, tokenizer, vocab_min_count / vocab_size, ...),
model.image, model.text, model.embed_dim, loss (margin, max_violation, max_violation_warmup_steps), evals
(retrieval evaluators). Asset: the tokenizer (workdir/tokenizer.json), built from the train captions.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from xmodal_jax.data.iterator import EpochBatchIterator
from xmodal_jax.data.preprocess import normalize_images
from xmodal_jax.models.resnet import ResNetEncoder
from xmodal_jax.systems.vse.dual_encoder_model import DualEncoder
from xmodal_jax.systems.vse.gru_text import GRUTextEncoder
from xmodal_jax.task_bases.retrieval_task import RetrievalTask


class VSEPPTask(RetrievalTask):
  """Image-text retrieval with VSE++. Predict functions: embed_image, embed_text (unit vectors)."""

  def setup(self, *, training: bool) -> None:
    if self.model is not None:
      return
    self.tokenizer = self.load_or_build_tokenizer(training)
    if training:
      self.check_eval_splits()
    config, dtype = self.config, jnp.dtype(self.config.model.dtype)
    self.model = DualEncoder(
        image_backbone=ResNetEncoder(**config.model.image, dtype=dtype),
        text_encoder=GRUTextEncoder(vocab_size=len(self.tokenizer), **config.model.text, dtype=dtype),
        embed_dim=config.model.embed_dim)

  def train_iterator(self, *, process_index: int, process_count: int) -> EpochBatchIterator:
    return self.caption_iterator(process_index=process_index, process_count=process_count)

  # ---- model and objective
  def init_variables(self, rng: jax.Array):
    size, max_len = self.config.data.image_size, self.config.data.max_len
    images = jnp.zeros((1, size, size, 3), jnp.float32)
    tokens = jnp.zeros((1, max_len), jnp.int32)
    return {"params": self.model.init(rng, images, tokens, tokens > 0)["params"]}

  def loss_fn(self, params, batch, rng, ctx):
    image_emb, text_emb = self.model.apply({"params": params}, normalize_images(batch["images"]),
                                           batch["tokens"], batch["mask"])
    return self.objective(image_emb, text_emb, batch["image_ids"], ctx)

  # ---- predict functions and evaluation data
  def embed_image(self, variables, images):
    """uint8 [batch, H, W, 3] -> unit [batch, embed_dim]."""
    return self.model.apply({"params": variables["params"]}, normalize_images(images),
                            method=DualEncoder.encode_image)

  def embed_text(self, variables, tokens, mask):
    """tokens, mask [batch, max_len] -> unit [batch, embed_dim]."""
    return self.model.apply({"params": variables["params"]}, tokens, mask, method=DualEncoder.encode_text)
