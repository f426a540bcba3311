"""Multi-label tagging: thresholded tag logits against multi-hot targets (S2's semantic tags, systems/region_word/semantic_tags.py).

The task's predict function (`predict`, default "tag_logits") maps the `side` inputs of EvalData (image_inputs
or text_inputs) to logits [N, T]; a tag is predicted where its logit > `threshold` (0.0: probability 0.5).
Targets are `EvalData.extras["tag_targets_<side>"]` (float [N, T], 1 = the tag is true of the item; values
> 0.5 count as true), tag names `extras["tag_names"]` (optional, T of them).

Metrics (scikit-learn, in %): micro_f1 / micro_precision / micro_recall over every (item, tag) pair; macro_f1 the
mean of the T per-tag F1s, where a tag never true and never predicted counts 0 (zero_division=0); and the counts
"tags" (T) and "items" (N). The report lists the 5 tags of lowest F1 of the last evaluation when names are given.
"""
from __future__ import annotations

import numpy as np
from sklearn import metrics as sk_metrics

from xmodal_jax import errors
from xmodal_jax.evaluation import evaluator as evaluator_lib
from xmodal_jax.evaluation import tables

SIDES = ("image", "text")
_LOWEST = 5


def multilabel_metrics(logits: np.ndarray, targets: np.ndarray, threshold: float = 0.0
                       ) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
  """logits, targets [N, T] -> ({"micro_f1", "micro_precision", "micro_recall", "macro_f1", "tags", "items"} in %,
  per-tag F1 float [T] in %, per-tag support int [T] (items the tag is true of))."""
  logits, targets = np.asarray(logits, np.float32), np.asarray(targets)
  if logits.shape != targets.shape or logits.ndim != 2:
    raise errors.DataError(f"Tag logits {logits.shape} and tag targets {targets.shape} must both be [N, T].")
  if logits.shape[0] == 0 or logits.shape[1] == 0:
    raise errors.DataError(f"No items or no tags to evaluate (tag targets {targets.shape}).")
  y_true, y_pred = (targets > 0.5).astype(np.int32), (logits > threshold).astype(np.int32)
  p, r, f, _ = sk_metrics.precision_recall_fscore_support(y_true, y_pred, average="micro", zero_division=0)
  per_tag = sk_metrics.f1_score(y_true, y_pred, average=None, zero_division=0)
  out = {"micro_f1": 100.0 * float(f), "micro_precision": 100.0 * float(p), "micro_recall": 100.0 * float(r),
         "macro_f1": 100.0 * float(np.mean(per_tag)), "tags": float(y_true.shape[1]),
         "items": float(y_true.shape[0])}
  return out, 100.0 * np.asarray(per_tag, np.float64), y_true.sum(0)


@evaluator_lib.register
class MultilabelEvaluator(evaluator_lib.Evaluator):
  """Micro / macro F1 of the task's `predict` function's tag logits ([N, T]) on the `side` inputs against
  EvalData.extras["tag_targets_<side>"]."""
  TYPE = "multilabel"
  DEFAULTS = dict(predict="tag_logits", side="image", threshold=0.0)

  def __init__(self, name, spec):
    super().__init__(name, spec)
    if spec.side not in SIDES:
      raise errors.ConfigError(f"config.evals.{name}.side={spec.side!r}; use one of {list(SIDES)} (which inputs "
                               "of EvalData the predict function takes).")
    self._lowest: tuple[dict[str, float], list[tuple[str, float, int]]] | None = None

  def evaluate(self, predict_fns, variables, data, runtime):
    side = self.spec.side
    key = f"tag_targets_{side}"
    if key not in data.extras:
      raise errors.ConfigError(f"Evaluator {self.name!r} needs EvalData.extras[{key!r}] (multi-hot tag targets "
                               f"[N, T]), which this task's eval_data does not provide; use an evaluator type that "
                               "fits the task, or a side it has targets for.")
    targets = np.asarray(data.extras[key])
    inputs = data.need(f"{side}_inputs", self.name)
    logits = np.asarray(runtime.map_batches(self.predict_fn(predict_fns, "predict"), variables, inputs,
                                            self.spec.batch_size))
    metrics, per_tag, support = multilabel_metrics(logits, targets, float(self.spec.threshold))
    names = data.extras.get("tag_names")
    self._lowest = None
    if names is not None:
      names = [str(n) for n in names]
      if len(names) != len(per_tag):
        raise errors.DataError(f"Evaluator {self.name!r}: EvalData.extras['tag_names'] has {len(names)} names for "
                               f"{len(per_tag)} tags (extras[{key!r}] {targets.shape}); give one name per tag.")
      order = sorted(range(len(names)), key=lambda t: (per_tag[t], names[t]))[:_LOWEST]
      self._lowest = (dict(metrics), [(names[t], float(per_tag[t]), int(support[t])) for t in order])
    return metrics

  def format(self, metrics, title):
    columns = ("micro_f1", "micro_precision", "micro_recall", "macro_f1")
    footer = ""
    if self._lowest is not None and all(self._lowest[0].get(k) == metrics.get(k) for k in columns + ("tags",)):
      footer = "Lowest F1 tags: " + ", ".join(f"{n} ({f:.1f}, {s} true)" for n, f, s in self._lowest[1])
    return tables.markdown_table(["micro F1", "micro precision", "micro recall", "macro F1"],
                                 [[metrics[c] for c in columns]],
                                 title=f"{title} ({int(metrics['items'])} items, {int(metrics['tags'])} tags)",
                                 footer=footer)
