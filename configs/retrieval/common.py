"""Settings shared by the image<->text retrieval configs of this folder (VSE++, mFSR, S2).

Imported by the configs beside it: `from configs.retrieval import common`.
"""
import ml_collections

from xmodal_jax.data.config import caption_fields, data_config
from xmodal_jax.systems import evaluator_config


def data(source: str, **fields) -> ml_collections.ConfigDict:
  """The data section with the caption tokenizer fields."""
  return data_config(source, **dict(caption_fields(), **fields))


def retrieval_evals(splits=("val", "test"), *, every: int = 500, fold_size: int = 1_000,
                    batch_size: int = 500) -> ml_collections.ConfigDict:
  """One R@K evaluator per split, named by it. The first runs every `every` steps and keeps the best
  checkpoint by rsum; the others run at the end. `fold_size`: also the mean over folds of that many images
  when a split is larger (the COCO 1K protocol)."""
  evals = ml_collections.ConfigDict()
  for i, split in enumerate(splits):
    evals[split] = evaluator_config("retrieval", split=split, every=every if i == 0 else 0, fold_size=fold_size,
                                    batch_size=batch_size, best_metric="rsum" if i == 0 else "")
  return evals


def vsepp_model() -> ml_collections.ConfigDict:
  """VSE++'s towers: a small ResNet (GroupNorm) and a GRU into a 256-d joint space."""
  return ml_collections.ConfigDict(dict(
      dtype="float32",
      embed_dim=256,
      image=dict(stem_width=32, stem_stride=4, stage_widths=(32, 64, 128), blocks_per_stage=(1, 1, 1),
                 norm_groups=8),
      text=dict(embed_dim=128, hidden_dim=256, pooling="last")))


def hinge_loss() -> ml_collections.ConfigDict:
  """VSE++'s objective: hinge with margin; max violation (hardest negative) after a warm-up of summed hinges."""
  return ml_collections.ConfigDict(dict(
      margin=0.2,
      max_violation=True,
      max_violation_warmup_steps=300))  # sum of hinges first (max violation from scratch can stall)


def gan_optimizer_config() -> ml_collections.ConfigDict:
  """config.gan.optimizer (every field of config.optimizer): DCGAN's Adam (lr 2e-4, b1 0.5), constant, no
  clipping or weight decay."""
  return ml_collections.ConfigDict(dict(
      name="adam", learning_rate=2e-4, schedule="constant", warmup_steps=0, weight_decay=0.0, grad_clip_norm=0.0,
      b1=0.5, b2=0.999, momentum=0.9, step_boundaries=(), step_factor=0.1, groups=()))


def mfsr_sections(config: ml_collections.ConfigDict, *, embed_dim: int, part_dim: int, generator_size: int,
                  gan_width: int, decoder_width: int) -> ml_collections.ConfigDict:
  """mFSR's sections on top of a VSE++ config (task "mfsr", xmodal_jax/systems/vse/mfsr_task.py): the feature
  separation, the reconstruction branches, the loss weights (eq. 6, all 1) and the discriminators' optimiser."""
  config.task = "mfsr"
  config.model.embed_dim = embed_dim
  config.model.separation = ml_collections.ConfigDict(dict(
      enabled=True,                 # False: plain VSE++ (the embedding is the semantic part)
      modal_dim=part_dim, semantic_dim=part_dim, specific_dim=part_dim,  # not given by the paper
      hidden_dim=2 * embed_dim, depth=2,                                 # not given by the paper
      normalize="parts"))           # parts: each of mo / se / sp L2-normalised (the text) | concat: once (eq. 3)
  config.model.generator = ml_collections.ConfigDict(dict(image_size=generator_size, base_width=gan_width))
  config.model.discriminator = ml_collections.ConfigDict(dict(base_width=gan_width))
  config.model.caption_decoder = ml_collections.ConfigDict(dict(width=decoder_width, dropout_rate=0.1))
  config.loss_weights = ml_collections.ConfigDict(dict(modal=1.0, semantic=1.0, specific=1.0, image=1.0,
                                                       caption=1.0))   # 0 removes a component
  config.gan = ml_collections.ConfigDict(dict(optimizer=gan_optimizer_config()))
  return config


