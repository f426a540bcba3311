r"""VSE++ image<->text retrieval on the built-in shapes world (the library's default main job).

Run (from the repo root):
  xmodal train --config=configs/retrieval/vsepp_shapes.py --workdir=workdirs/vsepp_shapes
  xmodal eval  --config=configs/retrieval/vsepp_shapes.py --workdir=workdirs/vsepp_shapes --split=test
Variants: `--config=configs/retrieval/vsepp_shapes.py:tiny` (seconds; used by tests and benchmarks).
Any field can be overridden, e.g. `--config.train.batch_size=64 --config.mesh.shape='(2,4)'`.

Expected (2-core CPU, default variant, 2,000 steps, ~6 min of training): test split (1,000 images,
5,000 captions) image->text R@1 ~87%, text->image R@1 ~68% (acceptance bar: image->text R@1 >= 50%);
docs/vse.md has the measured table.

Peak RSS (measured, 2026-12-07, `GLIBC_TUNABLES=glibc.malloc.hugetlb=1 xmodal train
--config=configs/retrieval/vsepp_shapes.py --workdir=W --config.train.num_steps=20
--config.train.checkpoint_every=20`, 2-core CPU, whole run: data, compiles, training, evaluations): 1.77 GB (GiB;
/usr/bin/time %M).
"""
import ml_collections

from configs.retrieval import common
from configs.variants import parse_arg
from xmodal_jax.train.defaults import trainer_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, tiny=False)
  config = trainer_config()
  config.task = "vsepp"
  config.data = common.data("shapes", flip=False)  # no flips: captions say "left of" / "right of"
  config.model = common.vsepp_model()
  config.loss = common.hinge_loss()
  config.evals = common.retrieval_evals(("val", "test"), every=500)  # val picks the best checkpoint (rsum)
  if arg.tiny:
    config.data.update(num_train=256, num_val=64, num_test=64)
    config.model.embed_dim = 32
    config.model.image.update(stem_width=8, stage_widths=(8, 16), blocks_per_stage=(1, 1), norm_groups=4)
    config.model.text.update(embed_dim=16, hidden_dim=32)
    config.train.update(batch_size=32, num_steps=6, log_every=2, checkpoint_every=2)
    config.optimizer.warmup_steps = 2
    config.loss.max_violation_warmup_steps = 2
    for entry in config.evals.values():
      entry.batch_size = 32
    config.evals.val.every = 3
  return config
