"""mFSR (seed 003): VSE++ with feature separation into modal / semantic / specific parts, and image and caption
reconstruction; every component switchable, so that each row of the paper's ablation (Table 3) is one config.

Model: systems/vse/mfsr_model.py. Losses (eq. 6): L = w_mo L_mo + w_se L_se + w_sp L_sp + w_img L_img-re + w_cap L_cap-re
  * L_mo, L_sp: systems/vse/feature_separation_objective.py (eq. 7, 10; the reading of eq. 7 is written there);
  * L_se: VSE++'s hinge (config.loss, max violation after a warm-up) on the semantic parts (eq. 8-9); retrieval
    (`embed_image`, `embed_text`) uses the semantic parts;
  * L_img-re: the generator's loss against D1 (real / fake) and D2 (content), systems/vse/gan_objective.py (eq. 11-13);
  * L_cap-re: teacher-forced cross-entropy of the caption decoder over real (non-padding) target tokens (eq. 14).
A weight of 0 removes its branch from the model (no parameters, no compute). Without model.separation.enabled
the model is plain VSE++ (only w_se may be > 0).

One step (`train_step`, one jitted program): with image reconstruction on, first the discriminators take an
update of L_D1 + L_D2 with their own optimiser (config.gan.optimizer) on x' = G(v) from the current encoders and
generator (held fixed), then everything else (encoders, separation, generator, caption decoder) takes an update of
L with the main optimiser (config.optimizer) against the updated discriminators (held fixed). BatchNorm statistics
of G, D1 and D2 are in the model state (the "batch_stats" collection).

Image towers (config.model.image.tower): "resnet", VSE++'s from-scratch ResNet (shapes world); or a pretrained
"efficientnet-lite0/1/2" (ImageNet), frozen, whose pooled features are FC-ed into v (eq. 1), as VSE++ over a fixed
CNN. With config.cache.enabled the pooled features of every image (and the generator's real images at
config.model.generator.image_size) are computed once per split (data/feature_cache.py, float32 by default) and
training and evaluation read them; `embed_image` on raw images runs the whole tower (serving, export) and gives the
same embeddings as the cached path.

Config: data (source, image_size, max_len, tokenizer, ...), model (embed_dim, image, text (GRU), separation
(enabled, modal_dim, semantic_dim, specific_dim, hidden_dim, depth, normalize "parts" | "concat"), generator
(image_size, base_width), discriminator (base_width), caption_decoder (width, dropout_rate)), loss (the VSE++
hinge: margin, max_violation, max_violation_warmup_steps), loss_weights (modal, semantic, specific, image, caption),
gan.optimizer (the discriminators' optimiser, every field of config.optimizer), cache (pretrained towers).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from xmodal_jax import errors
from xmodal_jax.data import feature_cache, sources
from xmodal_jax.data.captions import teacher_forcing
from xmodal_jax.data.iterator import EpochBatchIterator
from xmodal_jax.data.preprocess import normalize_images
from xmodal_jax.data.text import TokenizerBase
from xmodal_jax.models import efficientnet_lite, efficientnet_weights
from xmodal_jax.models.caption_decoder import GRUCaptionDecoder
from xmodal_jax.models.efficientnet_lite import EfficientNetLite
from xmodal_jax.models.resnet import ResNetEncoder
from xmodal_jax.objectives.scst import teacher_forcing_loss
from xmodal_jax.systems.vse import feature_separation_objective as fs_losses, gan_objective as gan_losses
from xmodal_jax.systems.vse import partitioned_optimizer
from xmodal_jax.systems.vse import image_reconstruction_evaluator  # noqa: F401  (registers "image_reconstruction")
from xmodal_jax.systems.vse.dcgan import DCGANDiscriminator, DCGANGenerator, upsamplings
from xmodal_jax.systems.vse.feature_separation_model import NORMALIZE, FeatureSeparation
from xmodal_jax.systems.vse.gru_text import GRUTextEncoder
from xmodal_jax.systems.vse.mfsr_model import DISCRIMINATORS, MFSR
from xmodal_jax.task_bases.retrieval_task import RetrievalTask
from xmodal_jax.train import optimizer as optimizer_lib

WEIGHTS = ("modal", "semantic", "specific", "image", "caption")
PAD = TokenizerBase.pad_id
RESNET = "resnet"


def _part_of(name: str) -> str:
  """Which optimiser owns a top-level parameter subtree."""
  return "disc" if name in DISCRIMINATORS else "main"


class MFSRTask(RetrievalTask):
  """Predict functions: embed_image (images or image_feats -> unit semantic parts), embed_text (tokens, mask ->
  unit semantic parts) and, with image reconstruction, reconstruct_images (-> generated images in [0, 1])."""

  def __init__(self, config, workdir):
    super().__init__(config, workdir)
    w = config.loss_weights
    unknown = sorted(set(w.keys()) - set(WEIGHTS))
    if unknown:
      raise errors.ConfigError(f"config.loss_weights has unknown entries {unknown}; use {WEIGHTS}.")
    self.weights = {k: float(w.get(k, 0.0)) for k in WEIGHTS}
    bad = {k: v for k, v in self.weights.items() if not v >= 0}
    if bad:
      raise errors.ConfigError(f"config.loss_weights {bad}: weights must be >= 0 (0 turns a component off).")
    if self.weights["semantic"] <= 0:
      raise errors.ConfigError("config.loss_weights.semantic must be > 0: retrieval uses the semantic parts, which "
                               "only the semantic loss aligns across modalities.")
    sep = config.model.separation
    if not sep.enabled:
      on = [k for k in ("modal", "specific", "image", "caption") if self.weights[k] > 0]
      if on:
        raise errors.ConfigError(f"config.loss_weights {on} > 0 need the feature separation: set "
                                 "config.model.separation.enabled=True (or those weights to 0 for plain VSE++).")
    elif sep.normalize not in NORMALIZE:
      raise errors.ConfigError(f"config.model.separation.normalize={sep.normalize!r}: use one of {NORMALIZE}.")
    elif self.weights["specific"] > 0 and sep.specific_dim != sep.semantic_dim:
      raise errors.ConfigError(f"config.model.separation.specific_dim={sep.specific_dim} must equal semantic_dim="
                               f"{sep.semantic_dim}: the specific loss takes their dot products (eq. 10).")
    if self.weights["image"] > 0:
      try:
        upsamplings(int(config.model.generator.image_size))
      except ValueError as e:
        raise errors.ConfigError(f"config.model.generator.image_size: {e}") from None
    recon = [name for name, spec in config.evals.items() if spec.type == "image_reconstruction"
             and (spec.every or spec.at_end)]
    if recon and not self.gan:
      raise errors.ConfigError(f"config.evals {recon}: image_reconstruction evaluators need the image reconstruction "
                               f"branch (config.loss_weights.image > 0); turn them off with "
                               f"--config.evals.{recon[0]}.at_end=False.")
    self.tower = str(config.model.image.tower)
    if self.tower != RESNET and not self.tower.startswith("efficientnet-lite"):
      raise errors.ConfigError(f"config.model.image.tower={self.tower!r}: use 'resnet' (from scratch) or a "
                               "pretrained 'efficientnet-lite0' / 'efficientnet-lite1' / 'efficientnet-lite2'.")
    self.cached = self.tower != RESNET and bool(config.cache.enabled)
    self._tower_weights = None
    self._caches: dict[str, feature_cache.FeatureCache] = {}
    self._predict["reconstruct_images"] = self.reconstruct_images

  @property
  def gan(self) -> bool:
    return self.weights["image"] > 0

  @property
  def caption(self) -> bool:
    return self.weights["caption"] > 0

  # ---- assets and model
  def setup(self, *, training: bool) -> None:
    if self.model is not None:
      return
    cfg, dtype = self.config, jnp.dtype(self.config.model.dtype)
    self.tokenizer = self.load_or_build_tokenizer(training)
    if training:
      self.check_eval_splits()
    backbone = None
    if self.tower == RESNET:
      fields = {k: v for k, v in cfg.model.image.items() if k != "tower"}
      backbone = ResNetEncoder(**fields, dtype=dtype)
    else:
      try:
        self._tower_weights = efficientnet_weights.load(self.tower)
      except (ImportError, FileNotFoundError) as e:
        raise errors.MissingError(str(e)) from None
      self._tower = EfficientNetLite(self.tower)
      size = cfg.data.image_size
      self._feature_dim = jax.eval_shape(
          lambda v: self._tower.apply(v, jnp.zeros((1, size, size, 3))), self._tower_variables()).shape[-1]
    sep = cfg.model.separation
    separation = (lambda name: FeatureSeparation(
        modal_dim=sep.modal_dim, semantic_dim=sep.semantic_dim, specific_dim=sep.specific_dim,
        hidden_dim=sep.hidden_dim, depth=sep.depth, normalize=sep.normalize, dtype=dtype, name=name)
                  ) if sep.enabled else (lambda name: None)
    gen, disc = cfg.model.generator, cfg.model.discriminator
    dec = cfg.model.caption_decoder
    self.model = MFSR(
        text_encoder=GRUTextEncoder(vocab_size=len(self.tokenizer), **cfg.model.text, dtype=dtype),
        image_backbone=backbone, embed_dim=cfg.model.embed_dim,
        image_separation=separation("image_separation"), text_separation=separation("text_separation"),
        generator=DCGANGenerator(gen.image_size, gen.base_width) if self.gan else None,
        disc_real=DCGANDiscriminator(gen.image_size, disc.base_width) if self.gan else None,
        disc_content=DCGANDiscriminator(gen.image_size, disc.base_width) if self.gan else None,
        caption_decoder=(GRUCaptionDecoder(len(self.tokenizer), cfg.data.max_len + 1, width=dec.width,
                                           dropout_rate=dec.dropout_rate, dtype=dtype) if self.caption else None),
        dtype=dtype)

  def _tower_variables(self, frozen=None):
    frozen = frozen if frozen is not None else self.frozen_params()
    return {"params": frozen["params"]["image_tower"], "batch_stats": frozen["batch_stats"]["image_tower"]}

  def frozen_params(self):
    if self._tower_weights is None:
      return None
    w = self._tower_weights
    return {"params": {"image_tower": {k: v for k, v in w["params"].items() if k != "classifier"}},
            "batch_stats": {"image_tower": w["batch_stats"]}}

  def _dummy_image_input(self, n: int):
    if self.tower == RESNET:
      size = self.config.data.image_size
      return jnp.zeros((n, size, size, 3), jnp.float32)
    return jnp.zeros((n, self._feature_dim), jnp.float32)

  def init_variables(self, rng):
    length = self.config.data.max_len
    tokens = jnp.ones((2, length), jnp.int32)
    params_rng, dropout_rng = jax.random.split(rng)
    variables = self.model.init({"params": params_rng, "dropout": dropout_rng}, self._dummy_image_input(2), tokens,
                                tokens > 0, jnp.ones((2, length + 1), jnp.int32), train=False)
    return dict(variables)

  def make_optimizer(self):
    transforms = {"main": optimizer_lib.create_optimizer(self.config.optimizer, self.config.train.num_steps)}
    if self.gan:
      transforms["disc"] = optimizer_lib.create_optimizer(self.config.gan.optimizer, self.config.train.num_steps)
    return partitioned_optimizer.partitioned(transforms, _part_of)

  # ---- feature caches (pretrained towers)
  def _cache_splits(self) -> dict[str, feature_cache.SplitPlan]:
    views = int(self.config.cache.train_views)
    plans = {"train": feature_cache.SplitPlan(len(self.split("train")), views)}
    for spec in self.config.evals.values():
      if spec.split not in plans:
        plans[spec.split] = feature_cache.SplitPlan(len(self.split(spec.split)), 1)
    return plans

  def _view_keys(self, view: int, count: int) -> np.ndarray:
    return np.random.default_rng([int(self.config.cache.view_seed), 7919, view]).integers(0, 2**32, count,
                                                                                          dtype=np.uint32)

  def _cache(self, side: str) -> feature_cache.FeatureCache:
    """"features": the frozen tower's pooled features; "pixels": the generator's real images (uint8)."""
    if side in self._caches:
      return self._caches[side]
    cfg = self.config
    size, flip = cfg.data.image_size, bool(cfg.data.flip)
    key = {"side": f"mfsr_{side}", "source": sources.source_fingerprint(cfg.data), "image_size": size,
           "prepare_size": cfg.data.prepare_size, "flip": flip, "views": int(cfg.cache.train_views),
           "view_seed": int(cfg.cache.view_seed)}
    if side == "features":
      key.update(tower=self.tower,
                 weights=efficientnet_weights.file_sha256(str(efficientnet_weights.source_file(self.tower))))
      tower_vars = jax.device_put(self._tower_variables())
      run = jax.jit(lambda v, x: self._tower.apply(v, efficientnet_lite.normalize_images(x)))
      transform, dtype = (lambda images: np.asarray(run(tower_vars, images))), str(cfg.cache.dtype)
    else:
      out = int(cfg.model.generator.image_size)
      key.update(generator_size=out)
      resize = jax.jit(lambda x: jax.image.resize(x.astype(jnp.float32), (x.shape[0], out, out, 3), "linear",
                                                  antialias=True))
      transform, dtype = (lambda images: np.clip(np.round(np.asarray(resize(images))), 0, 255)), "uint8"

    def encode(split, rows, view):
      data = self.split(split)
      keys = None if view == 0 else self._view_keys(view, len(data))[rows]
      return transform(data.load_images(rows, size, keys=keys, flip=flip))

    self._caches[side] = feature_cache.ensure(key, self._cache_splits(), encode, directory="", dtype=dtype,
                                              batch_size=int(cfg.cache.batch_size))
    return self._caches[side]

  # ---- data
  def train_iterator(self, *, process_index, process_count):
    cfg = self.config
    data, toks = self.split("train"), self.tokens("train")
    if self.cached:
      features = self._cache("features")
      pixels = self._cache("pixels") if self.gan else None

    def targets(indices, keys):
      rows = toks.sample_one_per_image(indices, keys)
      out = {"tokens": toks.tokens[rows], "mask": toks.mask[rows], "image_ids": data.image_ids[indices]}
      if self.caption:
        out.update(teacher_forcing(toks.tokens[rows], cfg.data.max_len + 1))
      return out

    if not self.cached:
      return self.image_iterator(np.arange(len(data)), targets, process_index=process_index,
                                 process_count=process_count)

    def load(indices, keys):
      views = keys % features.views("train")
      batch = dict(targets(indices, keys), image_feats=features.read("train", indices, views))
      if pixels is not None:
        batch["gan_images"] = pixels.read("train", indices, views).astype(np.uint8)
      return batch

    return EpochBatchIterator(len(data), cfg.train.batch_size, load, seed=cfg.seed, process_index=process_index,
                              process_count=process_count, num_threads=cfg.data.num_threads,
                              prefetch=cfg.data.prefetch)

  # ---- inputs of the model
  def _image_input(self, frozen, images=None, image_feats=None):
    """The image side's model input: normalised images (resnet), or the tower's pooled features [batch, F]."""
    if image_feats is not None:
      return image_feats
    if self.tower == RESNET:
      return normalize_images(images)
    feats = self._tower.apply(self._tower_variables(frozen), efficientnet_lite.normalize_images(images))
    return jax.lax.stop_gradient(feats)

  def _real_images(self, batch) -> jax.Array:
    """The generator's targets x in [-1, 1], [batch, S, S, 3]."""
    size = int(self.config.model.generator.image_size)
    images = batch["gan_images"] if "gan_images" in batch else batch["images"]
    x = normalize_images(images)
    if x.shape[1:3] != (size, size):
      x = jax.image.resize(x, (x.shape[0], size, size, 3), "linear", antialias=True)
    return x

  # ---- the objective and the alternating step
  def _encoder_losses(self, variables, batch, image_x, rng, ctx):
    """L_mo, L_se, L_sp, L_cap-re (weighted sum, metrics, image parts)."""
    model, w = self.model, self.weights
    v = model.apply(variables, image_x, method=MFSR.image_parts)
    l = model.apply(variables, batch["tokens"], batch["mask"], method=MFSR.text_parts)
    total, metrics = self.objective(v["se"], l["se"], batch["image_ids"], ctx)
    metrics = dict(metrics, semantic_loss=total)
    total = w["semantic"] * total
    if w["modal"] > 0:
      loss, aux = fs_losses.modal_loss(v["mo"], l["mo"])
      total, metrics = total + w["modal"] * loss, dict(metrics, modal_loss=loss, **aux)
    if w["specific"] > 0:
      loss, aux = fs_losses.specific_loss(v["sp"], v["se"], l["sp"], l["se"])
      total, metrics = total + w["specific"] * loss, dict(metrics, specific_loss=loss, **aux)
    if w["caption"] > 0:
      logits = model.apply(variables, MFSR.code(l), batch["inputs"], deterministic=False,
                           rngs={"dropout": rng}, method=MFSR.caption_logits)
      loss, aux = teacher_forcing_loss(logits, batch["targets"], batch["targets"] != PAD)
      total = total + w["caption"] * loss
      metrics = dict(metrics, caption_loss=loss, caption_token_accuracy=aux["token_accuracy"])
    return total, metrics, v

  def _generate(self, params, stats, code):
    """x' = G(code) in training mode -> (images, the batch_stats collection with G's statistics updated)."""
    fake, updated = self.model.apply({"params": params, "batch_stats": stats}, code, train=True,
                                     method=MFSR.generate, mutable=["batch_stats"])
    return fake, updated["batch_stats"]

  def _discriminate(self, params, stats, fake, real):
    """D1(x), D1(x'), D2(x', x), D2(x'', x) in training mode (x'' = x' of the next sample) -> (logits, stats)."""
    model, logits = self.model, []
    calls = ((MFSR.discriminate_real, (real,)), (MFSR.discriminate_real, (fake,)),
             (MFSR.discriminate_content, (fake, real)), (MFSR.discriminate_content, (jnp.roll(fake, 1, 0), real)))
    for method, args in calls:
      out, updated = model.apply({"params": params, "batch_stats": stats}, *args, train=True, method=method,
                                 mutable=["batch_stats"])
      logits.append(out)
      stats = updated["batch_stats"]
    return logits, stats

  def loss_fn(self, params, batch, rng, ctx):
    """L without image reconstruction (the step below handles it)."""
    image_x = self._image_input(ctx.frozen, batch.get("images"), batch.get("image_feats"))
    total, metrics, _ = self._encoder_losses({"params": params}, batch, image_x, rng, ctx)
    return total, metrics

  def train_step(self, state, batch, rng, ctx):
    tx, part_of = state.tx, _part_of
    subtree = partitioned_optimizer.subtree
    params, opt_state = state.params, state.opt_state
    if not self.gan:
      main = subtree(params, part_of, "main")
      (loss, metrics), grads = jax.value_and_grad(self.loss_fn, has_aux=True)(main, batch, rng, ctx)
      params, opt_state = partitioned_optimizer.update_part(tx, "main", grads, opt_state, params)
      metrics = dict(metrics, loss=loss, grad_norm=optimizer_lib.gradient_norm(grads))
      return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    stats = state.model_state["batch_stats"]
    model, w = self.model, self.weights
    image_x = self._image_input(ctx.frozen, batch.get("images"), batch.get("image_feats"))
    real = self._real_images(batch)

    # 1. The discriminators, on x' from the current encoders and generator (held fixed).
    v = model.apply({"params": params}, image_x, method=MFSR.image_parts)
    fake, _ = self._generate(params, stats, jax.lax.stop_gradient(MFSR.code(v)))
    fake = jax.lax.stop_gradient(fake)

    def disc_loss(disc_params):
      logits, new_stats = self._discriminate(dict(params, **disc_params), stats, fake, real)
      loss, aux = gan_losses.discriminator_loss(*logits)
      return loss, (aux, new_stats)

    (d_loss, (d_metrics, stats)), d_grads = jax.value_and_grad(disc_loss, has_aux=True)(
        subtree(params, part_of, "disc"))
    params, opt_state = partitioned_optimizer.update_part(tx, "disc", d_grads, opt_state, params)

    # 2. Everything else, against the updated discriminators (held fixed).
    def main_loss(main_params):
      full = dict(params, **main_params)
      total, metrics, v = self._encoder_losses({"params": full}, batch, image_x, rng, ctx)
      fake, new_stats = self._generate(full, stats, MFSR.code(v))
      logits, _ = self._discriminate(full, new_stats, fake, real)  # D's statistics come from its own update
      loss, aux = gan_losses.generator_loss(*logits[1:])
      metrics = dict(metrics, image_loss=loss, reconstruction_l1=jnp.mean(jnp.abs(fake - real)) / 2, **aux)
      return total + w["image"] * loss, (metrics, new_stats)

    (loss, (metrics, stats)), grads = jax.value_and_grad(main_loss, has_aux=True)(subtree(params, part_of, "main"))
    params, opt_state = partitioned_optimizer.update_part(tx, "main", grads, opt_state, params)
    metrics = dict(metrics, **d_metrics, loss=loss, disc_loss=d_loss, grad_norm=optimizer_lib.gradient_norm(grads),
                   disc_grad_norm=optimizer_lib.gradient_norm(d_grads))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         model_state=dict(state.model_state, batch_stats=stats)), metrics

  # ---- predict functions
  def _variables(self, variables):
    return {k: v for k, v in variables.items() if k != "frozen"}

  def embed_image(self, variables, images=None, image_feats=None):
    """uint8 images [batch, H, W, 3], or the cached pooled features [batch, F] -> unit semantic parts [batch, D]."""
    x = self._image_input(variables.get("frozen"), images, image_feats)
    return self.model.apply(self._variables(variables), x, method=MFSR.image_parts)["se"]

  def embed_text(self, variables, tokens, mask):
    """tokens, mask [batch, max_len] -> unit semantic parts [batch, D]."""
    return self.model.apply(self._variables(variables), tokens, mask, method=MFSR.text_parts)["se"]

  def reconstruct_images(self, variables, images=None, image_feats=None):
    """Images (or cached features) -> G([v^mo; v^se; v^sp]) in [0, 1], [batch, S, S, 3] (running BN stats)."""
    x = self._image_input(variables.get("frozen"), images, image_feats)
    v = self.model.apply(self._variables(variables), x, method=MFSR.image_parts)
    fake = self.model.apply(self._variables(variables), MFSR.code(v), train=False, method=MFSR.generate)
    return (fake + 1.0) / 2.0

  # ---- evaluation data
  def make_eval_data(self, split):
    data = super().make_eval_data(split)
    if self.cached:
      count = len(self.split(split))
      data.image_inputs = {"image_feats": self._cache("features").read(split, np.arange(count), 0)}
    if self.gan and any(spec.type == "image_reconstruction" and spec.split == split
                        for spec in self.config.evals.values()):
      if self.cached:
        count = len(self.split(split))
        targets = self._cache("pixels").read(split, np.arange(count), 0).astype(np.uint8)
      else:
        targets = np.asarray(self._real_images({"images": self.eval_images(split)}) * 127.5 + 127.5)
        targets = np.clip(np.round(targets), 0, 255).astype(np.uint8)
      data.extras.update(target_images=targets, grid_path=os.path.join(self.workdir, f"reconstructions_{split}.png"))
    return data
