r"""The two-tower models of S5 on the shapes world: the SCST reward model and an independent judge.

  xmodal train --config=configs/captioning/clip_shapes.py:reward --workdir=workdirs/s5_shapes_clip
  xmodal train --config=configs/captioning/clip_shapes.py:judge --workdir=workdirs/s5_shapes_judge

"reward": configs/clip/clip_shapes.py (CLIP, InfoNCE, ViT width 128 depth 3, text width 128 depth 2), 1,000 steps.
"judge": another seed, another loss (SigLIP's sigmoid) and other towers (ViT patch 16 width 96 depth 4, a
bidirectional text tower of width 96, mean-pooled), so the captioner's CLIP-S under it is not the score it was
trained on. Both share the captioner's data (the default shapes world).
Expected: docs/captioning.md lists their retrieval figures.

Peak RSS (measured, 2026-12-07, 60-step runs (`--config.train.num_steps=60 --config.train.checkpoint_every=60
--config.evals.val.every=30`, warm-up 10 where the config has one) under `/usr/bin/time -f %M`, huge pages on,
2-core CPU shared with other jobs): `:reward` 2.95 GiB, `:judge` 2.25 GiB.
"""
import ml_collections

from configs.clip import clip_shapes
from configs.clip import common as clip_common
from configs.variants import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  # :tiny is the tiny reward model (tests).
  arg = parse_arg(arg, reward=False, judge=False, tiny=False, aliases={"tiny_judge": "tiny,judge"})
  if not (arg.reward or arg.judge or arg.tiny):
    raise ValueError("configs/captioning/clip_shapes.py: name the model, :reward, :judge, :tiny or :tiny_judge.")
  config = clip_shapes.get_config("tiny" if arg.tiny else None)
  if arg.judge:
    config.seed = 1
    config.loss = clip_common.loss_config("sigmoid")
    config.model.update(embed_dim=96)
    config.model.image.update(patch_size=16, width=96, depth=4, num_heads=4)
    config.model.text.update(width=96, depth=2, num_heads=4, causal=False, pool="mean")
    if arg.tiny:
      config.model.update(embed_dim=16)
      config.model.image.update(width=16, depth=1, num_heads=2)
      config.model.text.update(width=16, depth=1, num_heads=2)
  if not arg.tiny:
    config.train.num_steps = 1_000
  return config
