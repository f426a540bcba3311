"""S1 stage 1, the text generator: CNN -> 64-d x -> cosine softmax over K search queries (seed eq. 1).

Each training example is (image, one of its queries drawn by weight). Training uses a sampled softmax
(config.loss.softmax="sampled": `num_samples` shared negatives from a log-uniform proposal, log-Q corrected)
so the cost of a step does not grow with K; "full" uses all K. Evaluation scores all K and reports how often
the generated top phrases are true queries of the image: p@1, p@3 (precision of the top 3, the phrases S1
uses) and r@10 (recall of the image's queries in the top 10).

With config.loss.query_update="sparse_adagrad", W is left out of the dense optimiser and only the rows a step
gathered are updated (row-wise Adagrad, train/sparse_rows.py), so the whole step, not only the loss, costs the
same for any K; "dense" (default) trains W with the same optax chain as every other parameter.

Config: data (+ query_* fields), model.image (ResNet), model.embed_dim (64), loss (softmax, num_samples,
distribution, scale, query_update, query_learning_rate), eval.top_k.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xmodal_jax.data import shapes_world
from xmodal_jax.data.preprocess import normalize_images
from xmodal_jax.models.text_generator import TextGenerator
from xmodal_jax.objectives import sampled_softmax
from xmodal_jax.serving import phrase_lookup
from xmodal_jax.tasks.s1_base import S1TaskBase
from xmodal_jax.train import sparse_rows
from xmodal_jax.train.runtime import Runtime


class TextGeneratorTask(S1TaskBase):

  def __init__(self, config, workdir):
    super().__init__(config, workdir)
    if config.loss.softmax not in ("sampled", "full"):
      raise ValueError(f"config.loss.softmax={config.loss.softmax!r}; use 'sampled' or 'full'.")
    if config.loss.query_update not in ("dense", "sparse_adagrad"):
      raise ValueError(f"config.loss.query_update={config.loss.query_update!r}; use 'dense' or 'sparse_adagrad'.")
    if config.loss.query_update == "sparse_adagrad" and config.loss.softmax != "sampled":
      raise ValueError("config.loss.query_update='sparse_adagrad' needs config.loss.softmax='sampled' (the full "
                       "softmax touches every row of W).")
    for name in self.eval_splits:
      self.annotations(name)
    self.model = TextGenerator(self.backbone(), num_queries=len(self.queries), embed_dim=config.model.embed_dim)
    self._top_fns = {}

  def train_iterator(self, *, process_index, process_count):
    notes = self.annotations("train")
    return self.image_iterator(notes.images_with_queries(),
                               lambda images, keys: {"labels": notes.sample_queries(images, keys)[:, 0]},
                               process_index=process_index, process_count=process_count)

  def loss_fn(self, params, batch, rng, step):
    x, table = self.model.apply({"params": params}, normalize_images(batch["images"]))
    w = table[:len(self.queries)]
    cfg = self.config.loss
    if cfg.softmax == "full":
      return sampled_softmax.full_softmax_loss(x, w, batch["labels"], cfg.scale)
    return sampled_softmax.sampled_softmax_loss(x, w, batch["labels"], rng, num_samples=cfg.num_samples,
                                                scale=cfg.scale, distribution=cfg.distribution)

  # ---- sparse updates of W (config.loss.query_update="sparse_adagrad"): step cost independent of K
  def make_optimizer(self):
    dense = super().make_optimizer()
    if self.config.loss.query_update == "dense":
      return dense
    self._dense_tx = dense
    return sparse_rows.exclude_table(dense, "queries")

  def train_step(self, state, batch, rng):
    if self.config.loss.query_update == "dense":
      return super().train_step(state, batch, rng)
    cfg, num_queries = self.config.loss, len(self.queries)
    table, rest = state.params["queries"], sparse_rows.without(state.params, "queries")
    labels = batch["labels"]
    ids, _ = sampled_softmax.sample_candidates(rng, cfg.num_samples, num_queries, cfg.distribution)
    images = normalize_images(batch["images"])

    def loss_fn(rest, true_rows, sampled_rows):
      x = self.model.apply({"params": {**rest, "queries": table}}, images, method=TextGenerator.embed_image)
      return sampled_softmax.sampled_softmax_from_rows(x, true_rows, sampled_rows, labels, ids,
                                                       num_classes=num_queries, scale=cfg.scale,
                                                       distribution=cfg.distribution)

    (loss, metrics), (g_rest, g_true, g_sampled) = jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True)(
        rest, table[labels], table[ids])
    updates, dense_state = self._dense_tx.update(g_rest, state.opt_state["dense"], rest)
    table, accumulators = sparse_rows.row_adagrad_update(
        table, state.opt_state["rows"], jnp.concatenate([labels, ids]), jnp.concatenate([g_true, g_sampled]),
        cfg.query_learning_rate)
    params = {**optax.apply_updates(rest, updates), "queries": table}
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm((g_rest, g_true, g_sampled)))
    return state.replace(step=state.step + 1, params=params,
                         opt_state={"dense": dense_state, "rows": accumulators}), metrics

  # ---- evaluation and phrase generation
  def embed_images(self, params, images):
    """uint8 images [batch, H, W, 3] -> x [batch, embed_dim]."""
    return self.model.apply({"params": params}, normalize_images(images), method=TextGenerator.embed_image)

  def top_phrases(self, params, images, k: int, method: str = "exact"):
    """(cosine scores [batch, k], query ids [batch, k]) of the k nearest queries (seed: phrase generation)."""
    x = self.embed_images(params, images)
    w = self.model.apply({"params": params}, method=TextGenerator.query_table)
    return phrase_lookup.top_queries(x, w, k, method=method)

  def generate(self, params, images: np.ndarray, runtime: Runtime, k: int) -> tuple[np.ndarray, np.ndarray]:
    if k not in self._top_fns:  # one function object per k, so runtime.map_batches compiles it once
      self._top_fns[k] = functools.partial(self.top_phrases, k=k)
    return runtime.map_batches(self._top_fns[k], params, {"images": images}, self.config.eval.batch_size)

  def evaluate(self, params, split, runtime):
    k = max(10, int(self.config.eval.top_k))
    _, top = self.generate(params, self.eval_images(split), runtime, k)
    notes = self.annotations(split)
    truth = notes.query_sets()
    keep = [i for i, t in enumerate(truth) if t]
    hits = np.asarray([[int(q) in truth[i] for q in top[i]] for i in keep], np.float32)
    sizes = np.asarray([len(truth[i]) for i in keep], np.float32)
    metrics = {"p_at_1": 100.0 * float(hits[:, 0].mean()), "p_at_3": 100.0 * float(hits[:, :3].mean()),
               "r_at_10": 100.0 * float(np.mean(hits[:, :10].sum(1) / sizes)), "images": float(len(keep))}
    world = self.split(split).extras
    if isinstance(world, shapes_world.ShapesWorldSplit):
      # Shapes world knows every query that is true of an image, not only the 3-5 it lists: precision of the
      # top 3 against that full truth says how often a generated phrase is correct at all.
      true = {int(q): shapes_world.query_matches(world, self.queries[int(q)]) for q in np.unique(top[:, :3])}
      correct = np.asarray([[true[int(q)][i] for q in top[i, :3]] for i in range(len(top))])
      metrics["p_at_3_any_true"] = 100.0 * float(correct.mean())
    return metrics

  def format_results(self, metrics, split):
    extra = "p_at_3_any_true" in metrics  # shapes world only
    return (f"{split}: generated phrases vs the image's true queries ({int(metrics['images'])} images)\n"
            "| p@1 | p@3 | r@10 |" + (" p@3 vs every true query |" if extra else "") + "\n"
            "|---:|---:|---:|" + ("---:|" if extra else "") + "\n"
            f"| {metrics['p_at_1']:.2f} | {metrics['p_at_3']:.2f} | {metrics['r_at_10']:.2f} |"
            + (f" {metrics['p_at_3_any_true']:.2f} |" if extra else ""))
