"""A deterministic, checkpointable, prefetching iterator of per-host batches over an indexable data set.

Order is a pure function of (seed, global batch number): each epoch is a fresh permutation of all examples,
cut into global batches (the remainder dropped); process p of P takes rows [p*B/P, (p+1)*B/P) of every
global batch. Loading runs in a grain pipeline (`MapDataset.range -> map(load) -> to_iter_dataset` with
reader threads and a prefetch buffer). The position is one integer (the next global batch), stored in the
trainer's checkpoint, so a resumed run sees exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

import grain
import numpy as np

LoadFn = Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]
_ENDLESS = 2**62


class EpochOrder:
  """Global batch number b -> (example indices, per-example keys) of this host's rows. Thread-safe.

  A key (uint32) depends only on (seed, epoch, example index), so random choices made from it (which
  caption, which crop) are the same whatever the number of hosts or the batch layout.
  """

  def __init__(self, num_examples: int, global_batch_size: int, *, seed: int = 0, process_index: int = 0,
               process_count: int = 1):
    if global_batch_size % process_count:
      raise ValueError(f"Global batch size {global_batch_size} must be divisible by the {process_count} processes.")
    if num_examples < global_batch_size:
      raise ValueError(f"The data set has {num_examples} examples, fewer than one global batch "
                       f"({global_batch_size}); lower config.train.batch_size or add data.")
    self.num_examples = num_examples
    self.global_batch_size = global_batch_size
    self.batches_per_epoch = num_examples // global_batch_size
    self.seed = seed
    self._local = global_batch_size // process_count
    self._offset = process_index * self._local
    self._lock = threading.Lock()
    self._tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}

  def _epoch_tables(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    with self._lock:
      if epoch not in self._tables:
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(self.num_examples)
        keys = rng.integers(0, 2**32, size=self.num_examples, dtype=np.uint32)
        self._tables = {e: t for e, t in self._tables.items() if e >= epoch - 1}  # keep the neighbour epoch
        self._tables[epoch] = (perm, keys)
      return self._tables[epoch]

  def host_batch(self, batch_number: int) -> tuple[np.ndarray, np.ndarray]:
    epoch, batch = divmod(int(batch_number), self.batches_per_epoch)
    perm, keys = self._epoch_tables(epoch)
    start = batch * self.global_batch_size + self._offset
    indices = perm[start:start + self._local]
    return indices, keys[indices]


class EpochBatchIterator:
  """Yields `load_fn(indices, keys)` for this host's slice of each global batch, loaded ahead by grain.

  load_fn: example indices int64 [local_batch] and per-example keys uint32 [local_batch] -> dict of arrays.
  It must be thread-safe (it runs on `num_threads` reader threads); reading numpy arrays or a tfds
  array_record data source is.
  """

  def __init__(self, num_examples: int, global_batch_size: int, load_fn: LoadFn, *, seed: int = 0,
               process_index: int = 0, process_count: int = 1, num_threads: int = 2, prefetch: int = 4):
    self.order = EpochOrder(num_examples, global_batch_size, seed=seed, process_index=process_index,
                            process_count=process_count)
    self.batches_per_epoch = self.order.batches_per_epoch
    self._read_options = grain.ReadOptions(num_threads=max(1, num_threads), prefetch_buffer_size=max(1, prefetch))
    self._dataset = grain.MapDataset.range(_ENDLESS).map(lambda b: load_fn(*self.order.host_batch(b)))
    self._iterator = iter(self._dataset.to_iter_dataset(self._read_options))

  def get_state(self) -> dict[str, Any]:
    next_batch = int(self._iterator.get_state()["next_index"])
    epoch, batch = divmod(next_batch, self.batches_per_epoch)
    return {"epoch": epoch, "batch": batch, "seed": self.order.seed}

  def set_state(self, state: dict[str, Any]) -> None:
    if int(state["seed"]) != self.order.seed:
      raise ValueError(f"Checkpointed data iterator used seed {state['seed']}, this run uses {self.order.seed}; "
                       "resume with the same config.seed.")
    next_batch = int(state["epoch"]) * self.batches_per_epoch + int(state["batch"])
    self._iterator = iter(self._dataset.to_iter_dataset(self._read_options))
    self._iterator.set_state({"next_index": next_batch})

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._iterator)
