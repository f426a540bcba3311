"""What predict functions see of the devices: the mesh, the shardings of the variables, sharded batched inference."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh

from xmodal_jax.train import sharding


@dataclasses.dataclass
class Runtime:
  """mesh + shardings of a task's variables; `map_batches` runs a jitted predict fn over host arrays."""
  mesh: Mesh
  variable_shardings: Any
  _compiled: dict = dataclasses.field(default_factory=dict)

  @property
  def data_parallelism(self) -> int:
    return self.mesh.shape["data"]

  def map_batches(self, fn: Callable[..., Any], variables: Any, arrays: dict[str, Any], batch_size: int) -> Any:
    """fn(variables, **batch) -> [batch, ...] over all rows of `arrays` -> [N, ...].

    arrays: {name: array or pytree of arrays}, every leaf with the same leading dim N. fn may return a pytree
    of arrays (e.g. a tuple (scores, ids)); the result has the same structure.

    The last batch is padded (by repeating its last row) and the padding dropped, so every call compiles
    once. `batch_size` is rounded up to a multiple of the data-parallel size. Every host must pass the
    same arrays; outputs are gathered to every host.
    """
    leaves = jax.tree.leaves(arrays)
    n = len(leaves[0])
    if any(len(a) != n for a in leaves):
      raise ValueError(f"map_batches: arrays have different lengths {[len(a) for a in leaves]}.")
    dp = self.data_parallelism
    batch_size = -(-batch_size // dp) * dp
    key = (fn, batch_size)
    if key not in self._compiled:
      self._compiled[key] = jax.jit(lambda v, b: fn(v, **b),
                                    in_shardings=(self.variable_shardings, sharding.batch_sharding(self.mesh)),
                                    out_shardings=sharding.replicated(self.mesh))
    jitted = self._compiled[key]
    outputs = []
    for start in range(0, n, batch_size):
      batch = jax.tree.map(lambda v: v[start:start + batch_size], arrays)
      valid = min(batch_size, n - start)
      if valid < batch_size:
        batch = jax.tree.map(lambda v: np.concatenate([v, np.repeat(v[-1:], batch_size - valid, axis=0)]), batch)
      out = jitted(variables, jax.tree.map(self._global_array, batch))
      outputs.append(jax.tree.map(lambda x: np.asarray(x)[:valid], out))  # replicated: readable on every host
    return jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *outputs)

  def _global_array(self, value: np.ndarray) -> jax.Array:
    """A host array that every process holds in full -> a global array sharded over `data`."""
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding.batch_sharding(self.mesh), lambda index: value[index])
