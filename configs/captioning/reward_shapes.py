r"""S5's reward model on the shapes world: the CLIP reward run's text side fine-tuned with a grammar head and / or
attribute-specific negatives (systems/captioning/reward_model.py).

  xmodal train --config=configs/captioning/reward_shapes.py:grammar --workdir=workdirs/s5_shapes_reward_grammar
  xmodal train --config=configs/captioning/reward_shapes.py:grammar_attribute \
      --workdir=workdirs/s5_shapes_reward_grammar_attribute
(after configs/captioning/clip_shapes.py:reward into workdirs/s5_shapes_clip; --config.init_from names another run).
Variants: grammar | attribute | grammar_attribute, and tiny (tests: from the tiny clip run in config.init_from).
Expected: docs/captioning.md (grammar accuracy on held-out corruptions, retrieval kept).

Peak RSS (measured, 2026-12-07, 60-step runs (`--config.train.num_steps=60 --config.train.checkpoint_every=60
--config.evals.val.every=30`, warm-up 10 where the config has one) under `/usr/bin/time -f %M`, huge pages on,
2-core CPU shared with other jobs, initialised from the 60-step `clip_shapes.py:reward` run): `:grammar` 2.27 GiB,
`:grammar_attribute` 2.70 GiB.
"""
import ml_collections

from configs.captioning import clip_shapes, common
from configs.variants import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  # :tiny trains both (tests).
  arg = parse_arg(arg, grammar=False, attribute=False, tiny=False, aliases={"grammar_attribute": "grammar,attribute"})
  tiny = arg.tiny
  config = clip_shapes.get_config("tiny" if tiny else "reward")
  config.task = "s5_reward_model"
  config.init_from = "workdirs/s5_shapes_clip"
  config.reward_training = common.reward_training(grammar=arg.grammar or tiny, attribute=arg.attribute or tiny)
  config.train.update(num_steps=4 if tiny else 400, checkpoint_every=2 if tiny else 200)
  # The new grammar head learns 10x faster than the fine-tuned text side.
  config.optimizer.update(learning_rate=2e-4, groups=(("grammar_head/.*", 10.0),), warmup_steps=1 if tiny else 50)
  config.evals = clip_shapes.clip_common.evals(("val",), every=2 if tiny else 200, zero_shot=False,
                                               batch_size=32 if tiny else 500)
  config.evals.reward_val = common.evaluator_config("s5_reward_model", split="val", batch_size=32 if tiny else 500)
  return config
