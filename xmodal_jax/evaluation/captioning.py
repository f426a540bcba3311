"""The captioning evaluator: captions of a split's images by the task's `caption` predict function, scored by

  * n-gram metrics against the human captions: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (evaluation/caption_metrics.py,
    pycocoevalcap);
  * text statistics: mean length, vocabulary, repetition (caption_metrics.text_statistics; shares in percent),
    and the share of empty captions;
  * TF-IDF caption search (the seed's search by words; evaluation/caption_retrieval.py): each human caption of the
    split as a query over the generated captions of its images: "search_r1/5/10", "search_medr";
  * each scorer model in `EvalData.extras["scorers"]` (two-tower models; typically the SCST reward model and an
    independent judge trained separately): CLIP-S and RefCLIP-S (Hessel et al. 2021), and its grammar score g(c)
    (mean, and the share at or above `grammar_threshold`) when it has a grammar head. Metrics are prefixed with the
    scorer's name ("judge/clip_s"); scoring with the reward model itself only shows that the optimiser worked;
    and generated-caption retrieval (Cho et al. 2022; caption_retrieval.generated_caption_ranks): each image's
    caption as a query over the split's images in the scorer's space, "judge/gen_r1/5/10", "judge/gen_medr" (an
    empty caption ranks last);
  * attribute-word agreement with the references, per word set of `extras["attribute_words"]` ({kind: words}):
    "<kind>_precision", "<kind>_recall", "<kind>_mentions" (caption_metrics.attribute_word_agreement);
  * on data that knows the truth of every caption (shapes world): attribute recall / precision of the named
    (colour, shape) pairs (`extras["true_pairs"]`, percent) and the share of captions its grammar parses (`extras["parses"]`).

Scorers are objects with `name`, `image_embeddings()` [N, D], `reference_embeddings()` ([M, D], owner [M]),
`caption_embeddings(strings)` [n, D] and `grammar(strings)` ([n] or None); `extras["decode_text"]` turns the
predicted token rows into strings and `extras["references"]` holds the human captions per image. `last_captions`
keeps the strings of the latest evaluation (the command line writes them next to the metrics). `items` (saved by the
trainer as eval_items/<prefix>.npz, for bootstrap CIs over images): per image [N] "cider_d", "<scorer>/clip_s",
"<scorer>/refclip_s", "<scorer>/gen_rank"; per human caption [M] "search_rank" and "search_image" (its image row).
Example pictures
(`summaries`, written to TensorBoard by the trainer): `examples` images spread over the split with their generated
captions (an image grid) and a table of those captions beside their references.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from xmodal_jax.evaluation import caption_metrics
from xmodal_jax.evaluation import caption_retrieval
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
    self.items = {}
    if self.spec.coco:
      coco, coco_items = caption_metrics.coco_metrics_and_items(captions, references)
      metrics.update(coco)
      self.items.update(coco_items)
    metrics.update(_as_percent(caption_metrics.text_statistics(captions)))
    nonempty = np.asarray([bool(c.strip()) for c in captions])
    metrics["empty_captions"] = float(100.0 * np.mean(~nonempty))
    metrics.update(self._search(captions, references))
    for scorer in extras.get("scorers", ()):
      metrics.update(self._scores(scorer, captions, nonempty, n))
    if "true_pairs" in extras:
      metrics.update(_as_percent(_attribute_scores(captions, extras["true_pairs"][:n])))
    for kind, words in extras.get("attribute_words", {}).items():   # {"colour": {...}, ...}: agreement with refs
      agreement = caption_metrics.attribute_word_agreement(captions, references, frozenset(words))
      metrics.update({f"{kind}_{k}": v for k, v in agreement.items()})
    if "parses" in extras:
      metrics["parse_rate"] = float(100.0 * np.mean([bool(extras["parses"](c)) for c in captions]))
    return metrics

  def _scores(self, scorer, captions, nonempty, n) -> dict[str, float]:
    w = float(self.spec.reward_weight)
    image_emb = scorer.image_embeddings()[:n]
    caption_emb = scorer.caption_embeddings(captions)
    ref_emb, owner = scorer.reference_embeddings()
    keep = owner < n
    # A caption the scorer leaves without a word gets a zero row: it scores 0, and a placeholder row stands in for
    # it so that the cosines (which refuse zero rows) can be computed for the others.
    nonempty = nonempty & np.any(caption_emb != 0, axis=1)
    filled = np.where(nonempty[:, None], caption_emb, 1.0)
    clip_s = np.where(nonempty, caption_metrics.clip_score(image_emb, filled, w), 0.0)
    ref_s = np.where(nonempty, caption_metrics.ref_clip_score(image_emb, filled, ref_emb[keep], owner[keep], w), 0.0)
    gen_rank = caption_retrieval.generated_caption_ranks(image_emb, caption_emb, nonempty)
    out = {f"{scorer.name}/clip_s": float(np.mean(clip_s)), f"{scorer.name}/refclip_s": float(np.mean(ref_s))}
    out.update({f"{scorer.name}/{k}": v for k, v in caption_retrieval.rank_metrics("gen", gen_rank).items()})
    self.items.update({f"{scorer.name}/clip_s": clip_s, f"{scorer.name}/refclip_s": ref_s,
                       f"{scorer.name}/gen_rank": gen_rank})
    g = scorer.grammar(captions)
    if g is not None:
      g = np.where(nonempty, g, 0.0)
      out[f"{scorer.name}/grammar"] = float(np.mean(g))
      out[f"{scorer.name}/grammatical"] = float(100.0 * np.mean(g >= float(self.spec.grammar_threshold)))
    return out

  def _search(self, captions, references) -> dict[str, float]:
    """TF-IDF caption search: every human caption of the n images as a query over their generated captions."""
    queries = [r for refs in references for r in refs]
    owner = np.repeat(np.arange(len(references)), [len(refs) for refs in references])
    ranks = caption_retrieval.caption_search_ranks(captions, queries, owner)
    self.items.update(search_rank=ranks, search_image=owner)
    return caption_retrieval.rank_metrics("search", ranks)

  def _examples(self, data, captions, references):
    if not self.examples:
      return None
    rows = summary_images.spread(self.examples, len(captions))
    images = summary_images.display_images(data)
    return summary_images.caption_examples(None if images is None else images[rows], [captions[r] for r in rows],
                                           [references[r] for r in rows], rows=rows)

  def format(self, metrics: dict[str, float], title: str) -> str:
    """The caption metrics (metric | value), then one row per scorer (CLIP-S ... generated-caption R@K, grammar)."""
    scored = {k for k in metrics if k.partition("/")[2] in _SCORER_COLUMNS}
    table = tables.markdown_table(["metric", "value"], [(k, v) for k, v in sorted(metrics.items()) if k not in scored],
                                  title=title)
    names = list(dict.fromkeys(k.partition("/")[0] for k in sorted(scored)))
    if not names:
      return table
    columns = [c for c in _SCORER_COLUMNS if any(f"{name}/{c}" in metrics for name in names)]
    rows = [[name] + [metrics.get(f"{name}/{c}") for c in columns] for name in names]
    return table + "\n\n" + tables.markdown_table(["scorer"] + columns, rows)


_FRACTIONS = ("repetition_rate", "repeated_ngram_share", *(f"repeat_{n}" for n in caption_metrics.REPEAT_ANYWHERE_N),
              "attribute_recall", "attribute_precision")
# The scorer table's columns, in this order: "<scorer>/<column>" metrics.
_SCORER_COLUMNS = ("clip_s", "refclip_s", *(f"gen_r{k}" for k in caption_retrieval.KS), "gen_medr", "grammar",
                   "grammatical")


def _as_percent(metrics: dict[str, Any]) -> dict[str, Any]:
  """Shares reported in percent, like the parse rate and the COCO metrics."""
  return {k: 100.0 * v if k in _FRACTIONS else v for k, v in metrics.items()}


def _attribute_scores(captions, true_pairs) -> dict[str, Any]:
  from xmodal_jax.data import shapes_caption_grammar  # pylint: disable=import-outside-toplevel  (shapes world only)
  return shapes_caption_grammar.attribute_scores(captions, true_pairs)
