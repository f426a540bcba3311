r"""S5's reward model on Flickr8k: the CLIP reward run's text side fine-tuned with a grammar head and / or colour and
background negatives (systems/captioning/reward_model.py).

  xmodal train --config=configs/captioning/reward_flickr8k.py:grammar --workdir=workdirs/s5_flickr8k_reward_grammar
  xmodal train --config=configs/captioning/reward_flickr8k.py:grammar_attribute \
      --workdir=workdirs/s5_flickr8k_reward_grammar_attribute
(after configs/captioning/clip_flickr8k.py:reward into workdirs/s5_flickr8k_clip).

Peak RSS (measured, 2026-12-07, 60-step runs (`--config.train.num_steps=60 --config.train.checkpoint_every=60
--config.evals.val.every=30`, warm-up 10 where the config has one) under `/usr/bin/time -f %M`, huge pages on,
2-core CPU shared with other jobs, initialised from the 60-step `clip_flickr8k.py:reward` run): `:grammar` 1.84 GiB,
`:grammar_attribute` 2.13 GiB.
"""
import ml_collections

from configs.captioning import clip_flickr8k, common
from configs.variants import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, grammar=False, attribute=False, aliases={"grammar_attribute": "grammar,attribute"})
  config = clip_flickr8k.get_config("reward")
  config.task = "s5_reward_model"
  config.init_from = "workdirs/s5_flickr8k_clip"
  config.reward_training = common.reward_training(grammar=arg.grammar, attribute=arg.attribute)
  config.train.update(num_steps=100, checkpoint_every=50)
  # The new grammar head learns 10x faster than the fine-tuned text side.
  config.optimizer.update(learning_rate=2e-4, groups=(("grammar_head/.*", 10.0),), warmup_steps=20)
  config.evals = clip_flickr8k.clip_common.evals(("val",), every=0, zero_shot=False)
  config.evals.reward_val = common.evaluator_config("s5_reward_model", split="val")
  return config
