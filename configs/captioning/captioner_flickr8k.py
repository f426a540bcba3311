r"""S5 captioning on Flickr8k: the frozen ImageNet EfficientNet-Lite0 grid (7 x 7 x 1280 at 224 px, computed once per
train image and cached) + a transformer decoder, trained by MLE, then by SCST under the CLIP reward, the reward
with its grammar head, and with colour / background negatives. Figures on the val split (1,000 images).

Run in order (or `bash launch/s5_pipeline.sh flickr8k`):
  xmodal train --config=configs/captioning/clip_flickr8k.py:reward --workdir=workdirs/s5_flickr8k_clip
  xmodal train --config=configs/captioning/clip_flickr8k.py:judge --workdir=workdirs/s5_flickr8k_judge
  xmodal train --config=configs/captioning/reward_flickr8k.py:grammar --workdir=workdirs/s5_flickr8k_reward_grammar
  xmodal train --config=configs/captioning/reward_flickr8k.py:grammar_attribute \
      --workdir=workdirs/s5_flickr8k_reward_grammar_attribute
  xmodal train --config=configs/captioning/captioner_flickr8k.py --workdir=workdirs/s5_flickr8k_mle
  xmodal train --config=configs/captioning/captioner_flickr8k.py:scst --workdir=workdirs/s5_flickr8k_scst
  ... :scst_grammar --workdir=workdirs/s5_flickr8k_scst_grammar; :scst_attribute --workdir=workdirs/s5_flickr8k_scst_attribute
Expected: docs/captioning.md.

Peak RSS (measured, 2026-12-07, 60-step runs (`--config.train.num_steps=60 --config.train.checkpoint_every=60
--config.evals.val.every=30`, warm-up 10 where the config has one) under `/usr/bin/time -f %M`, huge pages on,
2-core CPU shared with other jobs, with the 60-step clip, judge and reward runs as reward and scorers): MLE 4.01
GiB, `:scst` 3.98 GiB, `:scst_grammar` 3.93 GiB, `:scst_attribute` 3.94 GiB.
"""
import ml_collections

from configs.captioning import clip_flickr8k, common
from configs.variants import parse_arg
from xmodal_jax.data.config import caption_fields, data_config

# The SCST variants and the reward model run each trains under.
_REWARDS = {"scst": "workdirs/s5_flickr8k_clip", "scst_grammar": "workdirs/s5_flickr8k_reward_grammar",
            "scst_attribute": "workdirs/s5_flickr8k_reward_grammar_attribute"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, **dict.fromkeys(_REWARDS, False))
  data = data_config(clip_flickr8k.SOURCE, **dict(caption_fields(), image_size=224, prepare_size=224, max_len=24))
  config = common.captioner_config(data, encoder="efficientnet",
                                   decoder_fields=common.decoder(width=256, depth=2, num_heads=4, dropout_rate=0.2))
  config.reward.workdir = "workdirs/s5_flickr8k_clip"    # its tokenizer is the captioner's
  config.scorers.update(judge="workdirs/s5_flickr8k_judge", clip="workdirs/s5_flickr8k_clip",
                        grammar="workdirs/s5_flickr8k_reward_grammar")
  config.train.update(batch_size=64, num_steps=800, checkpoint_every=400)  # ~8 epochs; sized for a 2-core CPU
  config.optimizer.update(learning_rate=5e-4)
  config.evals = common.evals(("val",), every=400, best_metric="cider_d")
  config.checkpoint.final_from = "best"
  for variant, reward in _REWARDS.items():
    if arg[variant]:
      common.scst(config, init_from="workdirs/s5_flickr8k_mle", reward=reward, num_steps=100, learning_rate=5e-5)
      config.train.checkpoint_every = 50
      config.evals = common.evals(("val",), every=0)  # at the end
      config.checkpoint.final_from = "latest"
  return config
