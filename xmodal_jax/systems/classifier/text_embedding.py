"""S1 stage 2, the text embedding: a siamese bag of unigrams + bigrams trained on query-query association
pairs, symmetric InfoNCE over in-batch negatives, 200-d output. The pairs are two queries of the same image
(drawn by the image's query weights), or, with config.data.query_pairs, the user's association pairs
(systems/classifier/query_pairs.py), independent of images, drawn in proportion to their weights; the n-gram vocabulary then
covers the pairs' phrases too.

Evaluation ("query_association" evaluators, systems/classifier/evaluators.py): for one held-out pair (a, b) per image of
the split, is b among the k queries nearest to a (a itself excluded)? Reported as assoc_r1 / r5 / r10 (%).

Config: data (+ query_* fields), model.dim (200), model.embed_dim, model.max_ngrams, loss.temperature.
Assets: queries.json, ngrams.json.
"""
from __future__ import annotations

import os
from typing import Sequence

import jax
import numpy as np

from xmodal_jax import errors, fileio
from xmodal_jax.data.iterator import EpochBatchIterator
from xmodal_jax.evaluation.evaluator import EvalData
from xmodal_jax.objectives.contrastive_softmax import symmetric_infonce
from xmodal_jax.systems.classifier import evaluators  # pylint: disable=unused-import  (registers the "query_association" evaluator)
from xmodal_jax.systems.classifier import query_pairs
from xmodal_jax.systems.classifier.ngram_embedding import SiameseQueryEmbedding
from xmodal_jax.systems.classifier.ngrams import NgramVocab
from xmodal_jax.systems.classifier.stage import S1Stage

NGRAMS_FILE = "ngrams.json"


class TextEmbeddingTask(S1Stage):
  """Predict function: embed_phrases (n-gram bags [batch, len] -> unit [batch, dim])."""

  def __init__(self, config, workdir):
    super().__init__(config, workdir)
    self.ngrams: NgramVocab | None = None
    self._predict = {"embed_phrases": self.embed_phrases}

  def build_model(self):
    path = os.path.join(self.workdir, NGRAMS_FILE)
    if fileio.exists(path):  # resume / eval / inference: the vocabulary the run was trained with
      self.ngrams = NgramVocab.load(path)
    else:
      extra = query_pairs.load(self.config.data).phrases if self.config.data.get("query_pairs", "") else []
      self.ngrams = NgramVocab.build(list(self.queries) + extra)
      if jax.process_index() == 0:
        self.ngrams.save(path)
    cfg = self.config.model
    return SiameseQueryEmbedding(len(self.ngrams), dim=cfg.dim, embed_dim=cfg.embed_dim)

  def encode_phrases(self, phrases: Sequence[str]) -> dict[str, np.ndarray]:
    """Phrases -> the inputs of `embed_phrases` ({"ids" int32 [n, max_ngrams], "mask" bool [n, max_ngrams]}).

    n-grams unseen in training are left out of a phrase that has a known one, so a new phrase of known words
    (a query added after training) is embedded from those words and bigrams, not pulled towards the unknown
    vector. A phrase with no known n-gram is the unknown n-gram alone (callers that need a real embedding check
    `self.ngrams.known_ids` first). The training queries' n-grams are all known: their bags are unchanged.
    """
    ids, mask = self.ngrams.encode_known_batch(list(phrases), self.config.model.max_ngrams)
    return {"ids": ids, "mask": mask}

  def train_iterator(self, *, process_index, process_count):
    if self.config.data.get("query_pairs", ""):
      return self._pairs_iterator(process_index, process_count)
    notes = self.annotations("train")
    rows = self.train_rows(notes.images_with_queries(minimum=2))
    if len(rows) == 0:
      raise errors.DataError("No train image has two queries: the siamese text embedding has no pairs to learn from.")
    table = self.encode_phrases(self.queries)
    phrase_ids, phrase_mask = table["ids"], table["mask"]

    def load(indices, keys):
      pairs = notes.sample_queries(rows[indices], keys, count=2)
      a, b = pairs[:, 0], pairs[:, 1]
      return {"a_ids": phrase_ids[a], "a_mask": phrase_mask[a], "a_query": a,
              "b_ids": phrase_ids[b], "b_mask": phrase_mask[b], "b_query": b}

    return EpochBatchIterator(len(rows), self.config.train.batch_size, load, seed=self.config.seed,
                              process_index=process_index, process_count=process_count,
                              num_threads=1, prefetch=self.config.data.prefetch)

  def _pairs_iterator(self, process_index: int, process_count: int) -> EpochBatchIterator:
    """Batches of the user's association pairs: example e draws pair p with probability weight_p / sum(weight)
    from its key (an epoch = as many draws as there are pairs, at least one batch). No train image is used
    (recorded as such)."""
    self.train_rows(np.zeros(0, np.int64))
    pairs = query_pairs.load(self.config.data)
    table = self.encode_phrases(pairs.phrases)
    phrase_ids, phrase_mask = table["ids"], table["mask"]
    cumulative = np.cumsum(pairs.weights.astype(np.float64))

    def load(indices, keys):
      draws = np.asarray([np.random.default_rng(int(k)).random() for k in keys]) * cumulative[-1]
      chosen = np.minimum(np.searchsorted(cumulative, draws, side="right"), len(cumulative) - 1)
      a, b = pairs.a[chosen], pairs.b[chosen]
      return {"a_ids": phrase_ids[a], "a_mask": phrase_mask[a], "a_query": a,
              "b_ids": phrase_ids[b], "b_mask": phrase_mask[b], "b_query": b}

    return EpochBatchIterator(max(len(pairs), self.config.train.batch_size), self.config.train.batch_size, load,
                              seed=self.config.seed,
                              process_index=process_index, process_count=process_count,
                              num_threads=1, prefetch=self.config.data.prefetch)

  def init_variables(self, rng):
    table = self.encode_phrases(self.queries[:1])
    ids, mask = table["ids"], table["mask"]
    return {"params": self.model.init(rng, ids, mask, ids, mask)["params"]}

  def loss_fn(self, params, batch, rng, ctx):
    a, b = self.model.apply({"params": params}, batch["a_ids"], batch["a_mask"], batch["b_ids"], batch["b_mask"])
    return symmetric_infonce(a, b, self.config.loss.temperature, a_ids=batch["a_query"], b_ids=batch["b_query"])

  def embed_phrases(self, variables, ids, mask):
    """n-gram bags [batch, len] -> unit embeddings [batch, dim]."""
    return self.model.apply({"params": variables["params"]}, ids, mask, method=SiameseQueryEmbedding.embed)

  def predict_fns(self):
    return self._predict

  def make_eval_data(self, split):
    notes = self.annotations(split)
    rows = notes.images_with_queries(minimum=2)
    keys = np.random.default_rng(self.config.seed).integers(0, 2**32, len(rows), dtype=np.uint64)
    pairs = notes.sample_queries(rows, keys, count=2)
    return EvalData(text_inputs=self.encode_phrases(self.queries), extras={"pairs": pairs},
                    title=f"query association retrieval ({len(pairs)} held-out pairs, {len(self.queries)} queries)")
