r"""LiT on Flickr8k with SigLIP's loss (Zhai et al. 2023): configs/clip/clip_flickr8k.py with config.loss.kind="sigmoid"
(learnable temperature t' = log 10 and bias -10 at the start; two captions of one image in a batch are both
positives of that image).

Run (from the repo root):
  xmodal train --config=configs/clip/siglip_flickr8k.py --workdir=workdirs/siglip_flickr8k

Expected: docs/clip.md has the measured val table and the training time.

Peak RSS (measured, 2026-12-07, `GLIBC_TUNABLES=glibc.malloc.hugetlb=1 xmodal train
--config=configs/clip/siglip_flickr8k.py --workdir=W --config.train.num_steps=60 --config.train.checkpoint_every=60
--config.optimizer.warmup_steps=10 --config.evals.val.every=30`, 2-core CPU, whole run: data, compiles, training,
evaluations): 11.33 GB (GiB; /usr/bin/time %M).

Peak RSS (measured, 2026-12-07, `GLIBC_TUNABLES=glibc.malloc.hugetlb=1 xmodal train
--config=configs/clip/siglip_flickr8k.py --workdir=W --config.train.num_steps=60 --config.train.checkpoint_every=60
--config.optimizer.warmup_steps=10 --config.evals.val.every=30 --config.evals.val.batch_size=64`, 2-core CPU, whole
run: data, compiles, training, evaluations): 11.27 GB (GiB; /usr/bin/time %M).
Nearly all of it is evaluation at batch 500 through the whole Lite2 image tower at 260 px (only train is cached):
with val at batch 64 the peak after the step-30 val evaluation was 3.6 GB (same R@K, 114 s); the final
zero_shot_val, still at batch 500, brought it back to 11.3 GB. The fix is `common.evals(("val",), every=250,
batch_size=64)` in clip_flickr8k.py (not measured yet).
"""
import ml_collections

from xmodal_jax.config_files import load_beside

clip_flickr8k = load_beside(__file__, "clip_flickr8k.py")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return clip_flickr8k.get_config(arg, loss="sigmoid")
