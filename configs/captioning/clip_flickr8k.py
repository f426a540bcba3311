r"""The two-tower models of S5 on Flickr8k: the SCST reward model and an independent judge, both CLIP-style runs of
the `clip` task from scratch (a ViT on 64 px crops and a text transformer over the word vocabulary the captioner
shares), so the reward's text tower reads the captioner's tokens as they are.

  xmodal train --config=configs/captioning/clip_flickr8k.py:reward --workdir=workdirs/s5_flickr8k_clip
  xmodal train --config=configs/captioning/clip_flickr8k.py:judge --workdir=workdirs/s5_flickr8k_judge
  ... --config.data.source=folder:/path/to/flickr8k   (default ../shared/data/flickr8k, read at run time)

"reward": InfoNCE, ViT patch 8 width 192 depth 4, causal text tower width 192 depth 3; "judge": another seed, the
sigmoid loss, ViT patch 16 on 96 px, a bidirectional mean-pooled text tower. From scratch on 6,091 images these
are weak retrieval models (docs/captioning.md gives their R@K): the pretrained LiT runs of configs/clip/
cannot be the reward, their MiniLM WordPiece text tower does not read the captioner's word tokens.

Peak RSS (measured, 2026-12-07, 60-step runs (`--config.train.num_steps=60 --config.train.checkpoint_every=60
--config.evals.val.every=30`, warm-up 10 where the config has one) under `/usr/bin/time -f %M`, huge pages on,
2-core CPU shared with other jobs): `:reward` 2.49 GiB, `:judge` 1.89 GiB.
"""
import ml_collections

from configs.clip import common as clip_common
from configs.variants import parse_arg

SOURCE = "folder:../shared/data/flickr8k"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, reward=False, judge=False)
  if arg.reward == arg.judge:
    raise ValueError("configs/captioning/clip_flickr8k.py: name one model, :reward or :judge.")
  judge = arg.judge
  data = clip_common.data(SOURCE, image_size=96 if judge else 64, prepare_size=112 if judge else 72, flip=True,
                          max_len=32, vocab_min_count=5)
  if judge:
    config = clip_common.clip_config(
        data, loss="sigmoid", embed_dim=128,
        image=clip_common.vit(patch_size=16, width=160, depth=4, num_heads=4),
        text=clip_common.text_transformer(width=128, depth=2, num_heads=4, causal=False, pool="mean"))
    config.seed = 1
  else:
    config = clip_common.clip_config(
        data, loss="infonce", embed_dim=192,
        image=clip_common.vit(patch_size=8, width=192, depth=4, num_heads=3),
        text=clip_common.text_transformer(width=192, depth=3, num_heads=3))
  # 700 steps (~15 epochs; the judge 500) to fit a 2-core CPU session; more steps make stronger scorers.
  config.train.update(batch_size=128, num_steps=500 if judge else 700, checkpoint_every=250 if judge else 350)
  config.optimizer.update(learning_rate=1e-3, warmup_steps=100, weight_decay=0.1)
  config.evals = clip_common.evals(("val",), every=250 if judge else 350, zero_shot=False)
  return config
