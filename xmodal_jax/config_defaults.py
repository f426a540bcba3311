"""Defaults shared by the experiment configs in configs/ (which stay short: only what differs).

`vsepp()` returns a complete VSE++ config; experiment files start from it and override fields.
"""
from __future__ import annotations

import ml_collections


def trainer() -> ml_collections.ConfigDict:
  """Sections every task uses: seed, optimizer, train, eval, checkpoint, mesh."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.optimizer = ml_collections.ConfigDict(dict(
      name="adamw", learning_rate=2e-3, schedule="cosine", warmup_steps=200, weight_decay=1e-4,
      grad_clip_norm=2.0, b1=0.9, b2=0.999, momentum=0.9))
  config.train = ml_collections.ConfigDict(dict(
      batch_size=128,      # global batch
      num_steps=2_000,
      log_every=50,
      eval_every=500,
      checkpoint_every=500,
      profile_steps=0))    # >0: write a profiler trace of that many steps to the workdir
  config.eval = ml_collections.ConfigDict(dict(
      splits=("val", "test"),  # the first is evaluated during training and picks the best checkpoint
      batch_size=500,
      fold_size=1_000))    # also report the mean over 1K-image folds when a split is larger
  config.checkpoint = ml_collections.ConfigDict(dict(
      max_to_keep=2, best_metric="val/rsum", best_mode="max", use_async=True))
  config.mesh = ml_collections.ConfigDict(dict(
      shape=(-1, 1),       # (data, model); -1 = all remaining devices
      fsdp=False))         # also shard params over `data`
  return config


def data(source: str) -> ml_collections.ConfigDict:
  """The data section: source spec, image size, captions/tokenizer, loading."""
  return ml_collections.ConfigDict(dict(
      source=source,       # shapes | folder:PATH | karpathy:JSON:IMAGE_ROOT | tfds:NAME[:CONFIG]
      seed=0,              # shapes world generator seed (fixed splits)
      num_train=30_000,    # shapes world sizes
      num_val=1_000,
      num_test=1_000,
      image_size=64,       # training/eval crop (shapes world: the generated size)
      flip=False,          # random horizontal flips in training
      max_len=40,          # tokens; longer captions are cut (with a warning and a count)
      tokenizer="word",    # word | sentencepiece (built on the train captions, saved in the workdir)
      vocab_min_count=1,   # word tokenizer
      vocab_size=8000,     # sentencepiece tokenizer
      num_threads=2,       # loader threads (grain)
      prefetch=4,          # batches loaded ahead
      prepare_size=64,     # real data: shorter side of the prepared images (>= image_size)
      prepared_dir="",     # real data: '' = ~/.cache/xmodal_jax/prepared/<source>
      tfds_data_dir="",    # tfds:NAME sources
      skip_bad=False))     # real data: skip (and count) bad records instead of failing


def vsepp(source: str = "shapes") -> ml_collections.ConfigDict:
  """VSE++: ResNet + GRU into a 256-d joint space, hinge loss with hardest negatives."""
  config = trainer()
  config.task = "vsepp"
  config.data = data(source)
  config.model = ml_collections.ConfigDict(dict(
      dtype="float32",
      embed_dim=256,
      image=ml_collections.ConfigDict(dict(stem_width=32, stem_stride=4, stage_widths=(32, 64, 128),
                                           blocks_per_stage=(1, 1, 1), norm_groups=8)),
      text=ml_collections.ConfigDict(dict(embed_dim=128, hidden_dim=256, pooling="last"))))
  config.loss = ml_collections.ConfigDict(dict(
      margin=0.2,
      max_violation=True,
      max_violation_warmup_steps=300))  # sum of hinges first (max violation from scratch can stall)
  return config
