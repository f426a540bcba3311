"""S1 stage 2, the text embedding: a siamese bag of unigrams + bigrams trained on query-query association
pairs (two queries of the same image), symmetric InfoNCE over in-batch negatives, 200-d output.

Evaluation: for one held-out pair (a, b) per image of the split, is b among the k queries nearest to a
(a itself excluded)? Reported as assoc_r1 / assoc_r5 / assoc_r10 (%).

Config: data (+ query_* fields), model.dim (200), model.embed_dim, model.max_ngrams, loss.temperature.
"""
from __future__ import annotations

import os

import jax
import numpy as np

from xmodal_jax.data.iterator import EpochBatchIterator
from xmodal_jax.data.ngrams import NgramVocab
from xmodal_jax.models.ngram_embedding import SiameseQueryEmbedding
from xmodal_jax.objectives.contrastive_softmax import symmetric_infonce
from xmodal_jax.tasks.s1_base import S1TaskBase

NGRAMS_FILE = "ngrams.json"


class TextEmbeddingTask(S1TaskBase):

  def __init__(self, config, workdir):
    super().__init__(config, workdir)
    path = os.path.join(workdir, NGRAMS_FILE)
    if os.path.exists(path):  # resume/eval: the vocabulary the run was trained with
      self.ngrams = NgramVocab.load(path)
    else:
      self.ngrams = NgramVocab.build(self.queries)
      if jax.process_index() == 0:
        self.ngrams.save(path)
    self.phrase_ids, self.phrase_mask = self.ngrams.encode_batch(self.queries, config.model.max_ngrams)
    self.model = SiameseQueryEmbedding(len(self.ngrams), dim=config.model.dim, embed_dim=config.model.embed_dim)
    for name in self.eval_splits:
      self.annotations(name)

  def train_iterator(self, *, process_index, process_count):
    notes = self.annotations("train")
    rows = notes.images_with_queries(minimum=2)
    if len(rows) == 0:
      raise ValueError("No train image has two queries: the siamese text embedding has no pairs to learn from.")

    def load(indices, keys):
      pairs = notes.sample_queries(rows[indices], keys, count=2)
      a, b = pairs[:, 0], pairs[:, 1]
      return {"a_ids": self.phrase_ids[a], "a_mask": self.phrase_mask[a], "a_query": a,
              "b_ids": self.phrase_ids[b], "b_mask": self.phrase_mask[b], "b_query": b}

    return EpochBatchIterator(len(rows), self.config.train.batch_size, load, seed=self.config.seed,
                              process_index=process_index, process_count=process_count,
                              num_threads=1, prefetch=self.config.data.prefetch)

  def init_params(self, rng):
    ids, mask = self.phrase_ids[:1], self.phrase_mask[:1]
    return self.model.init(rng, ids, mask, ids, mask)["params"]

  def loss_fn(self, params, batch, rng, step):
    a, b = self.model.apply({"params": params}, batch["a_ids"], batch["a_mask"], batch["b_ids"], batch["b_mask"])
    return symmetric_infonce(a, b, self.config.loss.temperature, a_ids=batch["a_query"], b_ids=batch["b_query"])

  def embed_phrases(self, params, ids, mask):
    """n-gram bags [batch, len] -> unit embeddings [batch, dim]."""
    return self.model.apply({"params": params}, ids, mask, method=SiameseQueryEmbedding.embed)

  def query_embeddings(self, params, runtime) -> np.ndarray:
    """float32 [K, dim]: the embedding of every query phrase."""
    return runtime.map_batches(self.embed_phrases, params, {"ids": self.phrase_ids, "mask": self.phrase_mask},
                               self.config.eval.batch_size)

  def embed_phrase_texts(self, params, phrases, runtime) -> np.ndarray:
    """float32 [n, dim] for any phrases (n-grams unseen in training count as unknown)."""
    ids, mask = self.ngrams.encode_batch(list(phrases), self.config.model.max_ngrams)
    return runtime.map_batches(self.embed_phrases, params, {"ids": ids, "mask": mask}, self.config.eval.batch_size)

  def evaluate(self, params, split, runtime):
    table = self.query_embeddings(params, runtime)
    notes = self.annotations(split)
    rows = notes.images_with_queries(minimum=2)
    keys = np.random.default_rng(self.config.seed).integers(0, 2**32, len(rows), dtype=np.uint64)
    pairs = notes.sample_queries(rows, keys, count=2)
    sims = table[pairs[:, 0]] @ table.T
    sims[np.arange(len(pairs)), pairs[:, 0]] = -np.inf
    rank = np.sum(sims > sims[np.arange(len(pairs)), pairs[:, 1]][:, None], axis=1)  # 0 = nearest
    return {f"assoc_r{k}": 100.0 * float(np.mean(rank < k)) for k in (1, 5, 10)} | {"pairs": float(len(pairs))}

  def format_results(self, metrics, split):
    return (f"{split}: query association retrieval ({int(metrics['pairs'])} held-out pairs, "
            f"{len(self.queries)} queries)\n| R@1 | R@5 | R@10 |\n|---:|---:|---:|\n"
            f"| {metrics['assoc_r1']:.2f} | {metrics['assoc_r5']:.2f} | {metrics['assoc_r10']:.2f} |")
