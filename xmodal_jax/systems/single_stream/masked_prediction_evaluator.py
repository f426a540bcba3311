"""Accuracy of masked prediction (S4's masked text units and masked objects) under fixed protocols.

The task prepares every protocol once per split in `EvalData.extras["masked"][protocol]` = {"predict": the predict
function's name, "inputs": {name: [N, ...]}, "targets": int [N, K] (IGNORE = -1 where nothing was masked)}; the
protocol's masks are drawn with a fixed seed, so every model of a comparison is scored on the same masked
positions (`max_items`: only the first N rows). The predict function maps the inputs to predicted ids [N, K]. Metric per protocol:
"<protocol>_accuracy" (% of masked positions predicted exactly) and "<protocol>_count" (their number).
"""
from __future__ import annotations

import numpy as np

from xmodal_jax import errors
from xmodal_jax.evaluation import evaluator as evaluator_lib
from xmodal_jax.evaluation import tables

IGNORE = -1


@evaluator_lib.register
class MaskedPredictionEvaluator(evaluator_lib.Evaluator):
  TYPE = "masked_prediction"
  DEFAULTS = dict(protocols=("words_span", "words_token"),  # keys of EvalData.extras["masked"]
                  max_items=0)  # > 0: only each protocol's first N rows (a cheaper curve during training)

  def evaluate(self, predict_fns, variables, data, runtime):
    prepared = data.extras.get("masked", {})
    metrics = {}
    for protocol in self.spec.protocols:
      if protocol not in prepared:
        raise errors.ConfigError(f"config.evals.{self.name}.protocols: {protocol!r} is not a protocol the task "
                                 f"prepares for split {self.spec.split!r}; it has {sorted(prepared)}.")
      p = prepared[protocol]
      if p["predict"] not in predict_fns:
        raise errors.ConfigError(f"Masked protocol {protocol!r} names predict function {p['predict']!r}, which the "
                                 f"task lacks; it has {sorted(predict_fns)}.")
      n = int(self.spec.max_items) or len(p["targets"])
      inputs = {k: v[:n] for k, v in p["inputs"].items()}
      predicted = np.asarray(runtime.map_batches(predict_fns[p["predict"]], variables, inputs, self.spec.batch_size))
      targets = np.asarray(p["targets"])[:n]
      if predicted.shape != targets.shape:
        raise errors.DataError(f"Masked protocol {protocol!r}: predictions {predicted.shape} vs targets "
                               f"{targets.shape}.")
      valid = targets != IGNORE
      count = int(valid.sum())
      metrics[f"{protocol}_accuracy"] = 100.0 * float((predicted == targets)[valid].mean()) if count else 0.0
      metrics[f"{protocol}_count"] = float(count)
    return metrics

  def format(self, metrics, title):
    rows = [[p, f"{metrics[f'{p}_accuracy']:.2f}", int(metrics[f"{p}_count"])] for p in self.spec.protocols
            if f"{p}_accuracy" in metrics]
    return tables.markdown_table(["protocol", "accuracy %", "masked positions"], rows, title=title)
