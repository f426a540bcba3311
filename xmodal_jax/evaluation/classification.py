"""Classification: accuracy and mean per-class accuracy (balanced accuracy), and their evaluator (whose example
pictures show `examples` images spread over the labelled ones with their top-3 classes)."""
from __future__ import annotations

import numpy as np

from xmodal_jax.evaluation import evaluator as evaluator_lib
from xmodal_jax.evaluation import summary_images
from xmodal_jax.evaluation import tables


def classification_metrics(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
  """predictions, labels int [N] -> {"accuracy", "mean_class_accuracy", "count"} in % (classes without
  examples are left out of the mean)."""
  predictions, labels = np.asarray(predictions), np.asarray(labels)
  if predictions.shape != labels.shape or labels.ndim != 1:
    raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} must both be [N].")
  if len(labels) == 0:
    raise ValueError("No labelled examples to evaluate.")
  correct = predictions == labels
  per_class = [correct[labels == c].mean() for c in range(num_classes) if np.any(labels == c)]
  return {"accuracy": 100.0 * float(correct.mean()), "mean_class_accuracy": 100.0 * float(np.mean(per_class)),
          "count": float(len(labels))}


def format_classification_table(metrics: dict[str, float], title: str = "") -> str:
  return tables.markdown_table(["accuracy", "mean class accuracy", "images"],
                               [[metrics["accuracy"], metrics["mean_class_accuracy"], int(metrics["count"])]],
                               title=title)


@evaluator_lib.register
class ClassificationEvaluator(evaluator_lib.Evaluator):
  """Argmax of the task's `classify` predict function (logits or probabilities [N, C]) against
  EvalData.labels; unlabelled images (label -1) are left out."""
  TYPE = "classification"
  DEFAULTS = dict(classify="classify")

  def evaluate(self, predict_fns, variables, data, runtime):
    labels = np.asarray(data.need("labels", self.name))
    rows = np.flatnonzero(labels >= 0)
    inputs = {k: np.asarray(v)[rows] for k, v in data.need("image_inputs", self.name).items()}
    scores = runtime.map_batches(self.predict_fn(predict_fns, "classify"), variables, inputs, self.spec.batch_size)
    num_classes = len(data.label_names) or int(scores.shape[-1])
    predictions = np.argmax(scores, axis=-1)
    self.items = {"correct": predictions == labels[rows], "labels": labels[rows]}  # per image, for statistics
    self.summaries = self._examples(data, rows, np.asarray(scores), labels[rows])
    return classification_metrics(predictions, labels[rows], num_classes)

  def _examples(self, data, rows, scores, labels, k: int = 3):
    if not self.examples:
      return None
    shown = summary_images.spread(self.examples, len(rows))
    names = list(data.label_names) or [str(c) for c in range(scores.shape[-1])]
    top = np.argsort(-scores[shown], axis=1, kind="stable")[:, :k]
    images = summary_images.display_images(data)
    return summary_images.label_examples(None if images is None else images[rows[shown]],
                                         [[names[c] for c in row] for row in top],
                                         [[names[labels[i]]] for i in shown], rows=rows[shown])

  def format(self, metrics, title):
    return format_classification_table(metrics, title)
