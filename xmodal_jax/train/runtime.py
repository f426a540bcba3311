"""What a task sees of the devices: the mesh, parameter shardings and sharded batched inference."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh

from xmodal_jax.train import sharding


@dataclasses.dataclass
class Runtime:
  """mesh + shardings of the task's params; `map_batches` runs a jitted fn over host arrays."""
  mesh: Mesh
  param_shardings: Any
  _compiled: dict = dataclasses.field(default_factory=dict)

  @property
  def data_parallelism(self) -> int:
    return self.mesh.shape["data"]

  def map_batches(self, fn: Callable[..., Any], params: Any, arrays: dict[str, np.ndarray],
                  batch_size: int) -> Any:
    """fn(params, **batch) -> [batch, ...] over all rows of `arrays` (same leading dim N) -> [N, ...].

    fn may return a pytree of such arrays (e.g. a tuple (scores, ids)); the result has the same structure.

    The last batch is padded (by repeating its last row) and the padding dropped, so every call compiles
    once. `batch_size` is rounded up to a multiple of the data-parallel size. Every host must pass the
    same arrays; outputs are gathered to every host.
    """
    n = len(next(iter(arrays.values())))
    if any(len(a) != n for a in arrays.values()):
      raise ValueError(f"map_batches: arrays have different lengths {[len(a) for a in arrays.values()]}.")
    dp = self.data_parallelism
    batch_size = -(-batch_size // dp) * dp
    key = (fn, batch_size)
    if key not in self._compiled:
      self._compiled[key] = jax.jit(lambda p, b: fn(p, **b),
                                    in_shardings=(self.param_shardings, sharding.batch_sharding(self.mesh)),
                                    out_shardings=sharding.replicated(self.mesh))
    jitted = self._compiled[key]
    outputs = []
    for start in range(0, n, batch_size):
      batch = {k: v[start:start + batch_size] for k, v in arrays.items()}
      valid = len(next(iter(batch.values())))
      if valid < batch_size:
        batch = {k: np.concatenate([v, np.repeat(v[-1:], batch_size - valid, axis=0)]) for k, v in batch.items()}
      out = jitted(params, {k: self._global_array(v) for k, v in batch.items()})
      outputs.append(jax.tree.map(lambda x: np.asarray(x)[:valid], out))  # replicated: readable on every host
    return jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *outputs)

  def _global_array(self, value: np.ndarray) -> jax.Array:
    """A host array that every process holds in full -> a global array sharded over `data`."""
    return jax.make_array_from_callback(value.shape, sharding.batch_sharding(self.mesh), lambda index: value[index])
