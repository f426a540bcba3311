"""The pair choice evaluator: does `score_pairs` prefer an image's true caption to a foil of it?

Each item k is an image and two texts, the true caption and a foil (e.g. a compositional one of
systems/region_word/compositional_foils.py: the same words, colours or a relation swapped). Both pairs are scored by the task's
`score_pairs` predict function (optionally over the per-item features of `pair_image` / `pair_text`, as the
retrieval evaluator's pairwise scorer: evaluation/pair_scoring.py); the item is right when the true pair scores
strictly higher (a tie is wrong, so a model that cannot tell the two apart scores 0, not 50).

EvalData: image_inputs (every image of the split) and extras["choice"] = {"image_rows": int [K], the image of
each item; "true_text_inputs" and "foil_text_inputs": {name: [K, ...]}, the tokenised true captions and foils;
"kinds": K strings, the kind of each item (e.g. "colour", "relation")}.
Metrics (in %): accuracy, accuracy_<kind> per kind; items and items_<kind> (counts).
"""
from __future__ import annotations

import jax
import numpy as np

from xmodal_jax import errors
from xmodal_jax.evaluation import evaluator as evaluator_lib
from xmodal_jax.evaluation import pair_scoring
from xmodal_jax.evaluation import tables

_CHOICE_KEYS = ("image_rows", "true_text_inputs", "foil_text_inputs", "kinds")


def choice_metrics(true_scores: np.ndarray, foil_scores: np.ndarray, kinds: list[str]) -> dict[str, float]:
  """true_scores, foil_scores float [K], kinds K strings -> {"accuracy", "accuracy_<kind>" (in %), "items",
  "items_<kind>"}; kinds in order of first appearance."""
  correct = np.asarray(true_scores) > np.asarray(foil_scores)
  kinds_arr = np.asarray(kinds, dtype=object)
  out = {"accuracy": 100.0 * float(correct.mean()), "items": float(len(correct))}
  for kind in dict.fromkeys(kinds):
    sel = kinds_arr == kind
    out[f"accuracy_{kind}"] = 100.0 * float(correct[sel].mean())
    out[f"items_{kind}"] = float(sel.sum())
  return out


@evaluator_lib.register
class PairChoiceEvaluator(evaluator_lib.Evaluator):
  """Two-way choice between the true caption and a foil of EvalData.extras["choice"], by `score_pairs`."""
  TYPE = "pair_choice"
  DEFAULTS = dict(
      pair_batch_size=4096,   # pairs per score_pairs call
      score_pairs="score_pairs",
      pair_image="", pair_text="")  # per-item encoders feeding score_pairs ('' = raw inputs)

  def _choice(self, data: evaluator_lib.EvalData, num_images: int) -> tuple[np.ndarray, dict, dict, list[str]]:
    choice = data.extras.get("choice")
    missing = list(_CHOICE_KEYS) if not isinstance(choice, dict) else [k for k in _CHOICE_KEYS if k not in choice]
    if missing:
      raise errors.ConfigError(
          f"Evaluator {self.name!r} (type pair_choice) needs EvalData.extras['choice'] with keys {missing}, which "
          "this task's eval_data does not provide: 'image_rows' = int [K], the image of each item; "
          "'true_text_inputs' / 'foil_text_inputs' = {name: [K, ...]}, the tokenised true captions and foils; "
          "'kinds' = K strings (compositional_foils.build_choices makes the captions); or use an evaluator type "
          "that fits the task.")
    rows, kinds = np.asarray(choice["image_rows"]), [str(k) for k in choice["kinds"]]
    true, foil = choice["true_text_inputs"], choice["foil_text_inputs"]
    if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer) or len(rows) == 0:
      raise errors.DataError(f"Evaluator {self.name!r}: EvalData.extras['choice']['image_rows'] (shape {rows.shape}, "
                             f"{rows.dtype}) must be int [K] with K >= 1 items.")
    if rows.min() < 0 or rows.max() >= num_images:
      raise errors.DataError(f"Evaluator {self.name!r}: EvalData.extras['choice']['image_rows'] go from {rows.min()} "
                             f"to {rows.max()}; the split has {num_images} images.")
    if jax.tree.structure(true) != jax.tree.structure(foil):
      raise errors.DataError(f"Evaluator {self.name!r}: EvalData.extras['choice'] 'true_text_inputs' and "
                             f"'foil_text_inputs' must have the same fields, not {jax.tree.structure(true)} and "
                             f"{jax.tree.structure(foil)}.")
    lengths = {len(leaf) for leaf in jax.tree.leaves((true, foil))} | {len(kinds)}
    if lengths != {len(rows)}:
      raise errors.DataError(f"Evaluator {self.name!r}: EvalData.extras['choice'] has {len(rows)} image_rows, "
                             f"{len(kinds)} kinds and text inputs of {sorted(lengths)} rows; all must have K rows.")
    return rows.astype(np.int64), true, foil, kinds

  def evaluate(self, predict_fns, variables, data, runtime):
    image_inputs = data.need("image_inputs", self.name)
    rows, true, foil, kinds = self._choice(data, len(jax.tree.leaves(image_inputs)[0]))
    k = len(rows)
    texts = jax.tree.map(lambda a, b: np.concatenate([np.asarray(a), np.asarray(b)]), true, foil)
    scorer = pair_scoring.pair_scorer(self, predict_fns, variables, image_inputs, texts, runtime)
    scores = scorer(np.concatenate([rows, rows]), np.arange(2 * k))  # rows k: true caption, K + k: its foil
    return choice_metrics(scores[:k], scores[k:], kinds)

  def format(self, metrics, title):
    kinds = [key[len("items_"):] for key in metrics if key.startswith("items_")]
    rows = [["all", metrics["accuracy"], int(metrics["items"])]]
    rows += [[kind, metrics[f"accuracy_{kind}"], int(metrics[f"items_{kind}"])] for kind in kinds]
    return tables.markdown_table(["foils", "accuracy", "items"], rows, title=title,
                                 footer="accuracy: % of items whose true caption scores strictly above its foil.")
