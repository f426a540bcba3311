r"""S5 captioning on the built-in shapes world: a small ResNet from scratch + a transformer decoder, trained by MLE,
then by SCST under the CLIP reward, the reward with its grammar head, and with attribute negatives.

Run in order (from the repo root; docs/captioning.md has the table these give):
  xmodal train --config=configs/captioning/clip_shapes.py:reward --workdir=workdirs/s5_shapes_clip
  xmodal train --config=configs/captioning/clip_shapes.py:judge --workdir=workdirs/s5_shapes_judge
  xmodal train --config=configs/captioning/reward_shapes.py:grammar --workdir=workdirs/s5_shapes_reward_grammar
  xmodal train --config=configs/captioning/reward_shapes.py:grammar_attribute \
      --workdir=workdirs/s5_shapes_reward_grammar_attribute
  xmodal train --config=configs/captioning/captioner_shapes.py --workdir=workdirs/s5_shapes_mle
  xmodal train --config=configs/captioning/captioner_shapes.py:scst --workdir=workdirs/s5_shapes_scst
  xmodal train --config=configs/captioning/captioner_shapes.py:scst_grammar --workdir=workdirs/s5_shapes_scst_grammar
  xmodal train --config=configs/captioning/captioner_shapes.py:scst_attribute \
      --workdir=workdirs/s5_shapes_scst_attribute
Other workdirs: --config.init_from / --config.reward.workdir / --config.scorers.{judge,clip,grammar}.
Variants: "" (MLE), scst, scst_grammar, scst_attribute; tiny and tiny_scst (tests, seconds).
Options: --config.model.decoder.kind=gru (the CNN+RNN captioner), --config.model.encoder.kind=vit,
--config.scst.samples=5 --config.scst.baseline=leave_one_out, --config.decode.method=beam.

Peak RSS (measured, 2026-12-07, 60-step runs (`--config.train.num_steps=60 --config.train.checkpoint_every=60
--config.evals.val.every=30`, warm-up 10 where the config has one) under `/usr/bin/time -f %M`, huge pages on,
2-core CPU shared with other jobs, with the 60-step clip, judge and reward runs as reward and scorers): MLE 2.68
GiB, `:scst` 2.57 GiB, `:scst_grammar` 2.50 GiB, `:scst_attribute` 2.56 GiB.
"""
import ml_collections

from configs.captioning import common
from configs.variants import parse_arg
from xmodal_jax.data.config import caption_fields, data_config

# The SCST variants and the reward model run each trains under.
_REWARDS = {"scst": "workdirs/s5_shapes_clip", "scst_grammar": "workdirs/s5_shapes_reward_grammar",
            "scst_attribute": "workdirs/s5_shapes_reward_grammar_attribute"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, tiny=False, tiny_scst=False, **dict.fromkeys(_REWARDS, False))
  data = data_config("shapes", **dict(caption_fields(), label_min_votes=3))
  config = common.captioner_config(data, encoder="cnn", decoder_fields=common.decoder(width=192, depth=2,
                                                                                      num_heads=4))
  config.reward.workdir = "workdirs/s5_shapes_clip"    # its tokenizer is the captioner's
  config.scorers.update(judge="workdirs/s5_shapes_judge", clip="workdirs/s5_shapes_clip",
                        grammar="workdirs/s5_shapes_reward_grammar")
  config.train.update(batch_size=128, num_steps=1_000, checkpoint_every=500)  # ~4 epochs: sized for a 2-core CPU
  config.evals = common.evals(("val", "test"), every=500)
  for variant, reward in _REWARDS.items():
    if arg[variant]:
      common.scst(config, init_from="workdirs/s5_shapes_mle", reward=reward, num_steps=150, learning_rate=1e-4)
      config.train.checkpoint_every = 200
      config.evals = common.evals(("val", "test"), every=0)  # at the end
  if arg.tiny or arg.tiny_scst:
    config.data.update(num_train=256, num_val=64, num_test=64)  # the sizes of the tiny clip runs (scorers)
    config.model.encoder.cnn.update(stage_widths=(8, 16), blocks_per_stage=(1, 1), stem_width=8, norm_groups=4)
    config.model.decoder.update(width=32, depth=1, num_heads=2)
    config.reward.workdir = ""  # tests set it and config.scorers
    config.scorers.update(judge="", clip="", grammar="")
    config.train.update(batch_size=16, num_steps=4, log_every=2, checkpoint_every=2)
    config.optimizer.warmup_steps = 1
    config.evals = common.evals(("val",), every=2, batch_size=16, max_images=16)
    if arg.tiny_scst:
      common.scst(config, init_from="", reward="", num_steps=4, learning_rate=1e-4)
  return config
