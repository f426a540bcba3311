"""The captioning evaluator: captions of a split's images by the task's `caption` predict function, scored by

  * n-gram metrics against the human captions: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (evaluation/caption_metrics.py,
    pycocoevalcap);
  * text statistics: mean length, vocabulary, repetition (caption_metrics.text_statistics; shares in percent);
  * each scorer model in `EvalData.extras["scorers"]` (two-tower models; typically the SCST reward model and an
    independent judge trained separately): CLIP-S and RefCLIP-S (Hessel et al. 2021), and its grammar score g(c)
    (mean, and the share at or above `grammar_threshold`) when it has a grammar head. Metrics are prefixed with the
    scorer's name ("judge/clip_s"); scoring with the reward model itself only shows that the optimiser worked;
  * on data that knows the truth of every caption (shapes world): attribute recall / precision of the named
    (colour, shape) pairs (`extras["true_pairs"]`, percent) and the share of captions its grammar parses (`extras["parses"]`).

Scorers are objects with `name`, `image_embeddings()` [N, D], `reference_embeddings()` ([M, D], owner [M]),
`caption_embeddings(strings)` [n, D] and `grammar(strings)` ([n] or None); `extras["decode_text"]` turns the
predicted token rows into strings and `extras["references"]` holds the human captions per image. `last_captions`
keeps the strings of the latest evaluation (the command line writes them next to the metrics). Example pictures
(`summaries`, written to TensorBoard by the trainer): `examples` images spread over the split with their generated
captions (an image grid) and a table of those captions beside their references.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from xmodal_jax.evaluation import caption_metrics
from xmodal_jax.evaluation import evaluator as evaluator_lib
from xmodal_jax.evaluation import summary_images
from xmodal_jax.evaluation import tables


@evaluator_lib.register
class CaptioningEvaluator(evaluator_lib.Evaluator):
  TYPE = "captioning"
  DEFAULTS = dict(caption="caption",       # the predict function: images -> token rows
                  max_images=0,            # > 0: only the first N images of the split (quick checks)
                  coco=True,               # the pycocoevalcap metrics (METEOR starts Java)
                  grammar_threshold=0.5,   # g(c) >= this counts as grammatical
                  reward_weight=2.5,       # CLIP-S's w
                  examples=8)              # images whose captions TensorBoard shows

  def __init__(self, name, spec):
    super().__init__(name, spec)
    self.last_captions: list[str] = []

  def evaluate(self, predict_fns, variables, data, runtime) -> dict[str, float]:
    images = data.need("image_inputs", self.name)
    extras = data.extras
    n = len(next(iter(images.values())))
    if int(self.spec.max_images):
      n = min(n, int(self.spec.max_images))
      images = {k: v[:n] for k, v in images.items()}
    tokens = runtime.map_batches(self.predict_fn(predict_fns, "caption"), variables, images, self.spec.batch_size)
    captions = extras["decode_text"](tokens)
    self.last_captions = captions
    references = extras["references"][:n]
    self.summaries = self._examples(data, captions, references)
    metrics: dict[str, float] = {}
    if self.spec.coco:
      metrics.update(caption_metrics.coco_metrics(captions, references))
    metrics.update(_as_percent(caption_metrics.text_statistics(captions)))
    nonempty = np.asarray([bool(c.strip()) for c in captions])
    metrics["empty_captions"] = float(100.0 * np.mean(~nonempty))
    for scorer in extras.get("scorers", ()):
      metrics.update(self._scores(scorer, captions, nonempty, n))
    if "true_pairs" in extras:
      metrics.update(_as_percent(_attribute_scores(captions, extras["true_pairs"][:n])))
    if "parses" in extras:
      metrics["parse_rate"] = float(100.0 * np.mean([bool(extras["parses"](c)) for c in captions]))
    return metrics

  def _scores(self, scorer, captions, nonempty, n) -> dict[str, float]:
    w = float(self.spec.reward_weight)
    image_emb = scorer.image_embeddings()[:n]
    caption_emb = scorer.caption_embeddings(captions)
    ref_emb, owner = scorer.reference_embeddings()
    keep = owner < n
    clip_s = np.where(nonempty, caption_metrics.clip_score(image_emb, caption_emb, w), 0.0)
    ref_s = np.where(nonempty, caption_metrics.ref_clip_score(image_emb, caption_emb, ref_emb[keep], owner[keep], w),
                     0.0)
    out = {f"{scorer.name}/clip_s": float(np.mean(clip_s)), f"{scorer.name}/refclip_s": float(np.mean(ref_s))}
    g = scorer.grammar(captions)
    if g is not None:
      g = np.where(nonempty, g, 0.0)
      out[f"{scorer.name}/grammar"] = float(np.mean(g))
      out[f"{scorer.name}/grammatical"] = float(100.0 * np.mean(g >= float(self.spec.grammar_threshold)))
    return out

  def _examples(self, data, captions, references):
    if not self.examples:
      return None
    rows = summary_images.spread(self.examples, len(captions))
    images = summary_images.display_images(data)
    return summary_images.caption_examples(None if images is None else images[rows], [captions[r] for r in rows],
                                           [references[r] for r in rows], rows=rows)

  def format(self, metrics: dict[str, float], title: str) -> str:
    return tables.markdown_table(["metric", "value"], [(k, v) for k, v in sorted(metrics.items())], title=title)


_FRACTIONS = ("repetition_rate", "repeated_ngram_share", "attribute_recall", "attribute_precision")


def _as_percent(metrics: dict[str, Any]) -> dict[str, Any]:
  """Shares reported in percent, like the parse rate and the COCO metrics."""
  return {k: 100.0 * v if k in _FRACTIONS else v for k, v in metrics.items()}


def _attribute_scores(captions, true_pairs) -> dict[str, Any]:
  from xmodal_jax.data import shapes_caption_grammar  # pylint: disable=import-outside-toplevel  (shapes world only)
  return shapes_caption_grammar.attribute_scores(captions, true_pairs)
