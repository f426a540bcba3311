"""S5's own evaluator: how well a reward model tells grammatical captions from corrupted ones and attribute-bearing
captions from their stripped copies, on held-out captions (the captioners use the shared "captioning" evaluator)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from xmodal_jax.evaluation import evaluator as evaluator_lib
from xmodal_jax.evaluation import tables


@evaluator_lib.register
class RewardModelEvaluator(evaluator_lib.Evaluator):
  """EvalData.extras: "grammar_inputs" {tokens, mask} [M, L] of human captions and corrupted copies with
  "grammar_labels" int [M] (1 = human); "attribute_pos" / "attribute_neg" {tokens, mask} [P, L] (a caption naming
  a colour or background word, the same caption without them) and "attribute_image" int [P] (the image row).
  Metrics (percent): grammar_accuracy (g >= threshold on humans, < on corruptions, class-balanced), grammar_auc,
  attribute_accuracy (cos(I, c) > cos(I, c stripped)), and the mean cosine gap."""
  TYPE = "s5_reward_model"
  DEFAULTS = dict(grammar_score="grammar_score", embed_image="embed_image", embed_text="embed_text",
                  threshold=0.5)

  def evaluate(self, predict_fns, variables, data, runtime):
    extras, bs, out = data.extras, self.spec.batch_size, {}
    if "grammar_inputs" in extras and "grammar_score" in predict_fns:
      g = runtime.map_batches(self.predict_fn(predict_fns, "grammar_score"), variables, extras["grammar_inputs"], bs)
      labels = np.asarray(extras["grammar_labels"])
      predicted = g >= float(self.spec.threshold)
      out["grammar_accuracy"] = 50.0 * float(np.mean(predicted[labels == 1]) + np.mean(~predicted[labels == 0]))
      out["grammar_auc"] = 100.0 * float(roc_auc_score(labels, g))
      out["grammar_pairs"] = float(np.sum(labels == 0))
    if "attribute_pos" in extras:
      images = runtime.map_batches(self.predict_fn(predict_fns, "embed_image"), variables,
                                   data.need("image_inputs", self.name), bs)[extras["attribute_image"]]
      embed = lambda inputs: runtime.map_batches(self.predict_fn(predict_fns, "embed_text"), variables, inputs, bs)
      gap = np.sum(images * embed(extras["attribute_pos"]), -1) - np.sum(images * embed(extras["attribute_neg"]), -1)
      out.update(attribute_accuracy=100.0 * float(np.mean(gap > 0)), attribute_gap=float(np.mean(gap)),
                 attribute_pairs=float(len(gap)))
    return out

  def format(self, metrics, title):
    keys = [k for k in ("grammar_accuracy", "grammar_auc", "grammar_pairs", "attribute_accuracy", "attribute_gap",
                        "attribute_pairs") if k in metrics]
    return tables.markdown_table(keys, [[metrics[k] for k in keys]], title=title)
