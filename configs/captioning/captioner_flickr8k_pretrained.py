r"""S5 captioning on Flickr8k over the pretrained towers: the frozen EfficientNet-Lite2 grid (9 x 9 x 1280 at 260 px,
cached once per train image: the prepared data of the dual encoder) + a transformer decoder over MiniLM's WordPiece
vocabulary (token embeddings initialised from MiniLM's; outputs restricted to the pieces of the train captions), so
sampled captions are the pretrained dual encoder's text input as they are: [CLS] + the sampled row is what the
MiniLM tower reads. MLE, then SCST under the dual encoder's CLIP reward, CIDEr-D, or both.

Run (from the repo root; the reward, judge and grammar runs first):
  xmodal train --config=configs/retrieval/vsepp_flickr8k_pretrained.py --workdir=workdirs/f8k_pretrained
  xmodal train --config=configs/captioning/judge_flickr8k.py --workdir=workdirs/s5_flickr8k_judge
  xmodal train --config=configs/captioning/reward_flickr8k_pretrained.py:grammar \
      --workdir=workdirs/s5_flickr8k_reward_pretrained_grammar
  xmodal train --config=configs/captioning/captioner_flickr8k_pretrained.py --workdir=workdirs/s5_flickr8k_pretrained_mle
  xmodal train --config=configs/captioning/captioner_flickr8k_pretrained.py:scst_clip \
      --workdir=workdirs/s5_flickr8k_pretrained_scst_clip
  ... :scst_cider (CIDEr-D reward), :scst_mixed (CIDEr-D + lambda * CLIP), :scst_grammar (the reward with its
  grammar head), :scst_attribute (grammar head + colour / background negatives): --workdir=workdirs/s5_flickr8k_
  pretrained_<variant>. --config.seed=N for more seeds of the SCST rows.
Variants: "" (MLE), scst_clip, scst_cider, scst_mixed, scst_grammar, scst_attribute; tiny and tiny_scst (tests:
shapes world, EfficientNet-Lite0 at 64 px, a few steps; their reward is a run of vsepp_flickr8k_pretrained.py:tiny,
set by the test).

Lengths (measured, Flickr8k train, 30,000 captions, MiniLM word pieces without [CLS] / [SEP]): median 12, 95th
percentile 20, 99th 24, longest 40: data.max_len=24 pieces (1% of the captions cut), so [CLS] + 24 pieces + [SEP]
fits the dual encoder's max_len 32 uncut.

Reaches (Flickr8k val, 1,000 images, beam 3): BLEU-1..4, METEOR, CIDEr-D of the MLE run and the SCST rows: to be
measured. Peak RSS and wall time: to be measured.
"""
import ml_collections

from configs.captioning import common
from configs.retrieval import vsepp_flickr8k_pretrained
from configs.variants import parse_arg

MLE = "workdirs/s5_flickr8k_pretrained_mle"
REWARD = "workdirs/f8k_pretrained"                     # the pretrained dual encoder (val rsum 330.9)
GRAMMAR = "workdirs/s5_flickr8k_reward_pretrained_grammar"
# SCST variant -> (scst.reward, the reward model run).
_SCST = {"scst_clip": ("clip", REWARD), "scst_cider": ("cider", ""), "scst_mixed": ("cider+clip", REWARD),
         "scst_grammar": ("clip", GRAMMAR),
         "scst_attribute": ("clip", "workdirs/s5_flickr8k_reward_pretrained_grammar_attribute")}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, tiny=False, tiny_scst=False, **dict.fromkeys(_SCST, False))
  tiny = arg.tiny or arg.tiny_scst
  data = vsepp_flickr8k_pretrained.get_config("tiny" if tiny else None).data   # the dual encoder's images
  data.update(max_len=16 if tiny else 24)
  config = common.captioner_config(
      data, encoder="efficientnet", variant="efficientnet-lite0" if tiny else "efficientnet-lite2",
      decoder_fields=common.decoder(width=384, depth=3, num_heads=6, dropout_rate=0.2, init_embeddings="minilm"))
  config.model.output_vocab = "captions"
  # MLE needs no reward (data.tokenizer="wordpiece" builds MiniLM's tokenizer, the reward's); SCST sets it.
  config.scorers.update(judge="workdirs/s5_flickr8k_judge", clip=REWARD, grammar=GRAMMAR)
  config.decode.update(method="beam", beam_size=3, alpha=0.6)   # evaluation: beam 3, GNMT length penalty
  config.train.update(batch_size=64, num_steps=3_000, checkpoint_every=500)   # ~32 epochs of 6,000 images
  config.optimizer.update(learning_rate=5e-4, warmup_steps=300)
  config.evals = common.evals(("val",), every=500, batch_size=64, best_metric="cider_d")
  config.checkpoint.final_from = "best"
  for variant, (reward, workdir) in _SCST.items():
    if arg[variant]:
      common.scst(config, init_from=MLE, reward=workdir, num_steps=1_000, learning_rate=5e-5)
      config.scst.reward = reward   # the seed's greedy baseline, one sample per image (common.captioner_config)
      config.train.checkpoint_every = 250
      config.evals = common.evals(("val",), every=250, batch_size=64, best_metric="")
      config.checkpoint.final_from = "latest"
  if tiny:
    config.model.decoder.update(width=32, depth=1, num_heads=2, init_embeddings="")
    config.reward.workdir = ""  # tests set it and config.scorers
    config.scorers.update(judge="", clip="", grammar="")
    config.decode.update(method="greedy")
    config.cache.batch_size = 16
    config.train.update(batch_size=8, num_steps=2, log_every=1, checkpoint_every=2)
    config.optimizer.warmup_steps = 1
    config.evals = common.evals(("val",), every=2, batch_size=8, max_images=8)
    if arg.tiny_scst:
      common.scst(config, init_from="", reward="", num_steps=2, learning_rate=1e-4)
      config.scst.update(reward="clip", samples=2, baseline="greedy")
  return config

