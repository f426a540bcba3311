"""The training state every task's step takes and returns."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import optax

from xmodal_jax.train import sparse_rows


class TrainState(flax.struct.PyTreeNode):
  """step: int32 [] completed updates; params: trainable pytree; model_state: non-trainable collections
  (e.g. {"batch_stats": ...}; {} when the model has none); opt_state: the optimiser's; rng: uint32 [2] base key
  of the run.

  The per-step key is `fold_in(rng, step)`, so the random stream is restored exactly with the step. Frozen
  params are not part of the state: they are an argument of the step (see train/task.py).
  """
  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any
  rng: jax.Array
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  def apply_gradients(self, grads: Any, **changes: Any) -> "TrainState":
    """One optimiser update. Gradients may hold `sparse_rows.RowSparseGrad` leaves (row-sparse tables)."""
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    return self.replace(step=self.step + 1, params=sparse_rows.apply_updates(self.params, updates),
                        opt_state=opt_state, **changes)