def paper_protocol(config: ml_collections.ConfigDict, num_train_images: int) -> ml_collections.ConfigDict:
  """mFSR's training protocol (seed 003, sec. 3.5): batch 24, Adam 2e-4 for 15 epochs then 2e-5 for 15 more,
  the best snapshot by validation rsum (one caption per image per epoch here)."""
  epoch = -(-num_train_images // 24)
  config.train.update(batch_size=24, num_steps=30 * epoch, checkpoint_every=epoch)
  config.optimizer.update(name="adam", learning_rate=2e-4, schedule="step", step_boundaries=(15 * epoch,),
                          step_factor=0.1, warmup_steps=0, weight_decay=0.0)
  config.checkpoint.final_from = "best"
  first = list(config.evals.keys())[0]
  config.evals[first].every = epoch
  return config


def region_word_sections(config: ml_collections.ConfigDict, *, embed_dim: int, word_dim: int, text_hidden: int,
                         roi_bins: int, relation_regions: int) -> ml_collections.ConfigDict:
  """S2's sections (task "region_word_alignment", xmodal_jax/systems/region_word/region_word_task.py) beside
  config.data / train / optimizer: the frozen image tower, the regions, the model, the layer similarities, the
  semantic tags and the matching loss. The data-set configs set the tower's cut and the regions."""
  config.task = "region_word_alignment"
  config.image_tower = ml_collections.ConfigDict(dict(
      variant="efficientnet-lite0", input_size=224, feature_cut="head_conv",  # or the input of a stage: "stage5"
      cache_dtype="float16", cache_batch_size=64))
  config.regions = ml_collections.ConfigDict(dict(
      method="data",        # data: the data's boxes (shapes world: ground truth) | grid
      grid=(3, 3), include_full=True,  # include_full: the whole-image box first (VSE++'s global feature)
      max_regions=4,        # boxes per image (padded); a grid needs rows x cols
      eval_method="",       # '' = method; evaluation with other regions (robustness to poor detection)
      eval_jitter=0.0, jitter_seed=0))  # evaluation boxes: centres moved / sides scaled by up to this fraction
  config.model = ml_collections.ConfigDict(dict(
      dtype="float32", embed_dim=embed_dim, word_dim=word_dim, text_hidden=text_hidden, roi_bins=roi_bins,
      salient_attention=True, num_heads=4,
      # False: self-attention only scores the regions (saliency weights, the global vector, the relation pairs);
      # the entity / relation layers align the FC's region features. True: they align the self-attended ones
      # (measured worse: docs/region_word.md).
      contextual_regions=False,
      global_pool="regions",  # regions: saliency-weighted (or mean) regions | image: the whole-image box
      relation=True, relation_regions=relation_regions,  # pairs among this many most salient regions
      relation_dim=0))      # width of relation items and phrases (0: embed_dim)
  config.similarity = ml_collections.ConfigDict(dict(
      directions=("t2i", "i2t"), attention_temperature=9.0, aggregation="lse", lse_temperature=6.0))
  config.similarity.weights = ml_collections.ConfigDict({"global": 1.0, "entity": 1.0, "relation": 1.0})  # 0: off
  config.tags = ml_collections.ConfigDict(dict(
      enabled=True, weight=1.0, side="image",   # side: image | text | both
      min_count=20, max_tags=0,                 # document frequency over the train captions; 0 = all
      extra_stopwords=("image", "picture", "photo", "shows", "shown")))  # caption words that describe the caption
  config.loss = ml_collections.ConfigDict(dict(
      margin=0.2, max_violation=True, max_violation_warmup_steps=200,  # hinge on the combined similarity
      consistency_weight=0.5))  # + this x the hinge of every layer on its own ("semantic consistency")
  return config


def region_word_evals(splits=("val", "test"), *, rerank_k: int = 20, batch_size: int = 250,
                      tags_split: str = "", choice_split: str = "") -> ml_collections.ConfigDict:
  """S2's evaluators, all at the end: retrieval per split by the pairwise scorer re-ranking the global
  embeddings' top-k (rerank_k=0: every image x caption pair), the tag head's micro-F1 and the compositional
  choice (shapes world). They read the cached feature maps: the image side's *_features predict functions."""
  evals = ml_collections.ConfigDict()
  for split in splits:
    evals[split] = evaluator_config("retrieval", split=split, scorer="pairwise", rerank_k=rerank_k,
                                    embed_image="embed_image_features", pair_image="pair_image_features",
                                    pair_text="pair_text", pair_batch_size=1024, batch_size=batch_size)
  if tags_split:
    evals.tags = evaluator_config("multilabel", split=tags_split, batch_size=batch_size)
  if choice_split:
    evals.composition = evaluator_config("pair_choice", split=choice_split, pair_image="pair_image_features",
                                         pair_text="pair_text", pair_batch_size=1024, batch_size=batch_size)
  return evals
