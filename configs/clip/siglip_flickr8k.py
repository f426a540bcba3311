r"""LiT on Flickr8k with SigLIP's loss (Zhai et al. 2023): configs/clip/clip_flickr8k.py with config.loss.kind="sigmoid"
(learnable temperature t' = log 10 and bias -10 at the start; two captions of one image in a batch are both
positives of that image).

Run (from the repo root):
  xmodal train --config=configs/clip/siglip_flickr8k.py --workdir=workdirs/siglip_flickr8k

Expected: docs/clip.md has the measured val table and the training time.
"""
import ml_collections

from xmodal_jax.config_files import load_beside

clip_flickr8k = load_beside(__file__, "clip_flickr8k.py")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return clip_flickr8k.get_config(arg, loss="sigmoid")
