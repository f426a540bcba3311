r"""LiT on Flickr8k with SigLIP's loss (Zhai et al. 2023): configs/clip/clip_flickr8k.py with config.loss.kind="sigmoid"
(learnable temperature t' = log 10 and bias -10 at the start; two captions of one image in a batch are both
positives of that image).

Run (from the repo root):
  xmodal train --config=configs/clip/siglip_flickr8k.py --workdir=workdirs/siglip_flickr8k

Expected: docs/clip.md has the measured val table and the training time.

Peak RSS (measured, 2026-12-07, `xmodal train --config=configs/clip/siglip_flickr8k.py --workdir=W
--config.train.num_steps=60 --config.train.checkpoint_every=60 --config.optimizer.warmup_steps=10
--config.evals.val.every=30` under `/usr/bin/time -f %M`, huge pages on, feature caches already built, 2-core CPU;
whole run: data, compiles, training, two val evaluations and zero_shot_val, 361 s): 3.49 GiB. With evaluation at
batch 500 (before clip_flickr8k.py set 64) the same run peaked at 11.3 GiB.
"""
import ml_collections

from configs.clip import clip_flickr8k


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return clip_flickr8k.get_config(arg, loss="sigmoid")
