"""S1 stage 1, the text generator: CNN -> 64-d x -> cosine softmax over K search queries (seed eq. 1).

Each training example is (image, one of its queries drawn by weight). Training uses a sampled softmax
(config.loss.softmax="sampled": `num_samples` shared negatives from a uniform or log-uniform proposal, log-Q
corrected) so the cost of the loss does not grow with K; "full" uses all K. Evaluation ("label_ranking"
evaluators) scores all K and reports how often the generated top phrases are true queries of the image: p@1,
p@3 (precision of the top 3, the phrases S1 uses) and r@10 (recall of the image's queries in the top 10); on
shapes world also p@3 against every query true of the image.

With config.loss.query_update="sparse_adagrad" the gradient of W is row-sparse (the rows a step gathered) and
only those rows are updated (row-wise Adagrad, train/sparse_rows.py, an optax group of its own), so the whole
step, not only the loss, costs the same for any K; "dense" (default) trains W with the same optax chain as
every other parameter.

Config: data (+ query_* fields), model.image (ResNet), model.embed_dim (64), loss (softmax, num_samples,
distribution, scale, query_update, query_learning_rate). Asset: queries.json.
"""
from __future__ import annotations

import jax
import numpy as np

from xmodal_jax import errors
from xmodal_jax.data import shapes_world
from xmodal_jax.data.preprocess import normalize_images
from xmodal_jax.evaluation.evaluator import EvalData
from xmodal_jax.systems.classifier import label_ranking_evaluator  # noqa: F401  (registers "label_ranking")
from xmodal_jax.systems.classifier import phrase_lookup, sampled_softmax
from xmodal_jax.systems.classifier.stage import S1Stage
from xmodal_jax.systems.classifier.text_generator_model import TextGenerator
from xmodal_jax.train import optimizer as optimizer_lib, sparse_rows

TABLE = "queries"  # the name of W in the params


class TextGeneratorTask(S1Stage):
  """Predict functions: embed_image (x [batch, 64]), label_scores (cosine to every query [batch, K])."""

  def __init__(self, config, workdir):
    super().__init__(config, workdir)
    if config.loss.softmax not in ("sampled", "full"):
      raise errors.ConfigError(f"config.loss.softmax={config.loss.softmax!r}; use 'sampled' or 'full'.")
    if config.loss.query_update not in ("dense", "sparse_adagrad"):
      raise errors.ConfigError(f"config.loss.query_update={config.loss.query_update!r}; use 'dense' or 'sparse_adagrad'.")
    if config.loss.query_update == "sparse_adagrad" and config.loss.softmax != "sampled":
      raise errors.ConfigError("config.loss.query_update='sparse_adagrad' needs config.loss.softmax='sampled' (the full "
                       "softmax touches every row of W).")
    self._predict = {"embed_image": self.embed_image, "label_scores": self.label_scores}

  def build_model(self):
    return TextGenerator(self.backbone(), num_queries=len(self.queries), embed_dim=self.config.model.embed_dim)

  def train_iterator(self, *, process_index, process_count):
    notes = self.annotations("train")
    return self.image_iterator(self.train_rows(notes.images_with_queries()),
                               lambda images, keys: {"labels": notes.sample_queries(images, keys)[:, 0]},
                               process_index=process_index, process_count=process_count)

  def loss_fn(self, params, batch, rng, ctx):
    x, table = self.model.apply({"params": params}, normalize_images(batch["images"]))
    w = table[:len(self.queries)]
    cfg = self.config.loss
    if cfg.softmax == "full":
      return sampled_softmax.full_softmax_loss(x, w, batch["labels"], cfg.scale)
    return sampled_softmax.sampled_softmax_loss(x, w, batch["labels"], rng, num_samples=cfg.num_samples,
                                                scale=cfg.scale, distribution=cfg.distribution)

  # ---- row-sparse updates of W (config.loss.query_update="sparse_adagrad"): step cost independent of K
  def make_optimizer(self):
    cfg = self.config
    if cfg.loss.query_update == "dense":
      return super().make_optimizer()
    return optimizer_lib.create_optimizer(cfg.optimizer, cfg.train.num_steps,
                                          sparse={TABLE: sparse_rows.row_adagrad(cfg.loss.query_learning_rate)})

  def train_step(self, state, batch, rng, ctx):
    if self.config.loss.query_update == "dense":
      return super().train_step(state, batch, rng, ctx)
    cfg, num_queries = self.config.loss, len(self.queries)
    table = state.params[TABLE]
    rest = {k: v for k, v in state.params.items() if k != TABLE}
    labels = batch["labels"]
    ids, _ = sampled_softmax.sample_candidates(rng, cfg.num_samples, num_queries, cfg.distribution)
    images = normalize_images(batch["images"])

    def loss_fn(rest, true_rows, sampled_rows):
      x = self.model.apply({"params": {**rest, TABLE: table}}, images, method=TextGenerator.embed_image)
      return sampled_softmax.sampled_softmax_from_rows(x, true_rows, sampled_rows, labels, ids,
                                                       num_classes=num_queries, scale=cfg.scale,
                                                       distribution=cfg.distribution)

    (loss, metrics), (g_rest, g_true, g_sampled) = jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True)(
        rest, table[labels], table[ids])
    rows = jax.numpy.concatenate([labels, ids])
    grads = {**g_rest, TABLE: sparse_rows.RowSparseGrad(rows, jax.numpy.concatenate([g_true, g_sampled]))}
    metrics = dict(metrics, loss=loss, grad_norm=optimizer_lib.gradient_norm(grads))
    return state.apply_gradients(grads), metrics

  # ---- predict functions and evaluation data
  def embed_image(self, variables, images):
    """uint8 images [batch, H, W, 3] -> x [batch, embed_dim]."""
    return self.model.apply({"params": variables["params"]}, normalize_images(images),
                            method=TextGenerator.embed_image)

  def label_scores(self, variables, images):
    """uint8 images [batch, H, W, 3] -> cosine of x with every query vector [batch, K] (seed eq. 1's logits
    up to the scale; its top-k are the generated phrases)."""
    w = self.model.apply({"params": variables["params"]}, method=TextGenerator.query_table)
    return phrase_lookup.query_cosines(self.embed_image(variables, images), w)

  def predict_fns(self):
    return self._predict

  def query_vectors(self, variables) -> np.ndarray:
    """W [K, embed_dim] (float32, host): the vectors phrases are generated from."""
    return np.asarray(self.model.apply({"params": variables["params"]}, method=TextGenerator.query_table), np.float32)

  def make_eval_data(self, split):
    notes = self.annotations(split)
    world = self.split(split).extras
    complete = None
    if isinstance(world, shapes_world.ShapesWorldSplit):
      # Shapes world knows every query that is true of an image, not only the 3-5 it lists: precision of the
      # top 3 against that full truth says how often a generated phrase is correct at all.
      complete = np.stack([shapes_world.query_matches(world, q) for q in self.queries], axis=1)
    return EvalData(image_inputs={"images": self.eval_images(split)}, label_sets=notes.query_ids,
                    label_names=tuple(self.queries), complete_truth=complete,
                    title="generated phrases vs the image's true queries")
