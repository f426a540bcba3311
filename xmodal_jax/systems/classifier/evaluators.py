"""S1's own evaluators: query association retrieval of the text embedding (here) and label ranking
(label_ranking_evaluator.py, imported here so it registers); the image stages also use the shared "classification"."""
from __future__ import annotations

import numpy as np

from xmodal_jax.evaluation import evaluator as evaluator_lib, tables
from xmodal_jax.systems.classifier import label_ranking_evaluator  # noqa: F401  (registers "label_ranking")


@evaluator_lib.register
class QueryAssociationEvaluator(evaluator_lib.Evaluator):
  """For held-out query pairs (a, b) of the same image (EvalData.extras["pairs"], int [P, 2]), the rank of b
  among all K queries by embedding similarity to a (a excluded): assoc_r1 / r5 / r10 in %, and "pairs".
  The K queries are EvalData.text_inputs, embedded by the `embed_phrases` predict function."""
  TYPE = "query_association"
  DEFAULTS = dict(embed_phrases="embed_phrases", ks=(1, 5, 10))

  def evaluate(self, predict_fns, variables, data, runtime):
    table = runtime.map_batches(self.predict_fn(predict_fns, "embed_phrases"), variables,
                                data.need("text_inputs", self.name), self.spec.batch_size)
    pairs = np.asarray(data.extras["pairs"])
    sims = table[pairs[:, 0]] @ table.T
    sims[np.arange(len(pairs)), pairs[:, 0]] = -np.inf
    rank = np.sum(sims > sims[np.arange(len(pairs)), pairs[:, 1]][:, None], axis=1)  # 0 = nearest
    return {f"assoc_r{k}": 100.0 * float(np.mean(rank < k)) for k in self.spec.ks} | {"pairs": float(len(pairs))}

  def format(self, metrics, title):
    ks = tuple(self.spec.ks)
    return tables.markdown_table([f"R@{k}" for k in ks], [[metrics[f"assoc_r{k}"] for k in ks]], title=title)
