r"""CLIP from scratch on the built-in shapes world: a ViT (64 px, patch 8) and a causal text transformer trained with
InfoNCE and a learnable temperature over the global batch; R@K and zero-shot classification on val and test.

Run (from the repo root):
  xmodal train --config=configs/clip/clip_shapes.py --workdir=workdirs/clip_shapes
  xmodal train --config=configs/clip/clip_shapes.py --workdir=... --config.loss.kind=sigmoid    # SigLIP
  xmodal train --config=configs/clip/clip_shapes.py --workdir=... --config.loss.chunked=True \
      --config.mesh.shape='(8,1)'           # the ring form of the loss (needs 8 devices)
Variants: `:tiny` (seconds; tests).

Expected: see docs/clip.md for the measured table (acceptance bar: test image->text R@1 >= 80).

Peak RSS (measured, 2026-12-07, `GLIBC_TUNABLES=glibc.malloc.hugetlb=1 xmodal train
--config=configs/clip/clip_shapes.py --workdir=W --config.train.num_steps=20 --config.train.checkpoint_every=20
--config.optimizer.warmup_steps=5`, 2-core CPU, whole run: data, compiles, training, evaluations): 2.88 GB (GiB;
/usr/bin/time %M).
"""
import ml_collections

from configs.clip import common
from configs.variants import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, tiny=False)
  data = common.data("shapes", flip=False)  # no flips: captions say "left of" / "right of"
  config = common.clip_config(
      data, loss="infonce", embed_dim=128,
      image=common.vit(patch_size=8, width=128, depth=3, num_heads=4),
      text=common.text_transformer(width=128, depth=2, num_heads=4))
  config.train.update(batch_size=256, num_steps=2_000, checkpoint_every=500)
  config.optimizer.update(learning_rate=1e-3, warmup_steps=200)
  config.evals = common.evals(("val", "test"), every=500)
  if arg.tiny:
    config.data.update(num_train=256, num_val=64, num_test=64, max_len=40)
    config.model.update(embed_dim=32)
    config.model.image.update(width=32, depth=1, num_heads=2)
    config.model.text.update(width=32, depth=1, num_heads=2)
    config.train.update(batch_size=32, num_steps=4, log_every=2, checkpoint_every=2)
    config.optimizer.warmup_steps = 1
    config.evals = common.evals(("val", "test"), every=2, batch_size=32)
  return config
