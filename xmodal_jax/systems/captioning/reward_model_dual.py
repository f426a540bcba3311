"""S5's reward model over the library's pretrained dual encoder (task "s5_reward_model_dual_encoder"): a finished
`dual_encoder` run (EfficientNet-Lite + MiniLM WordPiece, configs/retrieval/vsepp_flickr8k_pretrained.py) fine-tuned
on its text side with a grammar head and / or attribute negatives (systems/captioning/reward_fine_tune.py: the
objective, the batches' text columns and the evaluation data, shared with the clip-based reward_model.py).

What trains, what stays: every parameter starts from the run in `config.init_from`. The whole image side (tower,
head conv included, and image projection; BatchNorm statistics) is frozen, so embed_image equals the base run's.
The text tower above the base config's text cut (model.text.cut), the text projection and the loss scalars train,
the text tower below the cut stays frozen, and a grammar head is added.

Training data (our choice): the image side being frozen, every train image's embedding is computed once with the
base run's embed_image (centre crop, flip-averaged when the config says so; what the reward gives a captioner's
image) and stored as a feature cache keyed by the frozen weights (config.cache: enabled, dir, batch_size; float32),
so a batch carries `image_emb` [b, D] and no pixels. The text side runs from raw WordPiece tokens, the frozen lower
layers included, for the caption, its grammar negative and its attribute-stripped copy (three MiniLM passes a step):
the negatives are new texts that no text cache holds, and MiniLM is small. Evaluation runs both whole towers on raw
inputs, as the dual encoder's does.

Predict functions: embed_image (uint8 [b, H, W, 3] -> unit [b, D]), embed_text (WordPiece tokens, mask [b, L] ->
unit [b, D]), grammar_score (tokens, mask -> g in [0, 1] [b]).
"""
from __future__ import annotations

import hashlib

import jax
import numpy as np
from flax import traverse_util

from xmodal_jax import errors
from xmodal_jax.data import feature_cache, sources
from xmodal_jax.data.iterator import EpochBatchIterator
from xmodal_jax.systems.captioning.reward_fine_tune import RewardFineTune
from xmodal_jax.systems.vse.dual_encoder_task import DualEncoderTask
from xmodal_jax.systems.vse.pretrained_dual_encoder import PretrainedDualEncoder
from xmodal_jax.train.task import with_frozen

_FROZEN = ("image_tower", "image_proj")


class DualEncoderRewardTask(RewardFineTune, DualEncoderTask):
  """See the module docstring."""
  BASE_TASK = "dual_encoder"

  def __init__(self, config, workdir):
    super().__init__(config, workdir)
    if config.model.image.train_bn:
      raise errors.ConfigError("config.model.image.train_bn=True: the reward model keeps the image side frozen; start "
                               "from a dual_encoder run with train_bn=False.")

  def setup(self, *, training: bool) -> None:
    if self.model is not None:
      return
    base = self.load_base(training=training)
    self.model = base.task.model
    # Every variable of the base run ({"params", "batch_stats"}); split below at this task's cuts.
    self._weights = jax.device_get(with_frozen(base.variables["params"], base.variables.get("frozen"),
                                               base.variables))
    if training:
      self.check_eval_splits()

  # ---- variables
  def _frozen_path(self, path: str) -> bool:
    """The whole image side, and the text tower below the cut."""
    return path.split("/")[0] in _FROZEN or super()._frozen_path(path)

  def init_variables(self, rng):
    params = dict(super().init_variables(rng)["params"], grammar_head=self.init_grammar_head(rng))
    return {"params": params}

  # ---- data
  def train_image_embeddings(self) -> np.ndarray:
    """float32 [N, D]: embed_image of every train image (centre crops), by the frozen image side."""
    cfg = self.config
    data = self.split("train")
    frozen = {k: v for k, v in self._weights.items() if k != "params"}
    variables = jax.device_put({"params": self._weights["params"], "frozen": frozen})
    apply = jax.jit(self.embed_image)

    def encode(split, rows, view):
      del split, view
      return np.asarray(apply(variables, data.load_images(rows, int(cfg.data.image_size))), np.float32)

    if not cfg.cache.enabled:
      rows = np.arange(len(data))
      step = int(cfg.cache.batch_size)
      return np.concatenate([encode("train", rows[i:i + step], 0) for i in range(0, len(rows), step)])
    key = {"side": "reward_image_emb", "source": sources.source_fingerprint(cfg.data), "split": "train",
           "image_size": cfg.data.image_size, "prepare_size": cfg.data.prepare_size,
           "flip_average": bool(cfg.model.image.get("flip_average", False)), "weights": self._image_fingerprint()}
    cache = feature_cache.ensure(key, {"train": feature_cache.SplitPlan(len(data), 1)}, encode,
                                 directory=cfg.cache.dir, dtype="float32", batch_size=int(cfg.cache.batch_size))
    return cache.read("train", np.arange(len(data)))

  def _image_fingerprint(self) -> str:
    """sha256 (16 hex digits) of the frozen image side's arrays (paths and bytes)."""
    digest = hashlib.sha256()
    for collection, tree in sorted(self._weights.items()):
      for path, value in sorted(traverse_util.flatten_dict(tree, sep="/").items()):
        if path.split("/")[0] in _FROZEN:
          digest.update(f"{collection}/{path}".encode())
          digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()[:16]

  def train_iterator(self, *, process_index, process_count):
    cfg = self.config
    # Both built here, before any loader thread runs.
    image_emb, text_columns = self.train_image_embeddings(), self.reward_text_loader()

    def load(indices, keys):
      return dict(text_columns(indices, keys), image_emb=image_emb[indices])

    return EpochBatchIterator(len(image_emb), cfg.train.batch_size, load, seed=cfg.seed, process_index=process_index,
                              process_count=process_count, num_threads=cfg.data.num_threads,
                              prefetch=cfg.data.prefetch)

  # ---- objective
  def loss_fn(self, params, batch, rng, ctx):
    del rng  # no dropout in the towers
    variables = with_frozen(params, ctx.frozen, ctx.model_state)
    embed_text = lambda t, m: self.model.apply(variables, t, m, method=PretrainedDualEncoder.encode_text)
    text = embed_text(batch["tokens"], batch["mask"])
    return self.reward_loss(params, batch["image_emb"], text, embed_text, batch, ctx)
