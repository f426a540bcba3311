"""S5's reward model: a finished CLIP-style run (the `clip` task) fine-tuned on its text side with a grammar head
and / or attribute-specific negatives, then used frozen as the SCST reward (systems/captioning/captioner_task.py).

Starts from every parameter of the clip run in `init_from`; its image tower and image projection stay frozen (so the
reward's image embeddings do not move), the text tower, text projection and the loss scalars train, and a grammar
head (systems/captioning/grammar_head.py) is added. Per batch row (one image, one of its captions):

* grammar (seed): the caption is a positive, a corrupted copy of it (systems/captioning/caption_corruption.py: a repeated,
  removed, inserted, swapped or shuffled word or n-gram; never equal to a real train caption) a negative; binary
  cross-entropy on g's logits, weighted by `reward_training.grammar_weight`. `reward_training.contrastive_weight`
  keeps the contrastive loss of config.loss on the (image, caption) pairs beside it (the seed's "binary loss + the
  contrastive loss"; 0 = the classification loss only, the text tower then drifts freely).
* attribute negatives (seed): rows are drawn among the image's captions that name a colour or background word when
  it has any; the same caption with those words removed (data/caption_corruption.strip_attributes) is a negative for
  the image: L_attr = softplus(s * (cos(I, c_stripped) - cos(I, c))) (a logistic ranking loss with the model's
  logit scale s), averaged over rows that have one, weighted by `reward_training.attribute_weight`. Our reading of
  "fine-tune the reward model's text side on them so the reward favours attribute words".

The positives of the grammar head are the human captions themselves; "captions whose g is at or above a threshold"
(the seed) is how the head is read at use: g(c) >= 0.5 counts as grammatical (evaluation/captioning.py).
Predict functions: embed_image, embed_text (as the clip task), grammar_score (tokens, mask -> g in [0, 1]).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xmodal_jax import errors, fileio
from xmodal_jax.data import tokenizers
from xmodal_jax.data.iterator import EpochBatchIterator
from xmodal_jax.evaluation.evaluator import EvalData
from xmodal_jax.systems.captioning import caption_corruption
from xmodal_jax.systems.captioning import evaluators  # pylint: disable=unused-import  (registers "s5_reward_model")
from xmodal_jax.systems.captioning.grammar_head import GrammarHead
from xmodal_jax.systems.captioning.scorers import has_words, same_tokenizer
from xmodal_jax.systems.clip.clip_task import ClipTask, build_model

_FROZEN = ("image_tower", "image_proj")


class RewardModelTask(ClipTask):
  """See the module docstring."""

  def __init__(self, config, workdir):
    super().__init__(config, workdir)
    if not config.init_from:
      raise errors.ConfigError("config.init_from must name a finished `clip` run (its towers are fine-tuned here).")
    rt = config.reward_training
    if not (rt.grammar or rt.attribute):
      raise errors.ConfigError("config.reward_training: set grammar=True and / or attribute=True (nothing to train).")
    self.grammar_head = GrammarHead(int(rt.grammar_hidden))
    self._base: dict | None = None
    self._predict = dict(self._predict, grammar_score=self.grammar_score)

  def setup(self, *, training: bool) -> None:
    if self.model is not None:
      return
    from xmodal_jax import systems  # pylint: disable=import-outside-toplevel  (the registry, to load another run)
    base_dir = str(self.config.init_from)
    try:
      base = systems.load_run(base_dir, mesh_shape=tuple(self.config.mesh.shape))
    except FileNotFoundError as e:
      raise errors.MissingError(f"config.init_from={base_dir!r}: {e}") from None
    if base.task.config.task != "clip":
      raise errors.ConfigError(f"config.init_from={base_dir!r} is a {base.task.config.task!r} run; use a clip run.")
    ours, theirs = self.config.model.to_dict(), base.task.config.model.to_dict()
    if ours != theirs:
      diff = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
      raise errors.ConfigError(f"config.model differs from the clip run {base_dir} in {diff}; build this config from "
                               "the same clip config file (configs/captioning/ do).")
    path = tokenizers.tokenizer_path(self.workdir)
    if training and not fileio.exists(path) and jax.process_index() == 0:
      base.task.tokenizer.save(path)
    self.tokenizer = tokenizers.load_tokenizer(path) if fileio.exists(path) else base.task.tokenizer
    if not same_tokenizer(self.tokenizer, base.task.tokenizer):
      raise errors.ConfigError(f"{path} differs from the tokenizer of {base_dir}; use a fresh workdir.")
    self.model = build_model(self.config, len(self.tokenizer))
    self._base = jax.device_get(base.variables["params"])
    if training:
      self.check_eval_splits()

  # ---- variables
  def init_variables(self, rng):
    params = dict(self.model.init(rng, *self._dummy_inputs())["params"])
    for name in _FROZEN:
      params.pop(name)
    params["grammar_head"] = self.grammar_head.init(rng, jnp.zeros((1, int(self.config.model.embed_dim))))["params"]
    return {"params": params}

  def frozen_params(self):
    return {"params": {k: self._base[k] for k in _FROZEN}}

  def pretrained_params(self):
    return {k: v for k, v in self._base.items() if k not in _FROZEN}

  # ---- data
  def train_iterator(self, *, process_index, process_count):
    cfg = self.config
    rt = cfg.reward_training
    data, toks = self.split("train"), self.tokens("train")
    flat = [c for caps in data.captions for c in caps]
    forbidden = frozenset(flat)
    stripped = {i: s for i, s in caption_corruption.attribute_pairs(flat)} if rt.attribute else {}
    with_attr = np.zeros(len(flat), bool)
    with_attr[list(stripped)] = True
    max_len = int(cfg.data.max_len)

    def load(indices, keys):
      batch = {"images": data.load_images(indices, int(cfg.data.image_size), keys=keys, flip=bool(cfg.data.flip)),
               "image_ids": data.image_ids[indices]}
      rows = toks.sample_one_per_image(indices, keys)
      if rt.attribute:  # prefer a caption with attribute words
        for i, (image, key) in enumerate(zip(indices, keys)):
          own = np.arange(toks.offsets[image], toks.offsets[image + 1])
          own = own[with_attr[own]]
          if len(own):
            rows[i] = own[int(key) % len(own)]
      batch.update(tokens=toks.tokens[rows], mask=toks.mask[rows])
      if rt.grammar:
        negatives, _ = caption_corruption.corrupt_batch([flat[r] for r in rows], seed=int(keys[0]),
                                                        forbidden=forbidden)
        # No corruption, or one with no word left (e.g. "." of "a dog ."): the caption itself as a placeholder,
        # masked out.
        valid = np.asarray([n is not None and has_words(n) for n in negatives])
        tokens, mask = self.tokenizer.encode_batch([n if ok else flat[r] for n, ok, r in zip(negatives, valid, rows)],
                                                   max_len)
        batch.update(negative_tokens=tokens, negative_mask=mask, negative_valid=valid & mask.any(axis=1))
      if rt.attribute:
        texts = [stripped.get(int(r)) for r in rows]
        valid = np.asarray([t is not None and has_words(t) for t in texts])
        tokens, mask = self.tokenizer.encode_batch([t if ok else flat[r] for t, ok, r in zip(texts, valid, rows)],
                                                   max_len)
        batch.update(stripped_tokens=tokens, stripped_mask=mask, stripped_valid=valid & mask.any(axis=1))
      return batch

    return EpochBatchIterator(len(data), cfg.train.batch_size, load, seed=cfg.seed, process_index=process_index,
                              process_count=process_count, num_threads=cfg.data.num_threads,
                              prefetch=cfg.data.prefetch)

  # ---- objective
  def loss_fn(self, params, batch, rng, ctx):
    rt = self.config.reward_training
    variables = self._variables(params, ctx.frozen)
    image, text = self._embed(variables, batch, rng, deterministic=False)
    image = jax.lax.stop_gradient(image)
    scalars = {k: params[k] for k in ("logit_scale", "logit_bias") if k in params}
    loss, metrics = jnp.zeros(()), {}
    if float(rt.contrastive_weight):
      contrastive, metrics = self.objective(image, text, batch["image_ids"], ctx, scalars)
      loss = loss + float(rt.contrastive_weight) * contrastive
      metrics = dict(metrics, contrastive_loss=contrastive)
    embed_text = lambda t, m: self.model.apply(variables, t, m, deterministic=True, method=type(self.model).encode_text)
    if rt.grammar:
      negative = embed_text(batch["negative_tokens"], batch["negative_mask"])
      head = lambda e: self.grammar_head.apply({"params": params["grammar_head"]}, e)
      pos_logit, neg_logit = head(text), head(negative)
      valid = batch["negative_valid"].astype(jnp.float32)
      bce = (jnp.mean(optax.sigmoid_binary_cross_entropy(pos_logit, jnp.ones_like(pos_logit))) +
             jnp.sum(optax.sigmoid_binary_cross_entropy(neg_logit, jnp.zeros_like(neg_logit)) * valid) /
             jnp.maximum(jnp.sum(valid), 1.0)) / 2
      accuracy = (jnp.mean((pos_logit > 0).astype(jnp.float32)) +
                  jnp.sum((neg_logit < 0) * valid) / jnp.maximum(jnp.sum(valid), 1.0)) / 2
      loss = loss + float(rt.grammar_weight) * bce
      metrics.update(grammar_loss=bce, grammar_accuracy=accuracy)
    if rt.attribute:
      stripped = embed_text(batch["stripped_tokens"], batch["stripped_mask"])
      scale = jnp.exp(jnp.minimum(params["logit_scale"], jnp.log(100.0)))
      margin = jnp.sum(image * text, -1) - jnp.sum(image * stripped, -1)
      valid = batch["stripped_valid"].astype(jnp.float32)
      attr = jnp.sum(jax.nn.softplus(-scale * margin) * valid) / jnp.maximum(jnp.sum(valid), 1.0)
      loss = loss + float(rt.attribute_weight) * attr
      metrics.update(attribute_loss=attr, attribute_accuracy=jnp.sum((margin > 0) * valid) / jnp.maximum(
          jnp.sum(valid), 1.0), attribute_rows=jnp.mean(valid))
    return loss, metrics

  # ---- evaluation data
  def make_eval_data(self, split: str) -> EvalData:
    """The retrieval data, plus held-out grammar pairs (each caption of the split and one corruption of it, drawn
    with a fixed seed; never equal to a train caption) and attribute pairs (systems/captioning/evaluators.py)."""
    data = super().make_eval_data(split)
    captions = [c for caps in self.split(split).captions for c in caps]
    owner = np.repeat(np.arange(len(self.split(split))), [len(c) for c in self.split(split).captions])
    max_len = int(self.config.data.max_len)
    forbidden = frozenset(c for caps in self.split("train").captions for c in caps)
    negatives, _ = caption_corruption.corrupt_batch(captions, seed=12345, forbidden=forbidden)
    negatives = [n for n in negatives if n is not None and has_words(n)]
    tokens, mask = self.tokenizer.encode_batch(captions + negatives, max_len)
    data.extras.update(grammar_inputs={"tokens": tokens, "mask": mask},
                       grammar_labels=np.r_[np.ones(len(captions), int), np.zeros(len(negatives), int)])
    pairs = [(i, s) for i, s in caption_corruption.attribute_pairs(captions) if has_words(s)]
    if pairs:
      rows = np.asarray([i for i, _ in pairs])
      pos, pos_mask = self.tokenizer.encode_batch([captions[i] for i in rows], max_len)
      neg, neg_mask = self.tokenizer.encode_batch([s for _, s in pairs], max_len)
      data.extras.update(attribute_pos={"tokens": pos, "mask": pos_mask},
                         attribute_neg={"tokens": neg, "mask": neg_mask}, attribute_image=owner[rows])
    return data

  # ---- predict functions
  def grammar_score(self, variables, tokens, mask):
    """tokens, mask [b, max_len] -> g(c) in [0, 1] [b]."""
    emb = self.embed_text(variables, tokens, mask)
    return jax.nn.sigmoid(self.grammar_head.apply({"params": variables["params"]["grammar_head"]}, emb))
