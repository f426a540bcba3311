"""Row-sparse updates of huge parameter tables (S1's query matrix W [K, D]) as an optax transformation.

With a dense optimiser a step reads and writes all K rows of W and of its optimiser moments, so even under a
sampled softmax the step costs O(K D) (bench/s1_softmax.py measures it). Here the gradient of such a table is
a `RowSparseGrad` (the rows a step gathered and their gradients, [R] and [R, D]) instead of a dense [K, D]
array, and `row_adagrad` updates only those rows, with row-wise Adagrad (Duchi et al. 2011; one accumulator
per row, as for large embedding tables):

  a_r <- a_r + mean_d(g_rd^2),   w_r <- w_r - lr * g_r / sqrt(a_r + eps)     for the touched rows r only,

so the cost per step is O(R D), independent of K. It composes with the dense optimiser of the other params
through `optax.multi_transform` (see `train/optimizer.py`, `sparse` groups), and `apply_updates` scatters the
row updates into the table in place (the train state is donated).

Hand-written: optax has no transformation for row-sparse (indexed) gradients.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax


class RowSparseGrad(flax.struct.PyTreeNode):
  """The gradient (or update) of a table [K, D] that touches only some rows: rows int32 [R] (duplicates
  allowed in gradients, unique in updates), values [R, D]."""
  rows: jax.Array
  values: jax.Array


def is_row_sparse(x: Any) -> bool:
  return isinstance(x, RowSparseGrad)


def dense_values(tree: Any) -> Any:
  """`tree` with every RowSparseGrad replaced by its values (what a gradient norm should see)."""
  return jax.tree.map(lambda g: g.values if is_row_sparse(g) else g, tree, is_leaf=is_row_sparse)


class RowAdagradState(flax.struct.PyTreeNode):
  accumulators: Any  # per table: float32 [K]


def row_adagrad(learning_rate: float, initial_accumulator: float = 0.1, eps: float = 1e-10
                ) -> optax.GradientTransformation:
  """Row-wise Adagrad for tables whose gradients are `RowSparseGrad`s; returns RowSparseGrad updates."""

  def init(params):
    def one(table):
      if isinstance(table, nn.meta.AxisMetadata):  # keep the table's row sharding for its accumulators
        value = nn.meta.unbox(table)
        return nn.LogicallyPartitioned(jnp.full(value.shape[:1], initial_accumulator, jnp.float32),
                                       (table.names[0],))
      return jnp.full(table.shape[:1], initial_accumulator, jnp.float32)

    return RowAdagradState(jax.tree.map(one, params, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata)))

  def update(updates, state, params=None):
    del params
    new_accumulators = []  # filled in the traversal order of `updates`, which is that of the accumulators

    def one(grad, acc):
      if not is_row_sparse(grad):
        raise TypeError(f"row_adagrad got a dense gradient of shape {getattr(grad, 'shape', None)}; the task's "
                        "step must give this table's gradient as a sparse_rows.RowSparseGrad.")
      rows, delta, acc = _row_adagrad_step(acc, grad.rows, grad.values, learning_rate, eps)
      new_accumulators.append(acc)
      return RowSparseGrad(rows, delta)

    new_updates = jax.tree.map(one, updates, state.accumulators, is_leaf=is_row_sparse)
    treedef = jax.tree.structure(state.accumulators)
    return new_updates, RowAdagradState(jax.tree.unflatten(treedef, new_accumulators))

  return optax.GradientTransformation(init, update)


def _row_adagrad_step(accumulators: jax.Array, rows: jax.Array, grads: jax.Array, learning_rate: Any,
                      eps: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Sums duplicate rows; returns (unique rows [R], their updates [R, D], new accumulators [K]).

  Padding entries of the unique rows repeat a real row with a zero update and a zero accumulator increment,
  so scattering them with `add` is harmless."""
  unique, inverse = jnp.unique(rows, size=rows.shape[0], fill_value=rows[0], return_inverse=True)
  summed = jax.ops.segment_sum(grads, inverse.reshape(-1), num_segments=rows.shape[0])  # padding entries: 0
  added = jnp.mean(jnp.square(summed), axis=-1)
  new_acc = accumulators[unique] + added
  accumulators = accumulators.at[unique].add(added)
  return unique, -learning_rate * summed / jnp.sqrt(new_acc + eps)[:, None], accumulators


def row_adagrad_update(table: jax.Array, accumulators: jax.Array, rows: jax.Array, grads: jax.Array,
                       learning_rate: Any, eps: float = 1e-10) -> tuple[jax.Array, jax.Array]:
  """table [K, D], accumulators [K], rows int [R] (duplicates allowed), grads [R, D] -> (table, accumulators).

  The same update as `row_adagrad`, on one table without the optax wrapping (benchmarks, tests)."""
  unique, delta, accumulators = _row_adagrad_step(accumulators, rows, grads, learning_rate, eps)
  return table.at[unique].add(delta.astype(table.dtype)), accumulators


def apply_updates(params: Any, updates: Any) -> Any:
  """`optax.apply_updates`, plus RowSparseGrad updates scattered (added) into their tables' rows."""
  if not any(is_row_sparse(u) for u in jax.tree.leaves(updates, is_leaf=is_row_sparse)):
    return optax.apply_updates(params, updates)

  def one(param, update):
    if is_row_sparse(update):
      return param.at[update.rows].add(update.values.astype(param.dtype))
    return optax.apply_updates(param, update)

  return jax.tree.map(one, params, updates, is_leaf=is_row_sparse)
