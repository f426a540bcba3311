r"""S1, the multimodal image classifier, on real photos: Flickr8k (6,091 train / 1,000 val images x 5 captions).

Flickr8k has neither search queries nor classes, so both come from the captions by documented rules:
queries = n-grams (1-3 words, no stopword at either end) found in >= 20 train images (systems/classifier/query_mining.py;
~1,200 queries), labels = the first of 9 concepts (dog, snow, water, bike, skateboard, ball sport, child,
woman, man) named by >= 3 of an image's 5 captions, else unlabelled (data/taxonomy.py; ~11% unlabelled).

Run (from the repo root; the data folder is read at run time, never copied; prepared once into
~/.cache/xmodal_jax/prepared/):
  xmodal train --config=configs/s1/flickr8k.py --workdir=workdirs/s1_flickr8k \
      [--config.data.source=folder:/path/to/flickr8k]
  xmodal classify --workdir=workdirs/s1_flickr8k photo.jpg

Pixel embedding: the frozen ImageNet EfficientNet-Lite0 on its own 224-px copy of the images (prepared once)
+ a 1024-d bottleneck; the generator, text embedding and pixel embedding are cross-fitted over 2 folds (the
fusion head sees only out-of-sample features).

Expected (2-core CPU, ~15 min): val accuracy (892 labelled images, 9 classes) pixel-only ~74%, text-only ~29%,
fusion ~73% (3 seeds: fusion - pixel-only -0.9 +- 0.9), against 26.8% for the majority class; docs/classifier.md has
the tables and the class distribution.

Peak RSS (measured, 2026-12-07, `xmodal train --config=configs/s1/flickr8k.py --workdir=W` with every stage at 60
steps, checkpoint at 60, warm-up 10, val every 30 (`--config.stages.<stage>.train.num_steps=60` etc.) under
`/usr/bin/time -f %M`, huge pages on, 2-core CPU shared with other jobs; whole pipeline 1637 s): 6.14 GiB.
"""
import ml_collections

from configs.s1 import common
from configs.variants import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  parse_arg(arg)  # no variants
  config = common.s1("folder:../shared/data/flickr8k", eval_splits=("val",))
  config.data.update(image_size=64, prepare_size=80, flip=True)
  for name in ("text_generator", "pixel_embedding"):
    config.stages[name].train.update(num_steps=1_000, checkpoint_every=500)
    config.stages[name].evals.val.every = 500
    config.stages[name].optimizer.update(learning_rate=1e-3, weight_decay=5e-4)
  config.stages.text_generator.loss.num_samples = 256  # of ~1,200 queries
  config.stages.pixel_embedding.model.input_size = 224  # the pretrained tower reads its own 224-px copy
  return config
