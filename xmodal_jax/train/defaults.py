"""Config sections every trainer run has: seed, optimizer, train, checkpoint, mesh, evals.

Nothing here is specific to a system or a kind of evaluation: experiment configs (configs/<project>/*.py) add
`task`, `data`, `model`, their objective's section and their evaluators (`config.evals`).
"""
from __future__ import annotations

import ml_collections


def trainer_config() -> ml_collections.ConfigDict:
  """The generic sections, with defaults; configs override fields and add `config.evals` entries."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.optimizer = ml_collections.ConfigDict(dict(
      name="adamw", learning_rate=2e-3, schedule="cosine", warmup_steps=200, weight_decay=1e-4,
      grad_clip_norm=2.0, b1=0.9, b2=0.999, momentum=0.9,
      step_boundaries=(),  # schedule="step": steps at which the learning rate is multiplied by step_factor
      step_factor=0.1,
      groups=()))          # ((param path regex, lr multiplier[, first step]), ...); multiplier 0 freezes
  config.train = ml_collections.ConfigDict(dict(
      batch_size=128,      # global batch
      num_steps=2_000,
      log_every=50,
      checkpoint_every=500,
      profile_steps=0))    # >0: write a profiler trace of that many steps to the workdir
  config.checkpoint = ml_collections.ConfigDict(dict(
      max_to_keep=2,       # latest checkpoints kept (plus the best one, if an evaluator sets best_metric)
      use_async=True,
      final_from="latest"))  # latest | best: which checkpoint the final evaluation (results.json) reports
  config.mesh = ml_collections.ConfigDict(dict(
      shape=(-1, 1),       # (data, model); -1 = all remaining devices
      fsdp=False))         # also shard params over `data`
  config.evals = ml_collections.ConfigDict()  # name -> evaluation.evaluator_config(type, split=..., every=...)
  return config
