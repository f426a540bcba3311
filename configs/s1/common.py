"""The S1 pipeline shared by the configs of this folder: text generator -> text embedding -> pixel embedding ->
features -> fusion (+ pixel-only and text-only ablations) -> ablation table. Each training stage is a complete
trainer config; `seed`, `data`, `mesh` and `partition` are shared by all stages (xmodal_jax/train/stages.py).

`partition` (xmodal_jax/systems/classifier/partition.py) says which train images each model learns from: by default every
train image is image-query data and labelled (today's regime), and the three models before the fusion head are
cross-fitted over 2 folds of the labelled images, so the fusion head trains on out-of-sample features.
`partition.labelled_images=N` is the seed's regime: N labelled images, disjoint from the (larger) image-query set.

Imported by the configs beside it: `from configs.s1 import common`.
"""
import ml_collections

from xmodal_jax.data.config import data_config
from xmodal_jax.systems import evaluator_config
from xmodal_jax.systems.classifier.partition import partition_config
from xmodal_jax.train.defaults import trainer_config

IMAGE = dict(stem_width=32, stem_stride=4, stage_widths=(32, 64, 128), blocks_per_stage=(1, 1, 1), norm_groups=8)


def s1_data(source: str) -> ml_collections.ConfigDict:
  """The data section plus S1's rules for queries and labels on captioned data (shapes world has its own)."""
  return data_config(
      source,
      query_min_images=20,      # a query = an n-gram (rules: systems/classifier/query_mining.py) in >= this many train images
      query_max_fraction=0.5,   # ... and in at most this fraction of them
      query_max_n=3,            # longest n-gram
      query_max_count=0,        # > 0: keep only the most frequent
      taxonomy="flickr8k",      # class labels from the captions (data/taxonomy.py)
      label_min_votes=3,        # captions (of 5) that must name a class
      # The seed's own inputs instead (folder:PATH sources; formats and checks: docs/classifier.md "S1 inputs"):
      query_clicks="",          # (image, query, clicks) log replacing the mined queries (systems/classifier/query_clicks.py)
      query_pairs="",           # query-query association pairs for the text embedding (systems/classifier/query_pairs.py)
      label_set=(),             # declared class names; with labels_file or labels_field replaces the taxonomy
      labels_file="",           # image -> label file (systems/classifier/image_labels.py)
      labels_field="")          # ... or a field of each captions.jsonl record


def _evals(kind: str, splits: tuple[str, ...], every: int, best: str, **fields) -> ml_collections.ConfigDict:
  """One evaluator of `kind` per split; the first runs every `every` steps and keeps the best checkpoint."""
  evals = ml_collections.ConfigDict()
  for i, split in enumerate(splits):
    evals[split] = evaluator_config(kind, split=split, every=every if i == 0 else 0,
                                    best_metric=best if i == 0 else "", **fields)
  return evals


def _stage(task: str, num_steps: int, batch_size: int, evals: tuple, splits: tuple[str, ...]) -> ml_collections.ConfigDict:
  """A training stage: trainer sections without the shared seed / mesh (the pipeline adds them and data)."""
  stage = trainer_config()
  del stage["seed"], stage["mesh"]
  stage.task = task
  stage.train.update(num_steps=num_steps, batch_size=batch_size, checkpoint_every=max(1, num_steps // 2),
                     log_every=min(50, num_steps))
  stage.optimizer.warmup_steps = min(200, num_steps // 10)
  kind, best, fields = evals
  stage.evals = _evals(kind, splits, max(1, num_steps // 2), best, **fields)
  return stage


def s1(source: str = "shapes", eval_splits: tuple[str, ...] = ("val", "test")) -> ml_collections.ConfigDict:
  """The whole S1 pipeline config."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = s1_data(source)
  config.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1), fsdp=False))
  # Which train images each model learns from; cross-fitting folds (systems/classifier/partition.py, module docstring).
  config.partition = partition_config(labelled_images=0, folds=2)
  config.pipeline = ("text_generator", "text_embedding", "pixel_embedding", "features",
                     "fusion", "pixel_only", "text_only", "ablation")
  stages = ml_collections.ConfigDict()

  stages.text_generator = _stage("s1_text_generator", 1_500, 128, ("label_ranking", "p_at_3", {}), eval_splits)
  stages.text_generator.model = ml_collections.ConfigDict(dict(dtype="float32", embed_dim=64, image=dict(IMAGE)))
  stages.text_generator.loss = ml_collections.ConfigDict(dict(
      softmax="sampled",          # sampled | full
      num_samples=128,            # shared negatives per step (sampled)
      # Proposal over query ids (sorted by train frequency): uniform | log_uniform. On Flickr8k (docs/classifier.md) one
      # log_uniform run degenerated (rare rows, rarely drawn as negatives, drifted under Adam: val p@1 0.1%) and
      # another trained normally (p@1 34.3% vs 32.0% uniform); uniform has not failed, so it is the default.
      distribution="uniform",
      scale=16.0,                 # s in softmax(-s * d(x, w))
      query_update="dense",       # dense (W in the optax chain) | sparse_adagrad (touched rows only: O(1) in K)
      query_learning_rate=0.05))  # sparse_adagrad

  stages.text_embedding = _stage("s1_text_embedding", 1_000, 256, ("query_association", "assoc_r5", {}), eval_splits)
  stages.text_embedding.model = ml_collections.ConfigDict(dict(dim=200, embed_dim=200, max_ngrams=16))
  stages.text_embedding.loss = ml_collections.ConfigDict(dict(temperature=0.1))

  stages.pixel_embedding = _stage("s1_pixel_embedding", 1_500, 128, ("classification", "accuracy", {}), eval_splits)
  stages.pixel_embedding.model = ml_collections.ConfigDict(dict(
      dtype="float32", bottleneck_dim=1024,
      # The seed's pixel embedding: the bottleneck of a CNN pretrained on other labels (ImageNet EfficientNet-
      # Lite0 | 1 | 2, frozen; its pooled 1280-d feature projected to bottleneck_dim). "" = the ResNet `image`
      # trained from scratch on the target labels.
      pretrained_image="efficientnet-lite0",
      image=dict(IMAGE),
      input_size=0,   # pretrained tower's input size (0: as the data gives them); real data is read at this size
      cache=True))    # pretrained tower: run it once over the train images, train the bottleneck on its output

  stages.features = ml_collections.ConfigDict(dict(
      job="s1_features", splits=("train",) + tuple(eval_splits),
      generator="text_generator", text_embedding="text_embedding",  # or "minilm" (pretrained, 384-d)
      pixel="pixel_embedding", top_n=3, checkpoint="latest", chunk=2048))

  for name, inputs in (("fusion", ("text", "pixel")), ("pixel_only", ("pixel",)), ("text_only", ("text",))):
    stage = _stage("s1_fusion", 1_000, 128, ("classification", "accuracy", {}), eval_splits)
    stage.model = ml_collections.ConfigDict(dict(inputs=inputs, hidden=(512,), dropout_rate=0.2))
    stage.features = ml_collections.ConfigDict(dict(stage="features"))
    stage.optimizer.update(learning_rate=1e-3, weight_decay=1e-2)
    stages[name] = stage
  stages.ablation = ml_collections.ConfigDict(dict(job="s1_ablation", rows=("pixel_only", "text_only", "fusion")))
  config.stages = stages
  return config
