"""The training state every task's step takes and returns."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import optax


class TrainState(flax.struct.PyTreeNode):
  """step: int32 [] completed updates; params / opt_state: pytrees; rng: uint32 [2] base key of the run.

  The per-step key is `fold_in(rng, step)`, so the random stream is restored exactly with the step.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  def apply_gradients(self, grads: Any) -> "TrainState":
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates), opt_state=opt_state)
