r"""VSE++ image<->text retrieval on the built-in shapes world (the library's default main job).

Run (from the repo root):
  xmodal train --config=configs/vsepp_shapes.py --workdir=workdirs/vsepp_shapes
  xmodal eval  --config=configs/vsepp_shapes.py --workdir=workdirs/vsepp_shapes --split=test
Variants: `--config=configs/vsepp_shapes.py:tiny` (seconds; used by tests and benchmarks).
Any field can be overridden, e.g. `--config.train.batch_size=64 --config.mesh.shape='(2,4)'`.

Expected (2-core CPU, default variant, 2,000 steps, ~11 min of training): test split (1,000 images,
5,000 captions) image->text R@1 ~87%, text->image R@1 ~67% (acceptance bar: image->text R@1 >= 50%);
README.md has the measured table.
"""
import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = "vsepp"
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.source = "shapes"
  config.data.seed = 0            # shapes-world generator seed (fixed splits)
  config.data.image_size = 64
  config.data.num_train = 30_000
  config.data.num_val = 1_000
  config.data.num_test = 1_000
  config.data.max_len = 40        # tokens; longer captions are cut (with a warning and a count)
  config.data.vocab_min_count = 1

  config.model = ml_collections.ConfigDict()
  config.model.dtype = "float32"
  config.model.embed_dim = 256
  config.model.image = ml_collections.ConfigDict(dict(
      stem_width=32, stem_stride=4, stage_widths=(32, 64, 128), blocks_per_stage=(1, 1, 1),
      norm_groups=8))
  config.model.text = ml_collections.ConfigDict(dict(embed_dim=128, hidden_dim=256, pooling="last"))

  config.loss = ml_collections.ConfigDict()
  config.loss.margin = 0.2
  config.loss.max_violation = True
  config.loss.max_violation_warmup_steps = 300   # sum-of-hinges first (VSE++ notes max-violation from scratch can stall)

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 2e-3
  config.optimizer.schedule = "cosine"
  config.optimizer.warmup_steps = 200
  config.optimizer.weight_decay = 1e-4
  config.optimizer.grad_clip_norm = 2.0
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.momentum = 0.9

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 128   # global batch
  config.train.num_steps = 2_000
  config.train.log_every = 50
  config.train.eval_every = 500
  config.train.checkpoint_every = 500
  config.train.profile_steps = 0  # >0: write a profiler trace of that many steps to the workdir

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 500
  config.eval.fold_size = 1_000   # also report the mean over 1K-image folds when a split is larger

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.max_to_keep = 2
  config.checkpoint.best_metric = "val/rsum"
  config.checkpoint.best_mode = "max"
  config.checkpoint.use_async = True

  config.mesh = ml_collections.ConfigDict()
  config.mesh.shape = (-1, 1)     # (data, model); -1 = all remaining devices
  config.mesh.fsdp = False        # also shard params over `data`

  if arg == "tiny":
    config.data.num_train, config.data.num_val, config.data.num_test = 256, 64, 64
    config.model.embed_dim = 32
    config.model.image.update(stem_width=8, stage_widths=(8, 16), blocks_per_stage=(1, 1), norm_groups=4)
    config.model.text.update(embed_dim=16, hidden_dim=32)
    config.train.update(batch_size=32, num_steps=6, log_every=2, eval_every=3, checkpoint_every=2)
    config.optimizer.warmup_steps = 2
    config.loss.max_violation_warmup_steps = 2
    config.eval.batch_size = 32
  elif arg not in (None, ""):
    raise ValueError(f"configs/vsepp_shapes.py: unknown variant {arg!r}; use no variant or ':tiny'.")
  return config
