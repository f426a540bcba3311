"""A deterministic, checkpointable iterator of per-host batches over an indexable data set.

Order is a pure function of (seed, epoch): each epoch is a fresh permutation of all examples, cut into
global batches (the remainder dropped); process p of P takes rows [p*B/P, (p+1)*B/P) of every global batch.
The position is two integers (`get_state` / `set_state`), stored in the trainer's checkpoint, so a resumed
run sees exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

LoadFn = Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]


class EpochBatchIterator:
  """Yields `load_fn(indices, keys)` for this host's slice of each global batch.

  load_fn: example indices int64 [local_batch] and per-example random keys uint32 [local_batch] -> dict of
  arrays. A key depends only on (seed, epoch, example index), so random choices (which caption, which
  crop) are the same whatever the number of hosts or the batch layout.
  """

  def __init__(self, num_examples: int, global_batch_size: int, load_fn: LoadFn, *, seed: int = 0,
               process_index: int = 0, process_count: int = 1):
    if global_batch_size % process_count:
      raise ValueError(f"Global batch size {global_batch_size} must be divisible by the {process_count} processes.")
    if num_examples < global_batch_size:
      raise ValueError(f"The data set has {num_examples} examples, fewer than one global batch "
                       f"({global_batch_size}); lower config.train.batch_size or add data.")
    self.num_examples = num_examples
    self.global_batch_size = global_batch_size
    self.batches_per_epoch = num_examples // global_batch_size
    self._load_fn = load_fn
    self._seed = seed
    self._local = global_batch_size // process_count
    self._offset = process_index * self._local
    self._epoch, self._batch = 0, 0
    self._perm_epoch, self._perm, self._keys = -1, None, None

  def get_state(self) -> dict[str, Any]:
    return {"epoch": self._epoch, "batch": self._batch, "seed": self._seed}

  def set_state(self, state: dict[str, Any]) -> None:
    if int(state["seed"]) != self._seed:
      raise ValueError(f"Checkpointed data iterator used seed {state['seed']}, this run uses {self._seed}; "
                       "resume with the same config.seed.")
    self._epoch, self._batch = int(state["epoch"]), int(state["batch"])

  def _epoch_tables(self) -> tuple[np.ndarray, np.ndarray]:
    if self._perm_epoch != self._epoch:
      rng = np.random.default_rng([self._seed, self._epoch])
      self._perm = rng.permutation(self.num_examples)
      self._keys = rng.integers(0, 2**32, size=self.num_examples, dtype=np.uint32)
      self._perm_epoch = self._epoch
    return self._perm, self._keys

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    perm, keys = self._epoch_tables()
    start = self._batch * self.global_batch_size + self._offset
    indices = perm[start:start + self._local]
    self._batch += 1
    if self._batch == self.batches_per_epoch:
      self._epoch, self._batch = self._epoch + 1, 0
    return self._load_fn(indices, keys[indices])
