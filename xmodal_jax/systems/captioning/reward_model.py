"""S5's reward model: a finished CLIP-style run (the `clip` task) fine-tuned on its text side with a grammar head
and / or attribute-specific negatives, then used frozen as the SCST reward (systems/captioning/captioner_task.py).

Starts from every parameter of the clip run in `init_from`; its image tower and image projection stay frozen (so the
reward's image embeddings do not move), the text tower, text projection and the loss scalars train, and a grammar
head (systems/captioning/grammar_head.py) is added. The objective, the training batches' text columns and the
evaluation data are shared with the reward over a pretrained dual encoder (reward_model_dual.py):
systems/captioning/reward_fine_tune.py. Here the images of a batch run through the frozen ViT at each step.
Predict functions: embed_image, embed_text (as the clip task), grammar_score (tokens, mask -> g in [0, 1]).
"""
from __future__ import annotations

import jax

from xmodal_jax.data.iterator import EpochBatchIterator
from xmodal_jax.systems.captioning.reward_fine_tune import RewardFineTune
from xmodal_jax.systems.clip.clip_task import ClipTask, build_model

_FROZEN = ("image_tower", "image_proj")


class RewardModelTask(RewardFineTune, ClipTask):
  """See the module docstring."""
  BASE_TASK = "clip"

  def __init__(self, config, workdir):
    super().__init__(config, workdir)
    self._base: dict | None = None

  def setup(self, *, training: bool) -> None:
    if self.model is not None:
      return
    base = self.load_base(training=training)
    self.model = build_model(self.config, len(self.tokenizer))
    self._base = jax.device_get(base.variables["params"])
    if training:
      self.check_eval_splits()

  # ---- variables
  def init_variables(self, rng):
    params = dict(self.model.init(rng, *self._dummy_inputs())["params"])
    for name in _FROZEN:
      params.pop(name)
    params["grammar_head"] = self.init_grammar_head(rng)
    return {"params": params}

  def frozen_params(self):
    return {"params": {k: self._base[k] for k in _FROZEN}}

  def pretrained_params(self):
    return {k: v for k, v in self._base.items() if k not in _FROZEN}

  # ---- data
  def train_iterator(self, *, process_index, process_count):
    cfg = self.config
    data, text_columns = self.split("train"), self.reward_text_loader()

    def load(indices, keys):
      images = data.load_images(indices, int(cfg.data.image_size), keys=keys, flip=bool(cfg.data.flip))
      return dict(text_columns(indices, keys), images=images)

    return EpochBatchIterator(len(data), cfg.train.batch_size, load, seed=cfg.seed, process_index=process_index,
                              process_count=process_count, num_threads=cfg.data.num_threads,
                              prefetch=cfg.data.prefetch)

  # ---- objective
  def loss_fn(self, params, batch, rng, ctx):
    variables = self._variables(params, ctx.frozen)
    image, text = self._embed(variables, batch, rng, deterministic=False)
    embed_text = lambda t, m: self.model.apply(variables, t, m, deterministic=True, method=type(self.model).encode_text)
    return self.reward_loss(params, jax.lax.stop_gradient(image), text, embed_text, batch, ctx)
