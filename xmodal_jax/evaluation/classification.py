"""Classification metrics: accuracy and mean per-class accuracy (balanced accuracy), and their table."""
from __future__ import annotations

import numpy as np


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
  head = f"{title}\n" if title else ""
  return (head + "| accuracy | mean class accuracy | images |\n|---:|---:|---:|\n"
          f"| {metrics['accuracy']:.2f} | {metrics['mean_class_accuracy']:.2f} | {int(metrics['count'])} |")

