"""What S5's reward-model fine-tunes share, whatever finished two-tower run they start from (config.init_from):
a `clip` run (systems/captioning/reward_model.py, task "s5_reward_model") or a `dual_encoder` run over the
pretrained EfficientNet-Lite / MiniLM towers (systems/captioning/reward_model_dual.py, task
"s5_reward_model_dual_encoder").

Design: one mixin, `RewardFineTune`, placed before the base run's task class (ClipTask, DualEncoderTask) in a thin
subclass. It holds everything that is a function of the task's text tower only: loading the base run (its
tokenizer is this run's), the grammar / attribute text columns of a training batch, the grammar and attribute
losses on top of the contrastive one, the held-out grammar and attribute pairs of the evaluation data, and the
`grammar_score` predict function. The subclass supplies the image side (raw images, or frozen embeddings) and how
its text tower is applied (`embed_text`).

Per batch row (one image, one of its captions):

* grammar (seed): the caption is a positive, a corrupted copy of it (caption_corruption.py: a repeated, removed,
  inserted, swapped or shuffled word or n-gram; never equal to a real train caption) a negative: binary
  cross-entropy on the grammar head's logits (grammar_head.py), weighted by `reward_training.grammar_weight`.
  `reward_training.contrastive_weight` keeps the contrastive loss of config.loss on the (image, caption) pairs
  beside it (the seed's "binary loss + the contrastive loss"; 0 = the classification loss only, the text tower then
  drifts freely).
* attribute negatives (seed): rows are drawn among the image's captions that name a colour or background word when
  it has any; the same caption with those words removed (caption_corruption.strip_attributes) is a negative for
  the image: L_attr = softplus(s * (cos(I, c_stripped) - cos(I, c))) (a logistic ranking loss with the model's
  logit scale s), averaged over rows that have one, weighted by `reward_training.attribute_weight`. Our reading of
  "fine-tune the reward model's text side on them so the reward favours attribute words".

The positives of the grammar head are the human captions themselves; "captions whose g is at or above a threshold"
(the seed) is how the head is read at use: g(c) >= 0.5 counts as grammatical (evaluation/captioning.py).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xmodal_jax import errors, fileio
from xmodal_jax.data import tokenizers
from xmodal_jax.evaluation.evaluator import EvalData
from xmodal_jax.systems.captioning import caption_corruption
from xmodal_jax.systems.captioning import evaluators  # pylint: disable=unused-import  (registers "s5_reward_model")
from xmodal_jax.systems.captioning.grammar_head import GrammarHead
from xmodal_jax.systems.captioning.scorers import has_words, same_tokenizer

EmbedText = Callable[[jax.Array, jax.Array], jax.Array]   # tokens, mask [b, L] -> unit [b, D]


class RewardFineTune:
  """Mixin of a RetrievalTask subclass (see the module docstring). BASE_TASK: config.task of the run in
  config.init_from."""
  BASE_TASK = ""

  def __init__(self, config, workdir):
    super().__init__(config, workdir)
    if not config.get("init_from"):
      raise errors.ConfigError(f"config.init_from must name a finished `{self.BASE_TASK}` run (its text side is "
                               "fine-tuned here).")
    rt = config.reward_training
    if not (rt.grammar or rt.attribute):
      raise errors.ConfigError("config.reward_training: set grammar=True and / or attribute=True (nothing to train).")
    self.grammar_head = GrammarHead(int(rt.grammar_hidden))
    self._predict = dict(self._predict, grammar_score=self.grammar_score)

  # ---- the base run
  def load_base(self, *, training: bool):
    """The run in config.init_from (a LoadedModel of BASE_TASK), checked against this config; sets
    `self.tokenizer` to its tokenizer (written into this workdir on the first training run)."""
    from xmodal_jax import systems  # pylint: disable=import-outside-toplevel  (the registry, to load another run)
    base_dir = str(self.config.init_from)
    base = systems.load_init_run(base_dir, task=self.BASE_TASK, mesh_shape=tuple(self.config.mesh.shape))
    ours, theirs = self.config.model.to_dict(), base.task.config.model.to_dict()
    if ours != theirs:
      diff = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
      raise errors.ConfigError(f"config.model differs from the {self.BASE_TASK} run {base_dir} in {diff}; build this "
                               "config from the same config file as that run (configs/captioning/ do).")
    path = tokenizers.tokenizer_path(self.workdir)
    if training and not fileio.exists(path) and jax.process_index() == 0:
      base.task.tokenizer.save(path)
    self.tokenizer = tokenizers.load_tokenizer(path) if fileio.exists(path) else base.task.tokenizer
    if not same_tokenizer(self.tokenizer, base.task.tokenizer):
      raise errors.ConfigError(f"{path} differs from the tokenizer of {base_dir}; use a fresh workdir.")
    return base

  def init_grammar_head(self, rng) -> dict:
    """The grammar head's params (on embeddings [1, embed_dim])."""
    return self.grammar_head.init(rng, jnp.zeros((1, int(self.config.model.embed_dim))))["params"]

  # ---- training batches
  def reward_text_loader(self) -> Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]:
    """fn(image indices [b], keys [b]) -> the text columns of a train batch: tokens, mask [b, L] (one caption per
    image, one naming an attribute when the image has any and attribute negatives are on), image_ids [b]; with
    grammar, negative_tokens / negative_mask [b, L] and negative_valid bool [b]; with attribute,
    stripped_tokens / stripped_mask [b, L] and stripped_valid bool [b]. Build it before any loader thread runs."""
    cfg, rt = self.config, self.config.reward_training
    data, toks = self.split("train"), self.tokens("train")
    flat = [c for caps in data.captions for c in caps]
    forbidden = frozenset(flat)
    stripped = dict(caption_corruption.attribute_pairs(flat)) if rt.attribute else {}
    with_attr = np.zeros(len(flat), bool)
    with_attr[list(stripped)] = True
    max_len = int(cfg.data.max_len)

    def encode(texts, rows):
      """Texts (None or without a word: the row's own caption as a placeholder, marked invalid) -> tokens, mask,
      valid; a text that tokenises as its caption does (changed past max_len only) is invalid too."""
      valid = np.asarray([t is not None and has_words(t) for t in texts])
      tokens, mask = self.tokenizer.encode_batch([t if ok else flat[r] for t, ok, r in zip(texts, valid, rows)],
                                                 max_len)
      return tokens, mask, valid & mask.any(axis=1) & np.any(tokens != toks.tokens[rows], axis=1)

    def load(indices, keys):
      rows = toks.sample_one_per_image(indices, keys)
      if rt.attribute:  # prefer a caption with attribute words
        for i, (image, key) in enumerate(zip(indices, keys)):
          own = np.arange(toks.offsets[image], toks.offsets[image + 1])
          own = own[with_attr[own]]
          if len(own):
            rows[i] = own[int(key) % len(own)]
      batch = {"tokens": toks.tokens[rows], "mask": toks.mask[rows], "image_ids": data.image_ids[indices]}
      if rt.grammar:
        negatives, _ = caption_corruption.corrupt_batch([flat[r] for r in rows], seed=int(keys[0]),
                                                        forbidden=forbidden)
        batch.update(zip(("negative_tokens", "negative_mask", "negative_valid"), encode(negatives, rows)))
      if rt.attribute:
        batch.update(zip(("stripped_tokens", "stripped_mask", "stripped_valid"),
                         encode([stripped.get(int(r)) for r in rows], rows)))
      return batch

    return load

  # ---- objective
  def reward_loss(self, params, image, text, embed_text: EmbedText, batch, ctx):
    """(loss, metrics) of a batch: image, text unit [b, D] (image without gradient), embed_text the text tower
    with the current params (for the negatives); params: the trainable params (scalars, grammar_head)."""
    rt = self.config.reward_training
    scalars = {k: params[k] for k in ("logit_scale", "logit_bias") if k in params}
    loss, metrics = jnp.zeros(()), {}
    if float(rt.contrastive_weight):
      contrastive, metrics = self.objective(image, text, batch["image_ids"], ctx, scalars)
      loss = loss + float(rt.contrastive_weight) * contrastive
      metrics = dict(metrics, contrastive_loss=contrastive)
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
    with a fixed seed; never equal to a train caption; dropped when it tokenises as the caption, cut at max_len)
    and attribute pairs (likewise; systems/captioning/evaluators.py)."""
    data = super().make_eval_data(split)
    captions = [c for caps in self.split(split).captions for c in caps]
    owner = np.repeat(np.arange(len(self.split(split))), [len(c) for c in self.split(split).captions])
    max_len = int(self.config.data.max_len)
    forbidden = frozenset(c for caps in self.split("train").captions for c in caps)
    human = self.tokens(split)
    negatives, _ = caption_corruption.corrupt_batch(captions, seed=12345, forbidden=forbidden)
    corrupted = [(i, n) for i, n in enumerate(negatives) if n is not None and has_words(n)]
    _, neg, neg_mask = self._encode_distinct(corrupted, human.tokens, max_len)
    data.extras.update(grammar_inputs={"tokens": np.r_[human.tokens, neg], "mask": np.r_[human.mask, neg_mask]},
                       grammar_labels=np.r_[np.ones(len(captions), int), np.zeros(len(neg), int)])
    rows, neg, neg_mask = self._encode_distinct(
        [(i, s) for i, s in caption_corruption.attribute_pairs(captions) if has_words(s)], human.tokens, max_len)
    if len(rows):
      data.extras.update(attribute_pos={"tokens": human.tokens[rows], "mask": human.mask[rows]},
                         attribute_neg={"tokens": neg, "mask": neg_mask}, attribute_image=owner[rows])
    return data

  def _encode_distinct(self, pairs, reference: np.ndarray, max_len: int):
    """(caption row, text) pairs -> (rows int [P], tokens, mask [P, max_len]) of the texts whose tokens differ from
    reference[row]'s (a change past max_len is cut off and would leave a copy of the caption)."""
    if not pairs:
      return np.zeros(0, np.int64), np.zeros((0, max_len), np.int32), np.zeros((0, max_len), bool)
    rows = np.asarray([i for i, _ in pairs], np.int64)
    tokens, mask = self.tokenizer.encode_batch([t for _, t in pairs], max_len)
    keep = np.any(tokens != reference[rows], axis=1)
    return rows[keep], tokens[keep], mask[keep]

  # ---- predict functions
  def grammar_score(self, variables, tokens, mask):
    """tokens, mask [b, max_len] (the run's tokenizer) -> g(c) in [0, 1] [b]."""
    emb = self.embed_text(variables, tokens, mask)
    return jax.nn.sigmoid(self.grammar_head.apply({"params": variables["params"]["grammar_head"]}, emb))
