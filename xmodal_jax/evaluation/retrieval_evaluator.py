"""The retrieval evaluator: image<->text R@K of a task's predict functions, by embeddings or a pairwise scorer.

Three ways to score, one rank definition and tie rule (evaluation/retrieval.py):
  scorer="embeddings": `embed_image` / `embed_text` -> [N, D] / [M, D], chunked dot products (dual encoders);
  scorer="pairwise": `score_pairs(variables, image=..., text=...)` -> [P] scores of aligned pairs
    (cross-encoders: S2's cross attention, S4's matching head), run over blocks of image x caption pairs so
    memory stays bounded. Optional per-item encoders `pair_image` / `pair_text` run once per image / caption
    (e.g. region or word features) and their outputs are what `score_pairs` receives; without them it gets
    the raw inputs (evaluation/pair_scoring.py);
  rerank_k > 0 (with scorer="pairwise"): each query's top-k by the dual encoder's embeddings is re-scored by
    `score_pairs` (the usual way to make cross-encoder retrieval affordable).
`max_images` keeps the first N images and their texts (e.g. full pairwise scoring of one fold).
`fold_size` also reports the mean over consecutive folds of that many images (COCO 1K).
Per-query ranks of the whole split (`items`: i2t_rank [N], t2i_rank [M], text_to_image [M]; R@K of one query is
rank <= K) are kept for statistics over queries (the trainer saves them beside results.json).
Example pictures (`summaries`, written to TensorBoard by the trainer): `examples` images spread over the split as
queries -> their top-5 captions, and the first caption of each as queries -> their top-5 images, scored as the
metrics are (embeddings, or the pairwise scorer over every candidate of those few queries).
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

from xmodal_jax import errors
from xmodal_jax.evaluation import evaluator as evaluator_lib
from xmodal_jax.evaluation import pair_scoring
from xmodal_jax.evaluation import retrieval
from xmodal_jax.evaluation import summary_images


@evaluator_lib.register
class RetrievalEvaluator(evaluator_lib.Evaluator):
  TYPE = "retrieval"
  DEFAULTS = dict(
      ks=(1, 5, 10),
      fold_size=0,            # > 0: also the mean over folds of this many images (when the split is larger)
      scorer="embeddings",    # embeddings | pairwise
      rerank_k=0,             # pairwise: > 0 re-scores the embeddings' top-k of every query
      pair_batch_size=4096,   # pairs per score_pairs call
      embed_image="embed_image", embed_text="embed_text", score_pairs="score_pairs",
      pair_image="", pair_text="",  # per-item encoders feeding score_pairs ('' = raw inputs)
      max_images=0)           # > 0: only the split's first N images and their texts (e.g. one fold, full scoring)

  def __init__(self, name, spec):
    super().__init__(name, spec)
    if spec.scorer not in ("embeddings", "pairwise"):
      raise errors.ConfigError(f"config.evals.{name}.scorer={spec.scorer!r}; use 'embeddings' or 'pairwise'.")
    if spec.rerank_k and spec.scorer != "pairwise":
      raise errors.ConfigError(f"config.evals.{name}.rerank_k={spec.rerank_k} re-ranks with the pairwise scorer: set "
                       "scorer='pairwise' (or rerank_k=0).")

  def _embeddings(self, predict_fns, variables, data, runtime) -> tuple[np.ndarray, np.ndarray]:
    bs = self.spec.batch_size
    images = runtime.map_batches(self.predict_fn(predict_fns, "embed_image"), variables,
                                 data.need("image_inputs", self.name), bs)
    texts = runtime.map_batches(self.predict_fn(predict_fns, "embed_text"), variables,
                                data.need("text_inputs", self.name), bs)
    return images, texts

  def _ranks(self, image_emb, text_emb, scorer, text_to_image, num_images) -> tuple[np.ndarray, np.ndarray]:
    """(i2t ranks [N], t2i ranks [M]) by the configured scorer."""
    if scorer is None:
      return retrieval.retrieval_ranks(image_emb, text_emb, text_to_image)
    if self.spec.rerank_k:
      return retrieval.reranked_ranks(image_emb, text_emb, text_to_image, scorer, int(self.spec.rerank_k))
    return retrieval.pairwise_ranks(scorer, text_to_image, num_images, max_pairs=int(self.spec.pair_batch_size) * 16)

  def _ranked(self, image_emb, text_emb, scorer, text_to_image, num_images) -> dict[str, float]:
    return retrieval.metrics_from_ranks(*self._ranks(image_emb, text_emb, scorer, text_to_image, num_images),
                                        ks=tuple(self.spec.ks))

  def evaluate(self, predict_fns, variables, data, runtime) -> dict[str, float]:
    text_to_image = np.asarray(data.need("text_to_image", self.name))
    image_inputs, text_inputs = data.need("image_inputs", self.name), data.need("text_inputs", self.name)
    num_images = len(jax.tree.leaves(image_inputs)[0])
    if 0 < int(self.spec.max_images) < num_images:
      num_images = int(self.spec.max_images)
      texts = np.flatnonzero(text_to_image < num_images)
      image_inputs = jax.tree.map(lambda x: x[:num_images], image_inputs)
      text_inputs = jax.tree.map(lambda x: np.asarray(x)[texts], text_inputs)
      text_to_image = text_to_image[texts]
      extras = dict(data.extras)
      if "captions" in extras:
        extras["captions"] = [extras["captions"][t] for t in texts]
      data = dataclasses.replace(data, image_inputs=image_inputs, text_inputs=text_inputs,
                                 text_to_image=text_to_image, extras=extras)
    image_emb = text_emb = scorer = None
    if self.spec.scorer == "embeddings" or self.spec.rerank_k:
      image_emb, text_emb = self._embeddings(predict_fns, variables, data, runtime)
    if self.spec.scorer == "pairwise":
      scorer = pair_scoring.pair_scorer(self, predict_fns, variables, image_inputs, text_inputs, runtime)
    i2t, t2i = self._ranks(image_emb, text_emb, scorer, text_to_image, num_images)
    metrics = retrieval.metrics_from_ranks(i2t, t2i, ks=tuple(self.spec.ks))
    self.items = {"i2t_rank": np.asarray(i2t), "t2i_rank": np.asarray(t2i), "text_to_image": text_to_image}
    self.summaries = self._examples(data, image_emb, text_emb, scorer, text_to_image, num_images)
    fold = int(self.spec.fold_size)
    if fold and num_images > fold and num_images % fold == 0:
      if scorer is None:
        folds = retrieval.fold_retrieval_metrics(image_emb, text_emb, text_to_image, fold_size=fold,
                                                 ks=tuple(self.spec.ks))
      else:
        per_fold = []
        for start in range(0, num_images, fold):
          texts = np.flatnonzero((text_to_image >= start) & (text_to_image < start + fold))
          sub = lambda i, t, s=start, txt=texts: scorer(i + s, txt[t])
          per_fold.append(self._ranked(None if image_emb is None else image_emb[start:start + fold],
                                       None if text_emb is None else text_emb[texts], sub,
                                       text_to_image[texts] - start, fold))
        folds = {k: float(np.mean([m[k] for m in per_fold])) for k in per_fold[0]}
      metrics.update({f"fold{fold}_{k}": v for k, v in folds.items()})
    return metrics

  def _examples(self, data, image_emb, text_emb, scorer, text_to_image, num_images, k: int = 5):
    """summary_images.retrieval_examples of `examples` image queries spread over the split (those with a text)
    and the first text of each as text queries; None when examples=0."""
    if not self.examples:
      return None
    images = summary_images.spread(self.examples, num_images)
    images = images[np.isin(images, text_to_image)]
    if not len(images):
      return None
    texts = np.asarray([np.flatnonzero(text_to_image == i)[0] for i in images], np.int64)
    if scorer is None:
      t2i, i2t = text_emb[texts] @ image_emb.T, image_emb[images] @ text_emb.T
    else:  # the pairwise scorer over every candidate of these few queries
      num_texts = len(text_to_image)
      t2i = scorer(np.tile(np.arange(num_images), len(texts)), np.repeat(texts, num_images))
      i2t = scorer(np.repeat(images, num_texts), np.tile(np.arange(num_texts), len(images)))
      t2i, i2t = t2i.reshape(len(texts), num_images), i2t.reshape(len(images), num_texts)
    return summary_images.retrieval_examples(t2i, i2t, texts, images, text_to_image,
                                             summary_images.display_images(data),
                                             summary_images.caption_strings(data), k=k)

  def format(self, metrics: dict[str, float], title: str) -> str:
    table = retrieval.format_retrieval_table({k: v for k, v in metrics.items() if not k.startswith("fold")},
                                             title=title)
    fold = int(self.spec.fold_size)
    folds = {k[len(f"fold{fold}_"):]: v for k, v in metrics.items() if k.startswith(f"fold{fold}_")}
    if folds:
      table += "\n\n" + retrieval.format_retrieval_table(folds, title=f"{title}, mean over {fold}-image folds")
    return table
