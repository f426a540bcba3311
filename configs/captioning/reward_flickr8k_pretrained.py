r"""S5's reward model on Flickr8k over the library's pretrained dual encoder (EfficientNet-Lite2 + MiniLM WordPiece,
configs/retrieval/vsepp_flickr8k_pretrained.py, val rsum 330.9): its text side above the text cut fine-tuned with a
grammar head and / or colour and background negatives, the image side frozen
(systems/captioning/reward_model_dual.py, task s5_reward_model_dual_encoder).

  xmodal train --config=configs/retrieval/vsepp_flickr8k_pretrained.py --workdir=workdirs/f8k_pretrained
  xmodal train --config=configs/captioning/reward_flickr8k_pretrained.py:grammar \
      --workdir=workdirs/s5_flickr8k_reward_pretrained_grammar
  xmodal train --config=configs/captioning/reward_flickr8k_pretrained.py:grammar_attribute \
      --workdir=workdirs/s5_flickr8k_reward_pretrained_grammar_attribute
(--config.init_from names another dual_encoder run; it must come from the same config file, as the model section
must match.) Variants: grammar | attribute | grammar_attribute, and tiny (tests: shapes world, from a run of
vsepp_flickr8k_pretrained.py:tiny in config.init_from; trains both).

The first run embeds every train image once with the frozen image side (a feature cache keyed by its weights),
then each step runs MiniLM on three texts per row (caption, grammar negative, stripped copy).

Measured (2026-12-08, 2-core CPU shared with other jobs, :grammar_attribute from workdirs/f8k_pretrained, a 3-step
smoke run at batch 32, `--config.train.num_steps=3 --config.train.batch_size=32 --config.evals.val.every=0` under
`/usr/bin/time -f %M`): image-embedding cache 677 s (6,000 train images, once per base run), ~2 s a step at batch 32
after a 14 s first step, evaluations 344 s; val rsum 329.9 (the base run's 330.9), attribute accuracy 79.8%, grammar
accuracy 51.7% (head barely trained); peak RSS 2.9 GiB. The 200-step schedule below is not yet run (issue 31);
at batch 256 expect about an hour on that CPU.
"""
import ml_collections

from configs.captioning import common
from configs.retrieval import common as retrieval_common
from configs.retrieval import vsepp_flickr8k_pretrained
from configs.variants import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  # :tiny trains both (tests).
  arg = parse_arg(arg, grammar=False, attribute=False, tiny=False, aliases={"grammar_attribute": "grammar,attribute"})
  tiny = arg.tiny
  config = vsepp_flickr8k_pretrained.get_config("tiny" if tiny else None)
  config.task = "s5_reward_model_dual_encoder"
  config.init_from = "workdirs/f8k_pretrained"
  config.reward_training = common.reward_training(grammar=arg.grammar or tiny, attribute=arg.attribute or tiny)
  config.train.update(batch_size=16 if tiny else 256, num_steps=2 if tiny else 200,
                      checkpoint_every=2 if tiny else 100)
  # The new grammar head learns 10x faster than the projection, the fine-tuned MiniLM layers 3x slower.
  config.optimizer.update(learning_rate=1e-4, warmup_steps=1 if tiny else 20,
                          groups=(("text_tower/.*", 0.3), ("grammar_head/.*", 10.0)))
  config.checkpoint.final_from = "latest"
  config.evals = retrieval_common.retrieval_evals(("val",), every=0 if tiny else 100, fold_size=0,
                                                  batch_size=16 if tiny else 64)
  config.evals.reward_val = common.evaluator_config("s5_reward_model", split="val", batch_size=16 if tiny else 64)
  return config
