"""Scores of aligned (image, text) pairs by a task's `score_pairs` predict function, over per-item features.

Shared by the evaluators that score pairs (retrieval with scorer="pairwise", pair_choice). The optional
per-item encoders `pair_image` / `pair_text` (config fields of the evaluator naming predict functions, '' =
none) run once per image / text (e.g. region or word features); their outputs, or the raw inputs without them,
are what `score_pairs(variables, image=..., text=...)` receives, gathered row by row for each pair.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

PairScorer = Callable[[np.ndarray, np.ndarray], np.ndarray]


def pair_scorer(evaluator: Any, predict_fns: dict[str, Callable], variables: Any, image_inputs: dict[str, Any],
                text_inputs: dict[str, Any], runtime: Any) -> PairScorer:
  """fn(image rows int [P], text rows int [P]) -> float32 scores [P] of the pairs (image_inputs[i], text_inputs[t]).

  Args:
    evaluator: an `Evaluator` whose spec has batch_size (rows per encoder call), pair_batch_size (pairs per
      score_pairs call) and the predict-function names pair_image, pair_text, score_pairs; its `predict_fn`
      looks them up in `predict_fns`.
    predict_fns: the task's predict functions, name -> fn(variables, **inputs).
    variables: the model variables.
    image_inputs: {name: [N, ...]}, the inputs of pair_image (or of score_pairs' `image` without it).
    text_inputs: {name: [M, ...]}, the inputs of pair_text (or of score_pairs' `text` without it).
    runtime: the runtime that runs functions over batches (`map_batches`).

  The per-item features are computed once, when this is called; each call of the returned function only runs
  score_pairs, in batches of pair_batch_size pairs.
  """
  spec = evaluator.spec
  features = {}
  for side, inputs, field in (("image", image_inputs, "pair_image"), ("text", text_inputs, "pair_text")):
    features[side] = (runtime.map_batches(evaluator.predict_fn(predict_fns, field), variables, inputs,
                                          spec.batch_size) if spec[field] else inputs)
  score = evaluator.predict_fn(predict_fns, "score_pairs")

  def scorer(image_rows: np.ndarray, text_rows: np.ndarray) -> np.ndarray:
    pairs = {"image": jax.tree.map(lambda x: np.asarray(x)[image_rows], features["image"]),
             "text": jax.tree.map(lambda x: np.asarray(x)[text_rows], features["text"])}
    return np.asarray(runtime.map_batches(score, variables, pairs, spec.pair_batch_size), np.float32)

  return scorer
