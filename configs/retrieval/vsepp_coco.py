r"""VSE++ on MS-COCO with Karpathy's splits (113K train images incl. restval; val and test 5,000 images each):
R@K on the 5K test images and the mean over its five 1K folds (the "COCO 1K" protocol). For accelerators.

Run once per worker of a Cloud TPU VM (see docs/real-data.md "COCO and Flickr30K on a Cloud TPU VM"):
  xmodal prepare --source=karpathy:$DATA/dataset_coco.json:$COCO --image_size=256 --out=$PREP/coco
  xmodal train --multihost --config=configs/retrieval/vsepp_coco.py --workdir=gs://BUCKET/runs/coco \
      --config.data.source=karpathy:$DATA/dataset_coco.json:$COCO --config.data.prepared_dir=$PREP/coco
Flickr30K: the same with dataset_flickr30k.json and --config.evals.test.fold_size=0 (its test split is 1K).

Not run here (neither COCO nor an accelerator is available on this machine): no measured figures yet, peak RSS
included (the 8 GB bound of every shipped config is unchecked for this one; the same VSE++ task measured 1.61 GiB
on Flickr8k, configs/retrieval/vsepp_flickr8k.py).
Anchor, VSE++ (Faghri et al. 2018, ResNet-152 fine-tuned, COCO 1K): image->text R@1 64.6, text->image 52.0.
"""
import ml_collections

from configs.retrieval import common
from configs.variants import parse_arg
from xmodal_jax.train.defaults import trainer_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  parse_arg(arg)  # no variants
  config = trainer_config()
  config.task = "vsepp"
  config.data = common.data("karpathy:dataset_coco.json:coco_images", image_size=224, prepare_size=256, flip=True,
                            vocab_min_count=4, max_len=48)
  config.model = common.vsepp_model()
  config.model.update(embed_dim=1024, dtype="bfloat16")
  config.model.image.update(stem_width=64, stem_stride=2, stage_widths=(64, 128, 256, 512),
                            blocks_per_stage=(3, 4, 6, 3), norm_groups=32)  # ResNet-34's depth, basic blocks
  config.model.text.update(embed_dim=300, hidden_dim=1024)
  config.loss = common.hinge_loss()
  config.loss.max_violation_warmup_steps = 2_000
  config.train.update(batch_size=128, num_steps=60_000, checkpoint_every=2_000)
  config.optimizer.update(learning_rate=2e-4, warmup_steps=1_000)
  config.evals = common.retrieval_evals(("val", "test"), every=2_000, fold_size=1_000)
  return config
