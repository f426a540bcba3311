"""CLIP / SigLIP: a ViT image tower and a text transformer trained contrastively over the global batch.

Radford et al. 2021 (CLIP, InfoNCE with a learnable temperature) and Zhai et al. 2023 (SigLIP, the sigmoid loss with
a learnable temperature and bias), on the library's transformer block (models/vit.py, models/text_transformer.py,
models/two_tower.py) and objective (task_bases/contrastive_objective.py: plain or chunked ring form).

Trained from scratch, or LiT (Zhai et al. 2022) with the image tower locked: `model.image.init_from=WORKDIR` takes the
image tower of a finished clip run (its latest checkpoint; the ViT fields must match) and `model.image.locked=True`
keeps it frozen (frozen params: never updated or checkpointed; only the projections and the text tower train).
LiT over the pretrained EfficientNet-Lite / MiniLM towers, with their feature caches, is the dual_encoder task with
`model.image.cut="pooled"` and the same losses (configs/clip/clip_flickr8k.py, siglip_flickr8k.py).

Mixed precision: `model.dtype="bfloat16"` computes the towers in bfloat16; parameters, optimiser state, the
normalised embeddings and the loss stay float32. `train.grad_accum_steps=M` splits each global batch into M
micro-batches without losing negatives (GradCache, Gao et al. 2021): embeddings of all micro-batches are computed
first (no gradient), the loss and its gradient with respect to the [B, D] embeddings are taken over the whole
batch, then each micro-batch's forward is run again under `jax.vjp` with its slice of those gradients. Memory holds
one micro-batch's activations; the gradient equals the full batch's. Every micro-batch spans all data-parallel
devices (rows are split within each device's shard).

Config: data (tokenizer word | sentencepiece, max_len), model (dtype, embed_dim, image: ViT fields + locked,
init_from; text: TextTransformer fields + vocab_size: 0 = the tokenizer's size, or a larger fixed table), loss (contrastive_objective.loss_config), train.grad_accum_steps,
zero-shot evaluators (config.evals type zero_shot; classes and prompts per data source: data/zero_shot_classes.py).
Assets: the tokenizer.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from xmodal_jax import errors
from xmodal_jax.data.iterator import EpochBatchIterator
from xmodal_jax.data.preprocess import normalize_images
from xmodal_jax.models import text_transformer as text_lib, vit as vit_lib
from xmodal_jax.models.text_transformer import TextTransformer
from xmodal_jax.models.transformer import ACTIVATIONS
from xmodal_jax.models.two_tower import TwoTower
from xmodal_jax.models.vit import ViT
from xmodal_jax.task_bases import contrastive_objective
from xmodal_jax.task_bases.retrieval_task import RetrievalTask
from xmodal_jax.train import optimizer as optimizer_lib
from xmodal_jax.train.task import with_frozen

VIT_FIELDS = ("patch_size", "width", "depth", "num_heads", "mlp_dim", "pool", "posemb", "pre_norm", "patch_bias",
              "layer_norm_eps", "activation", "dropout_rate", "remat")
TEXT_FIELDS = ("width", "depth", "num_heads", "mlp_dim", "causal", "pool", "layer_norm_eps", "activation",
               "dropout_rate", "remat")
_SCALARS = ("logit_scale", "logit_bias")


def _check_choices(config) -> None:
  """Config values with a fixed set of choices, checked before anything is built."""
  image, text = config.model.image, config.model.text
  for where, section, field, choices in (("image", image, "pool", vit_lib.POOLS),
                                         ("image", image, "posemb", vit_lib.POSEMBS),
                                         ("image", image, "activation", tuple(ACTIVATIONS)),
                                         ("text", text, "pool", text_lib.POOLS),
                                         ("text", text, "activation", tuple(ACTIVATIONS))):
    if field in section and section[field] not in choices:
      raise errors.ConfigError(f"config.model.{where}.{field}={section[field]!r}; use one of {choices}.")
  for where, section in (("image", image), ("text", text)):
    if section.get("width", 0) % max(int(section.get("num_heads", 1)), 1):
      raise errors.ConfigError(f"config.model.{where}.width={section.width} is not divisible by "
                               f"config.model.{where}.num_heads={section.num_heads}.")
  if config.data.image_size % image.get("patch_size", 1):
    raise errors.ConfigError(f"config.data.image_size={config.data.image_size} is not a multiple of "
                             f"config.model.image.patch_size={image.patch_size}.")


def build_model(config, vocab_size: int) -> TwoTower:
  """The TwoTower of a clip config (ViT + text transformer, scalars for config.loss) with `vocab_size` rows."""
  dtype = jnp.dtype(config.model.dtype)
  image = ViT(**_fields(config.model.image, VIT_FIELDS, "image"), dtype=dtype)
  text = TextTransformer(vocab_size=vocab_size, max_len=int(config.data.max_len),
                         **_fields(config.model.text, TEXT_FIELDS, "text"), dtype=dtype)
  return TwoTower(image, text, embed_dim=int(config.model.embed_dim),
                  **contrastive_objective.initial_scalars(contrastive_objective.kind_of(config.loss)))


def _fields(section, names: tuple[str, ...], where: str) -> dict[str, Any]:
  """The module attributes `names` from a config section (mlp_dim 0 = 4 x width)."""
  missing = [n for n in names if n not in section]
  if missing:
    raise errors.ConfigError(f"config.model.{where} lacks {missing}; start from configs/clip/common.py.")
  out = {n: section[n] for n in names}
  out["mlp_dim"] = out["mlp_dim"] or None
  return out


class ClipTask(RetrievalTask):
  """Predict functions: embed_image (uint8 images -> unit vectors), embed_text (tokens, mask -> unit vectors)."""

  def __init__(self, config, workdir):
    super().__init__(config, workdir)
    _check_choices(config)
    self._locked_image = None
    accum = int(config.train.get("grad_accum_steps", 1))
    if accum < 1:
      raise errors.ConfigError(f"config.train.grad_accum_steps={accum}: use 1 (no accumulation) or more.")
    if config.model.image.get("locked", False) and not config.model.image.get("init_from", ""):
      raise errors.ConfigError("config.model.image.locked=True needs config.model.image.init_from=WORKDIR (a clip run "
                               "whose image tower to lock); a randomly initialised tower would stay random.")
    if config.train.batch_size % accum:
      raise errors.ConfigError(f"config.train.batch_size={config.train.batch_size} is not divisible by "
                               f"config.train.grad_accum_steps={accum}.")

  # ---- assets and model
  @property
  def locked(self) -> bool:
    return bool(self.config.model.image.get("locked", False))

  def setup(self, *, training: bool) -> None:
    if self.model is not None:
      return
    cfg = self.config
    self.tokenizer = self.load_or_build_tokenizer(training)
    if training:
      self.check_eval_splits()
    vocab = int(cfg.model.text.get("vocab_size", 0) or 0)
    if vocab and vocab < len(self.tokenizer):
      raise errors.ConfigError(f"config.model.text.vocab_size={vocab} is smaller than the tokenizer's "
                               f"{len(self.tokenizer)} tokens; use 0 (the tokenizer's size) or a larger table.")
    self.model = build_model(cfg, vocab or len(self.tokenizer))
    if cfg.model.image.get("init_from", ""):
      self._locked_image = self._image_tower_from(str(cfg.model.image.init_from))

  def _image_tower_from(self, workdir: str) -> dict:
    """The image tower's params of the clip run in `workdir` (host arrays), checked against this config."""
    from xmodal_jax import systems  # pylint: disable=import-outside-toplevel  (the registry, to load another run)
    try:
      loaded = systems.load_run(workdir, mesh_shape=tuple(self.config.mesh.shape))
    except FileNotFoundError as e:
      raise errors.MissingError(f"config.model.image.init_from={workdir!r}: {e}") from None
    if loaded.task.config.task != "clip":
      raise errors.ConfigError(f"config.model.image.init_from={workdir!r} is a {loaded.task.config.task!r} run; it "
                               "must be a clip run (its image tower is a ViT).")
    theirs = {k: loaded.task.config.model.image[k] for k in VIT_FIELDS if k not in ("dropout_rate", "remat")}
    ours = {k: self.config.model.image[k] for k in theirs}
    if theirs != ours:
      diff = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
      raise errors.ConfigError(f"config.model.image differs from the ViT of {workdir} in {diff} (ours, theirs); "
                               "use the same tower fields.")
    return jax.device_get(loaded.variables["params"]["image_tower"])

  def _dummy_inputs(self):
    size, length = int(self.config.data.image_size), int(self.config.data.max_len)
    return (jnp.zeros((1, size, size, 3), jnp.float32), jnp.zeros((1, length), jnp.int32),
            jnp.ones((1, length), jnp.int32))

  def init_variables(self, rng):
    params = dict(self.model.init(rng, *self._dummy_inputs())["params"])
    if self.locked:
      params.pop("image_tower")
    return {"params": params}

  def frozen_params(self):
    return {"params": {"image_tower": self._locked_image}} if self.locked else None

  def pretrained_params(self):
    if self._locked_image is None or self.locked:
      return None
    return {"image_tower": self._locked_image}   # init_from without locking: a fine-tuned start

  # ---- data
  def train_iterator(self, *, process_index: int, process_count: int) -> EpochBatchIterator:
    return self.caption_iterator(process_index=process_index, process_count=process_count)

  # ---- objective
  def _variables(self, params, frozen):
    return with_frozen(params, frozen) if frozen else {"params": params}

  def _embed(self, variables, batch, rng, deterministic: bool):
    """(image, text) unit embeddings [b, D] float32 of a batch's images and captions."""
    dtype = jnp.dtype(self.config.model.dtype)
    rngs = None if deterministic else {"dropout": rng}
    image = self.model.apply(variables, normalize_images(batch["images"], dtype), deterministic=deterministic,
                             method=TwoTower.encode_image, rngs=rngs)
    text = self.model.apply(variables, batch["tokens"], batch["mask"], deterministic=deterministic,
                            method=TwoTower.encode_text, rngs=rngs)
    return image, text

  def loss_fn(self, params, batch, rng, ctx):
    image, text = self._embed(self._variables(params, ctx.frozen), batch, rng, deterministic=False)
    return self.objective(image, text, batch["image_ids"], ctx, {k: params[k] for k in _SCALARS if k in params})

  def train_step(self, state, batch, rng, ctx):
    steps = int(self.config.train.get("grad_accum_steps", 1))
    if steps == 1:
      return super().train_step(state, batch, rng, ctx)
    params, n = state.params, ctx.mesh.shape["data"]
    micro = jax.tree.map(lambda x: _to_micro(x, steps, n, ctx.mesh), {k: batch[k] for k in ("images", "tokens",
                                                                                               "mask")})
    keys = jax.random.split(rng, steps)
    embed = lambda p, mb, key: self._embed(self._variables(p, ctx.frozen), mb, key, deterministic=False)
    # 1. Embeddings of every micro-batch (no gradient), reassembled into the global batch's row order.
    image_m, text_m = jax.lax.map(lambda xs: embed(jax.lax.stop_gradient(params), *xs), (micro, keys))
    image, text = _from_micro(image_m, n, ctx.mesh), _from_micro(text_m, n, ctx.mesh)
    # 2. The loss over the whole batch, and its gradient with respect to the embeddings and the scalars.
    scalars = {k: params[k] for k in _SCALARS if k in params}
    loss_of = lambda i, t, s: self.objective(i, t, batch["image_ids"], ctx, s)
    (loss, metrics), (grad_image, grad_text, grad_scalars) = jax.value_and_grad(
        loss_of, argnums=(0, 1, 2), has_aux=True)(image, text, scalars)
    # 3. Each micro-batch's forward again, pulled back with its slice of the embedding gradients.
    cotangents = (_to_micro(grad_image, steps, n, ctx.mesh), _to_micro(grad_text, steps, n, ctx.mesh))

    def accumulate(total, xs):
      mb, key, g_image, g_text = xs
      _, pullback = jax.vjp(lambda p: embed(p, mb, key), params)
      return jax.tree.map(jnp.add, total, pullback((g_image, g_text))[0]), None

    grads, _ = jax.lax.scan(accumulate, jax.tree.map(jnp.zeros_like, params), (micro, keys, *cotangents))
    grads = dict(grads, **{k: grads[k] + grad_scalars[k] for k in grad_scalars})
    metrics = dict(metrics, loss=loss, grad_norm=optimizer_lib.gradient_norm(grads))
    return state.apply_gradients(grads), metrics

  # ---- predict functions and evaluation data
  def embed_image(self, variables, images):
    """uint8 [batch, H, W, 3] -> unit [batch, embed_dim]."""
    v = self._variables(variables["params"], variables.get("frozen"))
    return self.model.apply(v, normalize_images(images, jnp.dtype(self.config.model.dtype)),
                            method=TwoTower.encode_image)

  def embed_text(self, variables, tokens, mask):
    """tokens, mask [batch, max_len] -> unit [batch, embed_dim]."""
    v = self._variables(variables["params"], variables.get("frozen"))
    return self.model.apply(v, tokens, mask, method=TwoTower.encode_text)


def _to_micro(x: jax.Array, steps: int, n: int, mesh) -> jax.Array:
  """[B, ...] (sharded over `data`, n devices) -> [steps, B/steps, ...]: micro-batch m holds rows m*r..(m+1)*r-1 of
  every device's shard (r = B/(n*steps)), so each micro-batch is sharded over all n devices."""
  rows = x.shape[0] // (n * steps)
  y = x.reshape(n, steps, rows, *x.shape[1:]).swapaxes(0, 1).reshape(steps, n * rows, *x.shape[1:])
  return jax.lax.with_sharding_constraint(y, NamedSharding(mesh, P(None, "data")))


def _from_micro(y: jax.Array, n: int, mesh) -> jax.Array:
  """The inverse of `_to_micro`: [steps, B/steps, ...] -> [B, ...] in the batch's row order, sharded over `data`."""
  steps, rows = y.shape[0], y.shape[1] // n
  x = y.reshape(steps, n, rows, *y.shape[2:]).swapaxes(0, 1).reshape(steps * n * rows, *y.shape[2:])
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P("data")))
