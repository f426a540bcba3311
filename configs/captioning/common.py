"""Settings shared by the S5 captioning configs of this folder (captioners and their reward models).

Imported by the configs beside it: `from configs.captioning import common`.
"""
import ml_collections

from xmodal_jax.systems import evaluator_config
from xmodal_jax.train.defaults import trainer_config


def cnn(**fields) -> dict:
  """A small ResNet from scratch (models/resnet.py); its last feature map is the decoder's context."""
  return dict(dict(stage_widths=(32, 64, 128), blocks_per_stage=(1, 1, 1), stem_width=32, stem_stride=2,
                   norm_groups=8), **fields)


def vit(**fields) -> dict:
  """A ViT from scratch (models/vit.py) whose patch tokens are the context."""
  return dict(dict(patch_size=8, width=128, depth=3, num_heads=4, mlp_dim=0, posemb="learn", pre_norm=True,
                   patch_bias=False, layer_norm_eps=1e-5, activation="gelu", dropout_rate=0.0, remat=False), **fields)


def decoder(kind: str = "transformer", **fields) -> dict:
  """A caption decoder (models/caption_decoder.py); the GRU reads width and dropout_rate only. init_embeddings:
  "" (random) or "minilm" (the token embeddings start from MiniLM's word embeddings: wordpiece, width 384)."""
  return dict(dict(kind=kind, width=256, depth=3, num_heads=4, mlp_dim=0, dropout_rate=0.1, init_embeddings=""),
              **fields)


def captioner_config(data: ml_collections.ConfigDict, *, encoder: str, decoder_fields: dict,
                     cnn_fields: dict | None = None, vit_fields: dict | None = None,
                     variant: str = "efficientnet-lite0") -> ml_collections.ConfigDict:
  """A whole `captioning` task config (train.objective "mle"; the SCST variants of each config switch it)."""
  config = trainer_config()
  config.task = "captioning"
  config.data = data
  config.model = ml_collections.ConfigDict(dict(
      dtype="float32",
      output_vocab="all",      # "captions": the decoder emits only the train captions' tokens and <eos>
      encoder=dict(kind=encoder, cnn=cnn_fields or cnn(), vit=vit_fields or vit(), efficientnet=dict(variant=variant)),
      decoder=decoder_fields))
  config.init_from = ""        # SCST: the MLE run to start from
  config.reward = ml_collections.ConfigDict(dict(workdir=""))   # the frozen reward model (a clip / reward-model run)
  # Evaluation scorers (two-tower runs), the same for every captioner of a table: CLIP-S / RefCLIP-S under each,
  # and g(c) under those with a grammar head. '' = none.
  config.scorers = ml_collections.ConfigDict(dict(judge="", clip="", grammar=""))
  config.scst = ml_collections.ConfigDict(dict(
      samples=1, baseline="greedy",            # greedy baseline (the seed) | leave_one_out (samples >= 2)
      temperature=1.0, top_k=0, top_p=1.0,     # the sampling policy
      reward="clip",                           # clip | cider | cider+clip (captioner_task.py: _reward_of)
      cider_weight=1.0,                        # lambda of "cider+clip": R = CIDEr-D + lambda * (w * max(cos, 0) ...)
      reward_weight=2.5,                       # w of R = w * max(cos, 0)
      grammar_weight=1.0))                     # lambda of R + lambda * g(c), when the reward model has a grammar head
  config.decode = ml_collections.ConfigDict(dict(method="greedy", beam_size=3, alpha=0.0, temperature=1.0, top_k=0,
                                                 top_p=1.0))
  config.cache = ml_collections.ConfigDict(dict(enabled=True, dtype="float16", dir="", batch_size=64))
  config.train.objective = "mle"
  config.optimizer.update(name="adamw", learning_rate=1e-3, warmup_steps=200, weight_decay=1e-2, grad_clip_norm=1.0,
                          b2=0.98)
  return config


def scst(config: ml_collections.ConfigDict, *, init_from: str, reward: str, num_steps: int,
         learning_rate: float) -> ml_collections.ConfigDict:
  """Switch a captioner config to SCST from the MLE run `init_from` under the reward model `reward`."""
  config.train.objective = "scst"
  config.init_from = init_from
  config.reward.workdir = reward
  config.train.num_steps = num_steps
  config.optimizer.update(learning_rate=learning_rate, warmup_steps=0, schedule="constant")
  return config


def evals(splits=("val",), *, every: int = 500, batch_size: int = 250, max_images: int = 0,
          best_metric: str = "") -> ml_collections.ConfigDict:
  """The captioning evaluator per split (the first every `every` steps)."""
  out = ml_collections.ConfigDict()
  for i, split in enumerate(splits):
    out[split] = evaluator_config("captioning", split=split, every=every if i == 0 else 0, batch_size=batch_size,
                                  max_images=max_images, best_metric=best_metric if i == 0 else "")
  return out


def reward_training(*, grammar: bool, attribute: bool) -> ml_collections.ConfigDict:
  """The reward-model fine-tune: a grammar head (grammar), attribute negatives (attribute) or both."""
  if not (grammar or attribute):
    raise ValueError("A reward model fine-tune trains a grammar head, attribute negatives or both: use the variant "
                     ":grammar, :attribute or :grammar_attribute.")
  return ml_collections.ConfigDict(dict(
      grammar=grammar, attribute=attribute,
      grammar_weight=1.0, contrastive_weight=1.0,   # 0: the classification loss only
      attribute_weight=1.0, grammar_hidden=256))
