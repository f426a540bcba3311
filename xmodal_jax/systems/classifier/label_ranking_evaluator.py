"""Multi-label ranking: how often the top-ranked labels of an image are among its true labels.

For each image with at least one true label: p@k = fraction of its top k labels that are true (averaged over
images), r@k = fraction of its true labels found in its top k. With `EvalData.complete_truth` (every label true
of each image, when the data knows more than the listed ones) also p@k against that, over all images.
S1 reports its generated search-query phrases this way (the labels are the queries); its example pictures
(`summaries`, TensorBoard) show `examples` images spread over the split with their top-5 labels (S1: phrases).
"""
from __future__ import annotations

import functools

import jax
import numpy as np

from xmodal_jax import errors
from xmodal_jax.evaluation import evaluator as evaluator_lib
from xmodal_jax.evaluation import summary_images
from xmodal_jax.evaluation import tables


def _top_ids(scores_fn, variables, k: int, **inputs):
  scores = scores_fn(variables, **inputs)
  return jax.lax.top_k(scores, min(k, scores.shape[-1]))[1]  # fewer labels than k: all of them, ranked


def ranking_metrics(top: np.ndarray, label_sets: list[np.ndarray], *, precision_at=(1, 3), recall_at=(10,),
                    complete_truth: np.ndarray | None = None) -> dict[str, float]:
  """top int [N, k] (best first), label_sets per image -> {"p_at_K", "r_at_K", "images"[, "p_at_K_any_true"]}."""
  keep = [i for i, t in enumerate(label_sets) if len(t)]
  if not keep:
    raise errors.DataError("No image of the evaluated split has a true label (e.g. a query) to rank against: give "
                           "its images labels (for S1: queries or clicks), or turn this evaluator off "
                           "(config.evals.<name>.every=0 and at_end=False).")
  truth = [set(np.asarray(label_sets[i]).tolist()) for i in keep]
  hits = np.asarray([[int(q) in t for q in top[i]] for i, t in zip(keep, truth)], np.float32)
  sizes = np.asarray([len(t) for t in truth], np.float32)
  out = {f"p_at_{k}": 100.0 * float(hits[:, :k].mean()) for k in precision_at}
  out.update({f"r_at_{k}": 100.0 * float(np.mean(hits[:, :k].sum(1) / sizes)) for k in recall_at})
  out["images"] = float(len(keep))
  if complete_truth is not None:
    correct = np.take_along_axis(np.asarray(complete_truth, bool), top, axis=1)
    out.update({f"p_at_{k}_any_true": 100.0 * float(correct[:, :k].mean()) for k in precision_at if k > 1})
  return out


@evaluator_lib.register
class LabelRankingEvaluator(evaluator_lib.Evaluator):
  """Top labels by the task's `label_scores` predict function ([N, num_labels], higher = better; top-k taken on
  device) against EvalData.label_sets."""
  TYPE = "label_ranking"
  DEFAULTS = dict(label_scores="label_scores", precision_at=(1, 3), recall_at=(10,))

  def __init__(self, name, spec):
    super().__init__(name, spec)
    self._fns = {}

  def evaluate(self, predict_fns, variables, data, runtime):
    k = max(tuple(self.spec.precision_at) + tuple(self.spec.recall_at))
    scores_fn = self.predict_fn(predict_fns, "label_scores")
    if (scores_fn, k) not in self._fns:  # one function object per (fn, k): the runtime compiles it once
      self._fns[(scores_fn, k)] = functools.partial(_top_ids, scores_fn, k=k)
    top = runtime.map_batches(self._fns[(scores_fn, k)], variables, data.need("image_inputs", self.name),
                              self.spec.batch_size)
    self.summaries = self._examples(data, np.asarray(top))
    return ranking_metrics(np.asarray(top), data.need("label_sets", self.name),
                           precision_at=tuple(self.spec.precision_at), recall_at=tuple(self.spec.recall_at),
                           complete_truth=data.complete_truth)

  def _examples(self, data, top, k: int = 5):
    if not self.examples or not data.label_names:
      return None
    rows = summary_images.spread(self.examples, len(top))
    names = list(data.label_names)
    truth = data.label_sets
    images = summary_images.display_images(data)
    return summary_images.label_examples(None if images is None else images[rows],
                                         [[names[int(c)] for c in top[r, :k]] for r in rows],
                                         None if truth is None else [[names[int(c)] for c in truth[r]] for r in rows],
                                         rows=rows)

  def format(self, metrics, title):
    columns = [k for k in metrics if k.startswith(("p_at_", "r_at_"))]
    names = [c.replace("_at_", "@").replace("_any_true", " vs every true label") for c in columns]
    return tables.markdown_table(names, [[metrics[c] for c in columns]],
                                 title=f"{title} ({int(metrics['images'])} images with true labels)")
