"""Settings shared by the image<->text retrieval configs of this folder (VSE++ now; mFSR, CLIP, S2 later).

Loaded by the configs beside it: `common = config_files.load_beside(__file__, "common.py")`.
"""
import ml_collections

from xmodal_jax.data.config import caption_fields, data_config
from xmodal_jax.evaluation.evaluator import evaluator_config


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
