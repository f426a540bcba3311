"""A deterministic, checkpointable, prefetching iterator of per-host batches over an indexable data set.

The order is grain's: `MapDataset.range(N).shuffle(seed).batch(B, drop_remainder=True).repeat()` cuts each
epoch's permutation of all examples into global batches (remainder dropped) and reshuffles every epoch.
Process p of P takes rows [p*B/P, (p+1)*B/P) of every global batch. Loading runs in grain reader threads with a
prefetch buffer. The position is one integer (the next global batch), stored in the trainer's checkpoint, so a
resumed run sees exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

import grain
import numpy as np

from xmodal_jax import errors

LoadFn = Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]


class ExampleKeys:
  """(epoch, example indices) -> uint32 keys that depend only on (seed, epoch, example). Thread-safe.

  Random choices made from a key (which caption, which crop) are then the same whatever the number of hosts
  or the batch layout. Hand-written: grain's random_map seeds by position in the stream, not by example.
  """

  def __init__(self, seed: int, num_examples: int):
    self.seed, self.num_examples = seed, num_examples
    self._lock = threading.Lock()
    self._tables: dict[int, np.ndarray] = {}

  def __call__(self, epoch: int, indices: np.ndarray) -> np.ndarray:
    with self._lock:
      if epoch not in self._tables:
        table = np.random.default_rng([self.seed, epoch]).integers(0, 2**32, self.num_examples, dtype=np.uint32)
        self._tables = {e: t for e, t in self._tables.items() if e >= epoch - 1}  # keep the neighbour epoch
        self._tables[epoch] = table
      return self._tables[epoch][indices]


class EpochBatchIterator:
  """Yields `load_fn(indices, keys)` for this host's slice of each global batch, loaded ahead by grain.

  load_fn: example indices int64 [local_batch] and per-example keys uint32 [local_batch] -> dict of arrays.
  It must be thread-safe (it runs on `num_threads` reader threads); reading numpy arrays or a tfds
  array_record data source is.
  """

  def __init__(self, num_examples: int, global_batch_size: int, load_fn: LoadFn, *, seed: int = 0,
               process_index: int = 0, process_count: int = 1, num_threads: int = 2, prefetch: int = 4):
    if global_batch_size % process_count:
      raise errors.ConfigError(f"Global batch size {global_batch_size} must be divisible by the {process_count} processes.")
    if num_examples < global_batch_size:
      raise errors.ConfigError(f"The data set has {num_examples} examples, fewer than one global batch "
                       f"({global_batch_size}); lower config.train.batch_size or add data.")
    self.seed = seed
    self.batches_per_epoch = num_examples // global_batch_size
    local = global_batch_size // process_count
    rows = slice(process_index * local, (process_index + 1) * local)
    keys = ExampleKeys(seed, num_examples)

    def load(batch_number: int, indices: np.ndarray) -> dict[str, np.ndarray]:
      mine = indices[rows]
      return load_fn(mine, keys(batch_number // self.batches_per_epoch, mine))

    self._read_options = grain.ReadOptions(num_threads=max(1, num_threads), prefetch_buffer_size=max(1, prefetch))
    self._dataset = (grain.MapDataset.range(num_examples).shuffle(seed=seed)
                     .batch(global_batch_size, drop_remainder=True).repeat().map_with_index(load))
    self._iterator = iter(self._dataset.to_iter_dataset(self._read_options))

  def get_state(self) -> dict[str, Any]:
    next_batch = int(self._iterator.get_state()["next_index"])
    epoch, batch = divmod(next_batch, self.batches_per_epoch)
    return {"epoch": epoch, "batch": batch, "seed": self.seed}

  def set_state(self, state: dict[str, Any]) -> None:
    if int(state["seed"]) != self.seed:
      raise errors.ConfigError(f"Checkpointed data iterator used seed {state['seed']}, this run uses {self.seed}; "
                       "resume with the same config.seed.")
    next_batch = int(state["epoch"]) * self.batches_per_epoch + int(state["batch"])
    self._iterator = iter(self._dataset.to_iter_dataset(self._read_options))
    self._iterator.set_state({"next_index": next_batch})

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._iterator)
