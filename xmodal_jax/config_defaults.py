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


def s1_data(source: str) -> ml_collections.ConfigDict:
  """`data(source)` plus S1's rules for queries and labels on captioned data (shapes world has its own)."""
  config = data(source)
  config.update(dict(
      query_min_images=20,      # a query = an n-gram (rules: data/query_mining.py) in >= this many train images
      query_max_fraction=0.5,   # ... and in at most this fraction of them
      query_max_n=3,            # longest n-gram
      query_max_count=0,        # > 0: keep only the most frequent
      taxonomy="flickr8k",      # class labels from the captions (data/taxonomy.py)
      label_min_votes=3))       # captions (of 5) that must name a class
  return config


def _s1_stage(task: str, num_steps: int, batch_size: int, best_metric: str) -> ml_collections.ConfigDict:
  """A training stage of the S1 pipeline: trainer sections without the shared seed / mesh / data."""
  stage = trainer()
  del stage["seed"], stage["mesh"]
  stage.task = task
  stage.train.update(num_steps=num_steps, batch_size=batch_size, eval_every=max(1, num_steps // 2),
                     checkpoint_every=max(1, num_steps // 2), log_every=min(50, num_steps))
  stage.optimizer.warmup_steps = min(200, num_steps // 10)
  stage.checkpoint.best_metric = best_metric
  return stage


def s1(source: str = "shapes", eval_splits: tuple[str, ...] = ("val", "test")) -> ml_collections.ConfigDict:
  """The S1 pipeline: text generator -> text embedding -> pixel embedding -> features -> fusion (+ ablations)."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = s1_data(source)
  config.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1), fsdp=False))
  config.pipeline = ("text_generator", "text_embedding", "pixel_embedding", "features",
                     "fusion", "pixel_only", "text_only", "ablation")
  image = dict(stem_width=32, stem_stride=4, stage_widths=(32, 64, 128), blocks_per_stage=(1, 1, 1), norm_groups=8)
  stages = ml_collections.ConfigDict()

  stages.text_generator = _s1_stage("s1_text_generator", 1_500, 128, "val/p_at_3")
  stages.text_generator.model = ml_collections.ConfigDict(dict(dtype="float32", embed_dim=64, image=dict(image)))
  stages.text_generator.loss = ml_collections.ConfigDict(dict(
      softmax="sampled",          # sampled | full
      num_samples=128,            # shared negatives per step (sampled)
      # Proposal over query ids (sorted by train frequency): uniform | log_uniform. Measured on Flickr8k (README):
      # log_uniform rarely draws rare queries as negatives, so under Adam their rows drift towards the mean image
      # and one rare query became every image's top phrase (val p@1 0.1%); uniform gave p@1 ~30% at step 500.
      distribution="uniform",
      scale=16.0,                 # s in softmax(-s * d(x, w))
      query_update="dense",       # dense (W in the optax chain) | sparse_adagrad (touched rows only: O(1) in K)
      query_learning_rate=0.05))  # sparse_adagrad
  stages.text_generator.eval.top_k = 10

  stages.text_embedding = _s1_stage("s1_text_embedding", 1_000, 256, "val/assoc_r5")
  stages.text_embedding.model = ml_collections.ConfigDict(dict(dim=200, embed_dim=200, max_ngrams=16))
  stages.text_embedding.loss = ml_collections.ConfigDict(dict(temperature=0.1))

  stages.pixel_embedding = _s1_stage("s1_pixel_embedding", 1_500, 128, "val/accuracy")
  stages.pixel_embedding.model = ml_collections.ConfigDict(dict(dtype="float32", bottleneck_dim=1024,
                                                                image=dict(image)))

  stages.features = ml_collections.ConfigDict(dict(
      job="s1_features", splits=("train",) + tuple(eval_splits),
      generator="text_generator", text_embedding="text_embedding",  # or "minilm" (pretrained, 384-d)
      pixel="pixel_embedding", top_n=3, checkpoint="latest", chunk=2048))

  for name, inputs in (("fusion", ("text", "pixel")), ("pixel_only", ("pixel",)), ("text_only", ("text",))):
    stage = _s1_stage("s1_fusion", 1_000, 128, "val/accuracy")
    stage.model = ml_collections.ConfigDict(dict(inputs=inputs, hidden=(512,), dropout_rate=0.2))
    stage.features = ml_collections.ConfigDict(dict(stage="features"))
    stage.optimizer.update(learning_rate=1e-3, weight_decay=1e-2)
    stages[name] = stage
  stages.ablation = ml_collections.ConfigDict(dict(job="s1_ablation", rows=("pixel_only", "text_only", "fusion")))
  for stage in stages.values():
    if "eval" in stage:
      stage.eval.splits = tuple(eval_splits)
  config.stages = stages
  return config
