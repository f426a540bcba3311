"""VSE++ (Faghri et al. 2018): ResNet image encoder + GRU text encoder, hinge loss with hardest negatives.

Config sections used: data (source, image_size, max_len, vocab_min_count, ...), model.image, model.text,
model.embed_dim, loss (margin, max_violation, max_violation_warmup_steps), eval (batch_size, fold_size).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from xmodal_jax.data.captions import TokenizedCaptions, tokenize_captions
from xmodal_jax.data.iterator import EpochBatchIterator
from xmodal_jax.data.preprocess import normalize_images
from xmodal_jax.data import tokenizers
from xmodal_jax.evaluation import retrieval
from xmodal_jax.models.dual_encoder import DualEncoder
from xmodal_jax.models.gru_text import GRUTextEncoder
from xmodal_jax.models.resnet import ResNetEncoder
from xmodal_jax.objectives.contrastive_hinge import contrastive_hinge_loss
from xmodal_jax.tasks.base import Task
from xmodal_jax.train.runtime import Runtime


class VSEPPTask(Task):
  """Image-text retrieval with VSE++; evaluates R@1/5/10 both ways on whole splits and 1K folds."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    super().__init__(config, workdir)
    self._tokens: dict[str, TokenizedCaptions] = {}
    self.tokenizer = self._load_or_build_tokenizer()
    for name in self.eval_splits:  # fail now, not after training, if an eval split is missing
      self.split(name)
    dtype = jnp.dtype(config.model.dtype)
    self.model = DualEncoder(
        image_backbone=ResNetEncoder(**config.model.image, dtype=dtype),
        text_encoder=GRUTextEncoder(vocab_size=len(self.tokenizer), **config.model.text, dtype=dtype),
        embed_dim=config.model.embed_dim)

  # ---- data
  def tokens(self, name: str) -> TokenizedCaptions:
    if name not in self._tokens:
      self._tokens[name] = tokenize_captions(self.split(name).captions, self.tokenizer, self.config.data.max_len, name)
    return self._tokens[name]

  def _load_or_build_tokenizer(self):
    """The run's tokenizer lives in the workdir: built from the train captions once, reused on resume/eval."""
    path = tokenizers.tokenizer_path(self.workdir)
    if os.path.exists(path):
      return tokenizers.load_tokenizer(path)
    cfg = self.config.data
    options = ({"min_count": cfg.vocab_min_count} if cfg.tokenizer == "word"
               else {"vocab_size": cfg.vocab_size})
    tokenizer = tokenizers.build_tokenizer(cfg.tokenizer, (c for caps in self.split("train").captions for c in caps),
                                           **options)
    if jax.process_index() == 0:
      tokenizer.save(path)
    return tokenizer

  def train_iterator(self, *, process_index: int, process_count: int) -> EpochBatchIterator:
    data, toks = self.split("train"), self.tokens("train")

    def targets(indices: np.ndarray, keys: np.ndarray) -> dict[str, np.ndarray]:
      rows = toks.sample_one_per_image(indices, keys)  # one caption per image, drawn from its key
      return {"tokens": toks.tokens[rows], "mask": toks.mask[rows], "image_ids": data.image_ids[indices]}

    return self.image_iterator(np.arange(len(data)), targets, process_index=process_index,
                               process_count=process_count)

  # ---- model and objective
  def init_params(self, rng: jax.Array):
    size, max_len = self.config.data.image_size, self.config.data.max_len
    images = jnp.zeros((1, size, size, 3), jnp.float32)
    tokens = jnp.zeros((1, max_len), jnp.int32)
    return self.model.init(rng, images, tokens, tokens > 0)["params"]

  def loss_fn(self, params, batch, rng, step):
    image_emb, text_emb = self.model.apply({"params": params}, normalize_images(batch["images"]),
                                           batch["tokens"], batch["mask"])
    cfg = self.config.loss
    max_violation = jnp.logical_and(bool(cfg.max_violation), step >= cfg.max_violation_warmup_steps)
    loss, aux = contrastive_hinge_loss(image_emb, text_emb, margin=cfg.margin, max_violation=max_violation,
                                       image_ids=batch["image_ids"])
    return loss, dict(aux, max_violation=max_violation.astype(jnp.float32))

  # ---- evaluation
  def _embed_images(self, params, images):
    return self.model.apply({"params": params}, normalize_images(images), method=DualEncoder.encode_image)

  def _embed_texts(self, params, tokens, mask):
    return self.model.apply({"params": params}, tokens, mask, method=DualEncoder.encode_text)

  def embed_split(self, params, name: str, runtime: Runtime) -> tuple[np.ndarray, np.ndarray]:
    """(image embeddings [N, D], caption embeddings [M, D]) of a split, in split order."""
    bs = self.config.eval.batch_size
    toks = self.tokens(name)
    images = runtime.map_batches(self._embed_images, params, {"images": self.eval_images(name)}, bs)
    texts = runtime.map_batches(self._embed_texts, params, {"tokens": toks.tokens, "mask": toks.mask}, bs)
    return images, texts

  def evaluate(self, params, split: str, runtime: Runtime) -> dict[str, float]:
    image_emb, text_emb = self.embed_split(params, split, runtime)
    text_to_image = self.tokens(split).text_to_image
    metrics = retrieval.retrieval_metrics(image_emb, text_emb, text_to_image)
    fold = self.config.eval.fold_size
    if fold and len(image_emb) > fold and len(image_emb) % fold == 0:
      folds = retrieval.fold_retrieval_metrics(image_emb, text_emb, text_to_image, fold_size=fold)
      metrics.update({f"fold{fold}_{k}": v for k, v in folds.items()})
    return metrics

  def format_results(self, metrics: dict[str, float], split: str) -> str:
    table = retrieval.format_retrieval_table({k: v for k, v in metrics.items() if not k.startswith("fold")},
                                             title=split)
    fold = self.config.eval.fold_size
    folds = {k[len(f"fold{fold}_"):]: v for k, v in metrics.items() if k.startswith(f"fold{fold}_")}
    if folds:
      table += "\n" + retrieval.format_retrieval_table(folds, title=f"{split}, mean over {fold}-image folds")
    return table
