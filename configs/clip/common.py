"""Settings shared by the contrastive two-tower configs of this folder (CLIP, SigLIP, LiT).

Imported by the configs beside it (and by S5's, configs/captioning/): `from configs.clip import common`.
"""
import ml_collections

from xmodal_jax.data.config import caption_fields, data_config
from xmodal_jax.systems import evaluator_config
from xmodal_jax.task_bases.contrastive_objective import loss_config
from xmodal_jax.train.defaults import trainer_config

__all__ = ["loss_config"]


def data(source: str, **fields) -> ml_collections.ConfigDict:
  """The data section with the caption tokenizer fields and the taxonomy's vote count (zero-shot labels)."""
  return data_config(source, **dict(caption_fields(), label_min_votes=3, **fields))


def vit(**fields) -> dict:
  """A ViT image tower (models/vit.py); defaults: the CPU reference of bench/clip_step.py (64 px, patch 8,
  width 192, depth 4, 3 heads). mlp_dim 0 = 4 x width. locked / init_from: LiT from a finished clip run."""
  return dict(dict(patch_size=8, width=192, depth=4, num_heads=3, mlp_dim=0, pool="cls", posemb="learn",
                   pre_norm=True, patch_bias=False, layer_norm_eps=1e-5, activation="gelu", dropout_rate=0.0,
                   remat=False, locked=False, init_from=""), **fields)


def text_transformer(**fields) -> dict:
  """A causal text transformer pooled at the last real token (CLIP; models/text_transformer.py)."""
  return dict(dict(width=192, depth=4, num_heads=3, mlp_dim=0, causal=True, pool="eot", layer_norm_eps=1e-5,
                   activation="gelu", dropout_rate=0.0, remat=False,
                   vocab_size=0),  # embedding rows: 0 = the tokenizer's size (padded to a multiple of 128)
              **fields)


def clip_config(data_section: ml_collections.ConfigDict, *, loss: str = "infonce", embed_dim: int = 192,
                image: dict | None = None, text: dict | None = None) -> ml_collections.ConfigDict:
  """A whole `clip` task config: trainer sections, data, model (fp32), loss, AdamW as CLIP / open_clip train it
  (betas 0.9 / 0.98, weight decay 0.2 on matrices, warm-up then cosine decay, gradient clipping at 1)."""
  config = trainer_config()
  config.task = "clip"
  config.data = data_section
  config.model = ml_collections.ConfigDict(dict(dtype="float32", embed_dim=embed_dim, image=image or vit(),
                                                text=text or text_transformer()))
  config.loss = loss_config(loss)
  config.train.grad_accum_steps = 1
  config.optimizer.update(name="adamw", learning_rate=5e-4, b1=0.9, b2=0.98, weight_decay=0.2, warmup_steps=200,
                          schedule="cosine", grad_clip_norm=1.0)
  return config


def evals(splits=("val", "test"), *, every: int = 500, batch_size: int = 500, zero_shot: bool = True,
          fold_size: int = 0) -> ml_collections.ConfigDict:
  """R@K per split (the first every `every` steps, keeping the best checkpoint by rsum) and, with zero_shot,
  zero-shot classification accuracy per split at the end (classes and prompts: data/zero_shot_classes.py)."""
  out = ml_collections.ConfigDict()
  for i, split in enumerate(splits):
    out[split] = evaluator_config("retrieval", split=split, every=every if i == 0 else 0, batch_size=batch_size,
                                  best_metric="rsum" if i == 0 else "", fold_size=fold_size)
    if zero_shot:
      out[f"zero_shot_{split}"] = evaluator_config("zero_shot", split=split, batch_size=batch_size)
  return out
