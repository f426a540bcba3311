"""S5: an image captioner trained by maximum likelihood, then by self-critical RL under a contrastive reward.

Model (systems/captioning/captioner_model.py): an image encoder giving a feature grid (`model.encoder.kind`: "cnn" a small ResNet from
scratch, "vit" a ViT's patch tokens from scratch, "efficientnet" the frozen ImageNet EfficientNet-Lite before its
pooling, whose train-split grid is cached once: data/feature_cache.py) -> a projection -> a decoder
(`model.decoder.kind`: "transformer" with cross attention, or "gru").

Objectives (`train.objective`):
  "mle":  teacher forcing on one human caption per image per epoch (objectives/scst.py: teacher_forcing_loss);
  "scst": self-critical sequence training (objectives/scst.py), warm-started from an MLE run (`init_from`): per
          image `scst.samples` captions sampled from the policy (temperature / top-k / top-p), rewarded by
          `scst.reward` (`_reward_of`): "clip" R = w * max(cos(f_I, f_T), 0) under the frozen reward model
          (`reward.workdir`: a `clip` or `dual_encoder` run, or an S5 reward-model run over either) plus
          gamma * g(c) when that model has a grammar head (`scst.grammar_weight`); "cider" R = CIDEr-D against
          the image's train references (cider_reward.py, on host); "cider+clip" R = CIDEr-D + lambda * the clip
          reward (`scst.cider_weight`). Against the greedy caption's reward ("greedy", the seed's default) or the
          leave-one-out mean of the other samples ("leave_one_out", needs samples >= 2). Sampling, the greedy
          baseline, the reward and the update are one jitted step.
The reward model's image embeddings of the train images are computed once (centre crops) and travel with the
batches; its text tower runs inside the step on the sampled captions. The captioner uses the reward model's
tokenizer (copied into this workdir; with data.tokenizer="wordpiece" an MLE run builds MiniLM's own, the
dual encoder's), so sampled tokens are the reward's text input as they are (scorers.text_inputs: WordPiece's
[CLS] + the sampled words + [SEP]). <bos> / <eos> are the tokenizer's (WordPiece: [CLS] / [SEP]); the targets are
the caption's tokens without specials (`encode_words`), then <eos>. `model.output_vocab="captions"` gives the
decoder its own vocabulary of the train captions' tokens (decoder_vocab.py, stored in output_vocab.json): its
softmax covers those only (Flickr8k: 6,645 of MiniLM's 30,522 ids), mapped back to tokenizer ids at its edges;
`model.decoder.init_embeddings="minilm"` starts its token embeddings from MiniLM's (width 384).

Decoding (`decode`): greedy, sampling or beam search (sampling.py, beam_search.py), over the decoder's cache, EOS-aware; the
`caption` predict function returns tokens [batch, data.max_len + 1] (words, <eos>, padding).

Evaluation: the shared "captioning" evaluator (evaluation/captioning.py) with BLEU / METEOR / ROUGE-L / CIDEr-D,
text statistics, CLIP-S / RefCLIP-S / grammar score under the scorer models of `config.scorers` (an independent
judge, the base reward model, the grammar model), and on shapes world attribute recall / precision and the grammar
parse rate.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xmodal_jax import errors, fileio
from xmodal_jax.data import feature_cache, shapes_caption_grammar, sources, tokenizers
from xmodal_jax.data.captions import TokenizedCaptions, teacher_forcing, tokenize_captions
from xmodal_jax.data.iterator import EpochBatchIterator
from xmodal_jax.data.preprocess import normalize_images
from xmodal_jax.evaluation.evaluator import EvalData
from xmodal_jax.models import efficientnet_lite, efficientnet_weights, layers, minilm, vit as vit_lib
from xmodal_jax.models.caption_decoder import DECODERS, build_decoder
from xmodal_jax.models.resnet import ResNetEncoder
from xmodal_jax.objectives import scst
from xmodal_jax.systems.captioning import beam_search, caption_corruption, cider_reward, sampling, scorers
from xmodal_jax.systems.captioning.decoder_vocab import DecoderVocab
from xmodal_jax.systems.captioning.captioner_model import Captioner
from xmodal_jax.task_bases.base import ImageTextTask
from xmodal_jax.train import optimizer as optimizer_lib
from xmodal_jax.train.task import with_frozen

ENCODERS = ("cnn", "vit", "efficientnet")
OBJECTIVES = ("mle", "scst")
BASELINES = ("greedy", "leave_one_out")
DECODE_METHODS = ("greedy", "beam", "sample")
REWARDS = ("clip", "cider", "cider+clip")
OUTPUT_VOCABS = ("all", "captions")
INIT_EMBEDDINGS = ("", "minilm")
PAD = tokenizers.TokenizerBase.pad_id   # every tokenizer's; <bos> / <eos> are the tokenizer's own (bos_id, eos_id)
_OUTPUT_VOCAB_FILE = "output_vocab.json"


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
  """How captions are decoded (config.decode, or SCST's sampling): method, beam_size, alpha (length penalty),
  temperature, top_k, top_p."""
  method: str = "greedy"
  beam_size: int = 3
  alpha: float = 0.0
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0


def _check(config) -> None:
  model, train = config.model, config.train
  for where, value, choices in (("model.encoder.kind", model.encoder.kind, ENCODERS),
                                ("model.decoder.kind", model.decoder.kind, DECODERS),
                                ("train.objective", train.objective, OBJECTIVES),
                                ("scst.baseline", config.scst.baseline, BASELINES),
                                ("scst.reward", config.scst.get("reward", "clip"), REWARDS),
                                ("model.output_vocab", model.get("output_vocab", "all"), OUTPUT_VOCABS),
                                ("model.decoder.init_embeddings", model.decoder.get("init_embeddings", ""),
                                 INIT_EMBEDDINGS),
                                ("decode.method", config.decode.method, DECODE_METHODS)):
    if value not in choices:
      raise errors.ConfigError(f"config.{where}={value!r}; use one of {choices}.")
  if model.decoder.get("init_embeddings", "") == "minilm" and int(model.decoder.width) != MINILM_WIDTH:
    raise errors.ConfigError(f"config.model.decoder.init_embeddings='minilm' needs config.model.decoder.width="
                             f"{MINILM_WIDTH} (MiniLM's word-embedding width), got {model.decoder.width}.")
  if train.objective == "scst":
    if _uses_clip_reward(config) and not config.reward.workdir:
      raise errors.ConfigError(f"config.scst.reward={config.scst.get('reward', 'clip')!r} needs config.reward.workdir: "
                               "a finished two-tower run (clip, dual_encoder or an S5 reward model) whose frozen "
                               "towers give the reward.")
    if not config.init_from:
      raise errors.ConfigError("config.train.objective='scst' needs config.init_from=WORKDIR of an MLE captioning run "
                               "(SCST starts from a trained captioner).")
    if config.scst.baseline == "leave_one_out" and int(config.scst.samples) < 2:
      raise errors.ConfigError(f"config.scst.baseline='leave_one_out' needs config.scst.samples >= 2 (got "
                               f"{config.scst.samples}).")
  if int(config.scst.samples) < 1:
    raise errors.ConfigError(f"config.scst.samples={config.scst.samples}: at least 1.")
  if int(config.decode.beam_size) < 1:
    raise errors.ConfigError(f"config.decode.beam_size={config.decode.beam_size}: at least 1.")
  width, heads = int(model.decoder.width), int(model.decoder.num_heads)
  if model.decoder.kind == "transformer" and width % heads:
    raise errors.ConfigError(f"config.model.decoder.width={width} is not divisible by num_heads={heads}.")


MINILM_WIDTH = 384


def _uses_clip_reward(config) -> bool:
  return "clip" in str(config.scst.get("reward", "clip")).split("+")


def _uses_cider_reward(config) -> bool:
  return "cider" in str(config.scst.get("reward", "clip")).split("+")


class CaptioningTask(ImageTextTask):
  """Predict functions: caption (uint8 images [b, H, W, 3] -> tokens [b, max_len + 1]), caption_log_probs
  (images, tokens -> summed log p [b]: scores of given captions), encode_context (images -> [b, ctx, width])."""

  def __init__(self, config, workdir):
    super().__init__(config, workdir)
    _check(config)
    self.tokenizer = None
    self.model: Captioner | None = None
    self.decode_model: Captioner | None = None
    self._tokens: dict[str, TokenizedCaptions] = {}
    self._reward: scorers.Scorer | None = None
    self._reward_image_emb: np.ndarray | None = None
    self._encoder_weights: dict | None = None
    self._cache: feature_cache.FeatureCache | None = None
    self._vocab: DecoderVocab | None = None     # model.output_vocab="captions": the decoder's own ids
    self._logit_bias: np.ndarray | None = None   # [decoder vocab]: 0, or NEG_INF at ids never emitted
    self._cider = None
    self._predict = {"caption": self.caption, "caption_log_probs": self.caption_log_probs,
                     "encode_context": self.encode_context}

  # ---- assets and model
  @property
  def seq_len(self) -> int:
    """Decoder positions: the caption's words (data.max_len) + <eos> (inputs: <bos> + words)."""
    return int(self.config.data.max_len) + 1

  @property
  def objective(self) -> str:
    return str(self.config.train.objective)

  @property
  def bos_id(self) -> int:
    return int(self.tokenizer.bos_id)

  @property
  def eos_id(self) -> int:
    return int(self.tokenizer.eos_id)

  # The decoder's ids: the tokenizer's, or with model.output_vocab="captions" indices into DecoderVocab
  # (decoder_vocab.py). Everything the task returns or feeds a reward is tokenizer ids.
  @property
  def _decoder_size(self) -> int:
    return len(self.tokenizer) if self._vocab is None else self._vocab.size

  @property
  def _decoder_bos(self) -> int:
    return self.bos_id if self._vocab is None else self._vocab.bos

  @property
  def _decoder_eos(self) -> int:
    return self.eos_id if self._vocab is None else self._vocab.eos

  def _to_decoder(self, tokens):
    return tokens if self._vocab is None else self._vocab.to_decoder(tokens)

  def _to_tokenizer(self, tokens):
    return tokens if self._vocab is None else self._vocab.to_tokenizer(tokens)

  def setup(self, *, training: bool) -> None:
    if self.model is not None:
      return
    cfg = self.config
    if cfg.reward.workdir and (training or self.objective == "scst"):
      self._reward = scorers.load_scorer(str(cfg.reward.workdir), "config.reward.workdir",
                                         mesh_shape=tuple(cfg.mesh.shape))
    self.tokenizer = self._load_or_build_tokenizer(training)
    self._vocab = self._load_or_build_output_vocab(training)
    self._logit_bias = None if self._vocab is None else self._vocab.logit_bias(sampling.NEG_INF)
    self.model, self.decode_model = self._build(decode=False), self._build(decode=True)
    if cfg.model.encoder.kind == "efficientnet":
      weights = efficientnet_weights.load(cfg.model.encoder.efficientnet.variant)
      self._encoder_weights = {"params": {"encoder": {k: v for k, v in weights["params"].items()
                                                      if k != "classifier"}},
                               "batch_stats": {"encoder": weights["batch_stats"]}}
    if training:
      self.check_eval_splits()

  def _load_or_build_tokenizer(self, training: bool):
    """The reward model's tokenizer when there is one (sampled tokens are its text input), else one built on the
    train captions; stored in this workdir either way."""
    path = tokenizers.tokenizer_path(self.workdir)
    if fileio.exists(path) or not training:
      tokenizer = tokenizers.load_tokenizer(path)
    elif self._reward is not None:
      tokenizer = self._reward.tokenizer
      if jax.process_index() == 0:
        tokenizer.save(path)
    else:
      cfg = self.config.data
      options = {"word": {"min_count": cfg.vocab_min_count}, "sentencepiece": {"vocab_size": cfg.vocab_size}}
      tokenizer = tokenizers.build_tokenizer(cfg.tokenizer, (c for caps in self.split("train").captions for c in caps),
                                             **options.get(cfg.tokenizer, {}))
      if jax.process_index() == 0:
        tokenizer.save(path)
    if self._reward is not None and not scorers.same_tokenizer(tokenizer, self._reward.tokenizer):
      raise errors.ConfigError(f"The tokenizer of {self.workdir} differs from the reward model's "
                               f"({self.config.reward.workdir}): SCST feeds sampled tokens to the reward's text tower "
                               "as they are. Train the MLE run with the same config.reward.workdir.")
    return tokenizer

  def _load_or_build_output_vocab(self, training: bool) -> DecoderVocab | None:
    """config.model.output_vocab="captions": the decoder's softmax covers only the tokens of the train captions and
    <eos> (decoder_vocab.py). The allowed ids are stored in this workdir (output_vocab.json), so evaluation and
    `xmodal caption` decode alike without the train split. None for "all"."""
    if self.config.model.get("output_vocab", "all") == "all":
      return None
    path = os.path.join(self.workdir, _OUTPUT_VOCAB_FILE)
    if fileio.exists(path):
      with fileio.open(path) as f:
        ids = json.load(f)["ids"]
    elif training:
      ids = sorted({int(i) for i in np.unique(self.tokens("train").tokens)} - {PAD} | {self.eos_id})
      if jax.process_index() == 0:
        with fileio.open(path, "w") as f:
          json.dump({"ids": ids}, f)
    else:
      raise errors.MissingError(f"{path} not found: config.model.output_vocab='captions' stores the decoder's "
                                "vocabulary there when training; point --workdir at the run that made it.")
    return DecoderVocab.build(ids, tokenizer_size=len(self.tokenizer), pad_id=PAD, bos_id=self.bos_id,
                              eos_id=self.eos_id)

  def _build(self, decode: bool) -> Captioner:
    cfg = self.config.model
    dtype = jnp.dtype(cfg.dtype)
    kind = cfg.encoder.kind
    if kind == "cnn":
      encoder = ResNetEncoder(**dict(cfg.encoder.cnn), dtype=dtype)
    elif kind == "vit":
      fields = {k: cfg.encoder.vit[k] for k in cfg.encoder.vit}
      encoder = vit_lib.ViT(**dict(fields, mlp_dim=fields.get("mlp_dim") or None, pool="none"), dtype=dtype)
    else:
      encoder = efficientnet_lite.EfficientNetLite(cfg.encoder.efficientnet.variant, dtype=dtype)
    decoder = build_decoder(cfg.decoder.kind, vocab_size=self._decoder_size, max_len=self.seq_len,
                            **{k: cfg.decoder[k] for k in cfg.decoder if k not in ("kind", "init_embeddings")},
                            decode=decode, dtype=dtype)
    return Captioner(encoder, decoder, width=int(cfg.decoder.width), dtype=dtype,
                     encoder_call=(("pool", False),) if kind == "efficientnet" else ())

  def _normalize(self, images):
    if self.config.model.encoder.kind == "efficientnet":
      return efficientnet_lite.normalize_images(images)
    return normalize_images(images, jnp.dtype(self.config.model.dtype))

  def init_variables(self, rng):
    size = int(self.config.data.image_size)
    variables = self.model.init({"params": rng, "dropout": rng}, jnp.zeros((1, size, size, 3)),
                                jnp.zeros((1, self.seq_len), jnp.int32))
    params = dict(variables["params"])
    if self._encoder_weights is not None:
      params.pop("encoder")
    return {"params": params}

  def frozen_params(self):
    out = {}
    if self._encoder_weights is not None:
      out["captioner"] = self._encoder_weights
    if self._reward is not None and self.objective == "scst" and _uses_clip_reward(self.config):
      out["reward"] = jax.device_get(self._reward.loaded.variables)
    return out or None

  def pretrained_params(self):
    """SCST starts from the MLE run's params (init_from); an MLE run with model.decoder.init_embeddings='minilm'
    from MiniLM's word embeddings [vocab, 384] as the decoder's token embeddings (rows of the padded table beyond
    the vocabulary: 0, never an input)."""
    if not self.config.init_from:
      return self._minilm_embeddings()
    from xmodal_jax import systems  # pylint: disable=import-outside-toplevel  (the registry, to load another run)
    loaded = systems.load_init_run(self.config.init_from, task="captioning", mesh_shape=tuple(self.config.mesh.shape))
    if not scorers.same_tokenizer(loaded.task.tokenizer, self.tokenizer):
      raise errors.ConfigError(f"config.init_from={self.config.init_from!r} has another tokenizer than this run's.")
    return jax.device_get(loaded.variables["params"])

  def _minilm_embeddings(self):
    if self.config.model.decoder.get("init_embeddings", "") != "minilm":
      return None
    try:
      table = np.asarray(minilm.load_params()[1]["params"]["word_embeddings"]["embedding"], np.float32)
    except (ImportError, FileNotFoundError) as e:
      raise errors.MissingError(str(e)) from None
    if not self.tokenizer.encode_adds_specials or len(self.tokenizer) != len(table):
      raise errors.ConfigError("config.model.decoder.init_embeddings='minilm' needs MiniLM's vocabulary: set "
                               "config.data.tokenizer='wordpiece'.")
    rows = table if self._vocab is None else table[self._vocab.tokenizer_ids]
    padded = np.zeros((layers.padded_vocab_size(len(rows)), table.shape[1]), np.float32)
    padded[:len(rows)] = rows
    return {"decoder": {"token_embed": {"embedding": padded}}}

  def _captioner_variables(self, params, frozen):
    return with_frozen(params, (frozen or {}).get("captioner"))

  # ---- data
  def tokens(self, name: str) -> TokenizedCaptions:
    if name not in self._tokens:
      self._tokens[name] = tokenize_captions(self.split(name).captions, self.tokenizer, int(self.config.data.max_len),
                                             name, words_only=True)
    return self._tokens[name]

  def _features_cache(self) -> feature_cache.FeatureCache:
    """The frozen EfficientNet-Lite grid of every train image (centre crop), computed once."""
    if self._cache is None:
      cfg = self.config
      data = self.split("train")
      variant = cfg.model.encoder.efficientnet.variant
      variables = jax.device_put(self._encoder_weights)
      apply = jax.jit(lambda v, x: self.model.apply(v, x, method=Captioner.features))
      key = {"side": "image_grid", "source": sources.source_fingerprint(cfg.data), "split": "train", "tower": variant,
             "weights": efficientnet_weights.file_sha256(str(efficientnet_weights.source_file(variant))),
             "image_size": cfg.data.image_size, "prepare_size": cfg.data.prepare_size, "views": 1}

      def encode(split, rows, view):
        del split, view
        images = data.load_images(rows, int(cfg.data.image_size))
        return np.asarray(apply(variables, efficientnet_lite.normalize_images(images)))

      self._cache = feature_cache.ensure(key, {"train": feature_cache.SplitPlan(len(data), 1)}, encode,
                                         directory=cfg.cache.dir, dtype=cfg.cache.dtype,
                                         batch_size=int(cfg.cache.batch_size))
    return self._cache

  def _uses_cache(self) -> bool:
    return self.config.model.encoder.kind == "efficientnet" and bool(self.config.cache.enabled)

  def reward_image_embeddings(self) -> np.ndarray:
    """The reward model's embeddings of every train image (centre crops at its own size), computed once."""
    if self._reward_image_emb is None:
      self._reward_image_emb = self._reward.embed_images(self.split("train"), self.config.data)
    return self._reward_image_emb

  def train_iterator(self, *, process_index: int, process_count: int) -> EpochBatchIterator:
    cfg = self.config
    data, toks = self.split("train"), self.tokens("train")
    # Built here, before any loader thread runs (building inside `load` would race between threads).
    cache = self._features_cache() if self._uses_cache() else None
    scst_run = self.objective == "scst"
    reward_emb = self.reward_image_embeddings() if scst_run and _uses_clip_reward(cfg) else None
    if scst_run and _uses_cider_reward(cfg):
      self._cider_fn()

    def load(indices, keys):
      if cache is not None:
        batch = {"features": cache.read("train", indices)}
      else:
        batch = {"images": data.load_images(indices, int(cfg.data.image_size), keys=keys, flip=bool(cfg.data.flip))}
      if not scst_run:
        rows = toks.sample_one_per_image(indices, keys)
        batch.update(teacher_forcing(self._to_decoder(toks.tokens[rows]), self.seq_len, bos_id=self._decoder_bos,
                                     eos_id=self._decoder_eos))
      else:
        batch["image_index"] = np.asarray(indices, np.int32)   # train rows: the CIDEr-D references
        if reward_emb is not None:
          batch["reward_image_emb"] = reward_emb[indices]
      return batch

    return EpochBatchIterator(len(data), cfg.train.batch_size, load, seed=cfg.seed, process_index=process_index,
                              process_count=process_count, num_threads=cfg.data.num_threads,
                              prefetch=cfg.data.prefetch)

  # ---- the model's pieces as pure functions
  def _context(self, variables, batch, rng=None):
    """A batch's images (or cached encoder features) -> context [b, ctx_len, width]; rng: dropout on."""
    rngs, deterministic = (None, True) if rng is None else ({"dropout": rng}, False)
    if "features" in batch:
      return self.model.apply(variables, features=batch["features"], deterministic=deterministic,
                              method=Captioner.encode, rngs=rngs)
    return self.model.apply(variables, self._normalize(batch["images"]), deterministic=deterministic,
                            method=Captioner.encode, rngs=rngs)

  def _restrict(self, logits):
    """Logits [..., vocab] outside config.model.output_vocab at NEG_INF (unchanged for "all")."""
    return logits if self._logit_bias is None else logits + jnp.asarray(self._logit_bias)

  def _logits(self, variables, inputs, context, *, rng=None):
    return self._restrict(self.model.apply(variables, inputs, context, deterministic=rng is None,
                                           method=Captioner.logits, rngs=None if rng is None else {"dropout": rng}))

  def _step_fn(self, variables, context):
    """sampling.py / beam_search.py's step function over the decode model's cache, for `context` [n, ctx, width]."""
    def step(tokens, cache, position):
      logits, mutated = self.decode_model.apply(dict(variables, cache=cache), tokens, context, positions=position,
                                                method=Captioner.logits, mutable=["cache"])
      return self._restrict(logits[:, -1]), mutated["cache"]
    return step

  def _empty_cache(self, variables, context):
    """A zero cache for len(context) rows (shapes from an abstract evaluation: no decoder pass is run)."""
    n = context.shape[0]
    shapes = jax.eval_shape(lambda: self.decode_model.apply(
        variables, jnp.zeros((n, self.seq_len), jnp.int32), context, method=Captioner.logits,
        mutable=["cache"])[1]["cache"])
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  def decode(self, variables, context, options: DecodeOptions, rng=None, *, cached: bool = True):
    """Captions of `context` [n, ctx, width] -> tokenizer ids int32 [n, seq_len] (sampling.py, beam_search.py)."""
    return self._to_tokenizer(self._decode_indices(variables, context, options, rng, cached=cached))

  def _decode_indices(self, variables, context, options: DecodeOptions, rng=None, *, cached: bool = True):
    """As `decode`, in the decoder's ids."""
    n = context.shape[0]
    rng = jax.random.PRNGKey(0) if rng is None else rng
    common = dict(bos_id=self._decoder_bos, eos_id=self._decoder_eos, pad_id=PAD)
    if options.method == "beam":
      k = int(options.beam_size)
      beams = jnp.repeat(context, k, axis=0)
      tokens, _ = beam_search.beam_search(self._step_fn(variables, beams), self._empty_cache(variables, beams), n, k,
                                          self.seq_len, alpha=float(options.alpha), **common)
      return tokens
    sample = dict(greedy=options.method == "greedy", temperature=float(options.temperature),
                  top_k=int(options.top_k), top_p=float(options.top_p))
    if not cached:
      return sampling.sample_recomputing(lambda inputs: self._logits(variables, inputs, context), n, self.seq_len,
                                         rng, **common, **sample)
    return sampling.sample(self._step_fn(variables, context), self._empty_cache(variables, context), n,
                           self.seq_len, rng, **common, **sample)

  # ---- objectives
  def loss_fn(self, params, batch, rng, ctx):
    variables = self._captioner_variables(params, ctx.frozen)
    drop_context, drop_decoder = jax.random.split(rng)
    context = self._context(variables, batch, drop_context)
    logits = self._logits(variables, batch["inputs"], context, rng=drop_decoder)
    return scst.teacher_forcing_loss(logits, batch["targets"], batch["targets"] != PAD)

  def train_step(self, state, batch, rng, ctx):
    if self.objective == "mle":
      return super().train_step(state, batch, rng, ctx)
    cfg = self.config.scst
    k = int(cfg.samples)
    frozen_reward = (ctx.frozen or {}).get("reward")
    variables = self._captioner_variables(state.params, ctx.frozen)
    context = jax.lax.stop_gradient(self._context(variables, batch))
    options = DecodeOptions("sample", temperature=float(cfg.temperature), top_k=int(cfg.top_k), top_p=float(cfg.top_p))
    sampled = self._decode_indices(variables, jnp.repeat(context, k, axis=0), options, rng)   # [b*k, T]
    repeat = lambda x: None if x is None else jnp.repeat(x, k, axis=0)
    image_emb, rows = batch.get("reward_image_emb"), batch["image_index"]
    reward, reward_metrics = self._reward_of(frozen_reward, self._to_tokenizer(sampled), repeat(image_emb),
                                             repeat(rows))
    if cfg.baseline == "greedy":
      greedy = self.decode(variables, context, DecodeOptions("greedy"))
      greedy_reward, _ = self._reward_of(frozen_reward, greedy, image_emb, rows)
      baseline = jnp.repeat(greedy_reward, k, axis=0)
      reward_metrics["greedy_reward"] = jnp.mean(greedy_reward)
    else:
      baseline = scst.leave_one_out_baseline(reward.reshape(-1, k)).reshape(-1)
    inputs = jnp.concatenate([jnp.full((sampled.shape[0], 1), self._decoder_bos, jnp.int32), sampled[:, :-1]],
                             axis=1)
    mask = sampling.caption_mask(sampled, self._decoder_eos, PAD)

    def loss_of(params):
      v = self._captioner_variables(params, ctx.frozen)
      c = jnp.repeat(self._context(v, batch), k, axis=0)
      return scst.scst_loss(scst.token_log_probs(self._logits(v, inputs, c), sampled), mask, reward, baseline)

    (loss, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    metrics = dict(metrics, **reward_metrics, loss=loss, grad_norm=optimizer_lib.gradient_norm(grads))
    return state.apply_gradients(grads), metrics

  def _reward_of(self, reward_variables, tokens, image_emb, image_rows):
    """(R [n], metrics) of decoded `tokens` [n, T] (words, <eos>, <pad>) of train images `image_rows` [n], by
    config.scst.reward (w = scst.reward_weight, gamma = scst.grammar_weight, lambda = scst.cider_weight):
      "clip":       R = w * max(cos(f_I, f_T), 0) + gamma * g(c)   (g: when the reward model has a grammar head;
                    f_I = `image_emb` [n, D], f_T of the tokens as they are: the reward's text input is built
                    from them without re-tokenising, Scorer.text_inputs)
      "cider":      R = CIDEr-D(c, train references of the image)   (cider_reward.py, on the decoded text)
      "cider+clip": R = CIDEr-D(c, refs) + lambda * (w * max(cos, 0) + gamma * g(c))
    An empty caption (immediate <eos>) gets 0."""
    cfg = self.config.scst
    metrics = {}
    nonempty = (tokens[:, 0] != self.eos_id) & (tokens[:, 0] != PAD)
    reward = jnp.zeros(tokens.shape[:1], jnp.float32)
    if _uses_clip_reward(self.config):
      text, mask = self._reward.text_inputs(tokens)
      text_emb = self._reward.embed_text_fn(reward_variables, text, mask)
      clip = scst.clip_reward(image_emb, text_emb, float(cfg.reward_weight))
      metrics["clip_reward"] = jnp.mean(clip)
      if float(cfg.grammar_weight) and self._reward.has_grammar:
        g = self._reward.grammar_fn(reward_variables, text, mask)
        clip = clip + float(cfg.grammar_weight) * g
        metrics["grammar"] = jnp.mean(g)
      reward = clip * (float(cfg.cider_weight) if _uses_cider_reward(self.config) else 1.0)
    if _uses_cider_reward(self.config):
      cider = self._cider_fn()(tokens, image_rows)
      metrics["cider_d"] = jnp.mean(cider)
      reward = reward + cider
    reward = jnp.where(nonempty, reward, 0.0)
    return reward, dict(metrics, reward=jnp.mean(reward))

  def _cider_fn(self):
    """(tokens int32 [n, T], train image rows int32 [n]) -> CIDEr-D float32 [n] against the train references,
    a host callback usable inside jit (cider_reward.py); built once (document frequencies over train)."""
    if self._cider is None:
      reward = cider_reward.CiderDReward([list(c) for c in self.split("train").captions])
      self._cider = cider_reward.jax_cider_reward(reward, self.decode_text)
    return self._cider

  # ---- predict functions and evaluation data
  def predict_fns(self):
    return self._predict

  def _decode_options(self) -> DecodeOptions:
    d = self.config.decode
    return DecodeOptions(str(d.method), int(d.beam_size), float(d.alpha), float(d.temperature), int(d.top_k),
                         float(d.top_p))

  def encode_context(self, variables, images):
    """uint8 images [b, H, W, 3] -> context [b, ctx_len, width] (the whole encoder, frozen parts included)."""
    v = self._captioner_variables(variables["params"], variables.get("frozen"))
    return self._context(v, {"images": images})

  def caption(self, variables, images):
    """uint8 images [b, H, W, 3] -> tokens int32 [b, max_len + 1] by config.decode."""
    v = self._captioner_variables(variables["params"], variables.get("frozen"))
    return self.decode(v, self._context(v, {"images": images}), self._decode_options())

  def caption_log_probs(self, variables, images, tokens):
    """images [b, H, W, 3], decoded tokens [b, max_len + 1] -> float32 [b], sum of log p over words + <eos>."""
    v = self._captioner_variables(variables["params"], variables.get("frozen"))
    context = self._context(v, {"images": images})
    tokens = self._to_decoder(tokens)
    inputs = jnp.concatenate([jnp.full((tokens.shape[0], 1), self._decoder_bos, jnp.int32), tokens[:, :-1]], axis=1)
    logp = scst.token_log_probs(self._logits(v, inputs, context), tokens)
    return jnp.sum(jnp.where(sampling.caption_mask(tokens, self._decoder_eos, PAD), logp, 0.0), axis=-1)

  def decode_text(self, tokens: np.ndarray) -> list[str]:
    """Decoded token rows -> caption strings (words before the first <eos>)."""
    out = []
    for row in np.asarray(tokens):
      ids = []
      for t in row.tolist():
        if t in (self.eos_id, PAD):
          break
        ids.append(t)
      out.append(self.tokenizer.decode(ids))
    return out

  def make_eval_data(self, split: str) -> EvalData:
    data = self.split(split)
    extras: dict[str, Any] = {"references": [list(c) for c in data.captions], "decode_text": self.decode_text,
                              "attribute_words": {"colour": caption_corruption.COLOUR_WORDS,
                                                  "background": caption_corruption.BACKGROUND_WORDS},
                              "scorers": scorers.eval_scorers(self.config, data)}
    if str(self.config.data.source) == "shapes":
      extras["true_pairs"] = shapes_caption_grammar.true_pairs_of(data.extras)
      extras["parses"] = shapes_caption_grammar.parses
    return EvalData(image_inputs={"images": self.eval_images(split)}, extras=extras,
                    title=f"{self.config.data.source} {split}: {len(data)} images")
