"""Sparse row updates for one huge parameter table (S1's query matrix W [K, D]).

With a dense optimiser a step reads and writes all K rows of W and of its optimiser moments, so even under a
sampled softmax the step costs O(K D) (bench/s1_softmax.py measures it). Here W is kept out of the dense
optimiser: a step differentiates the loss w.r.t. the rows it gathered only ([R, D]), sums duplicate rows, and
updates those rows in place (the train state is donated) with row-wise Adagrad (Duchi et al. 2011; one
accumulator per row, as for large embedding tables):

  a_r <- a_r + mean_d(g_rd^2),   w_r <- w_r - lr * g_r / sqrt(a_r + eps)     for the touched rows r only,

so the cost per step is O(R D), independent of K. Every other parameter goes through the usual optax chain.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


def without(params: dict, name: str) -> dict:
  return {k: v for k, v in params.items() if k != name}


def exclude_table(dense: optax.GradientTransformation, name: str, initial_accumulator: float = 0.1
                  ) -> optax.GradientTransformation:
  """State = {"dense": dense.init(params without `name`), "rows": Adagrad accumulators [K] of params[name]}.

  Only `init` is used through optax: the task's train_step calls `dense.update` on the other parameters and
  `row_adagrad_update` on the table (see TextGeneratorTask.train_step).
  """

  def init(params):
    table = params[name]
    rows = jnp.full(nn.meta.unbox(table).shape[:1], initial_accumulator, jnp.float32)
    if isinstance(table, nn.meta.AxisMetadata):  # keep the table's row sharding for its accumulators
      rows = nn.LogicallyPartitioned(rows, (table.names[0],))
    return {"dense": dense.init(without(params, name)), "rows": rows}

  def update(updates, state, params=None):
    raise NotImplementedError(f"The {name!r} table is updated sparsely by the task's train_step; call "
                              "row_adagrad_update for it and the dense transformation for the rest.")

  return optax.GradientTransformation(init, update)


def row_adagrad_update(table: jax.Array, accumulators: jax.Array, rows: jax.Array, grads: jax.Array,
                       learning_rate: Any, eps: float = 1e-10) -> tuple[jax.Array, jax.Array]:
  """table [K, D], accumulators [K], rows int [R] (duplicates allowed), grads [R, D] -> (table, accumulators)."""
  unique, inverse = jnp.unique(rows, size=rows.shape[0], fill_value=rows[0], return_inverse=True)
  summed = jax.ops.segment_sum(grads, inverse.reshape(-1), num_segments=rows.shape[0])  # padding entries: 0
  added = jnp.mean(jnp.square(summed), axis=-1)
  new_acc = accumulators[unique] + added
  accumulators = accumulators.at[unique].add(added)  # `add`, not `set`: padding repeats a real row with 0
  table = table.at[unique].add((-learning_rate * summed / jnp.sqrt(new_acc + eps)[:, None]).astype(table.dtype))
  return table, accumulators
