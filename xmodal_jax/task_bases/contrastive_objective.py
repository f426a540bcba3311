"""The image-text objective of the retrieval tasks, chosen by `config.loss`, over the GLOBAL batch.

  kind="hinge":   VSE++ (Faghri et al. 2018): margin, sum of hinges, max violation from
                  `max_violation_warmup_steps` on (objectives/contrastive_hinge.py).
  kind="infonce": CLIP (Radford et al. 2021): symmetric InfoNCE with logits exp(s) x.y, s = the model's learnable
                  `logit_scale` clamped at `max_logit_scale` (CLIP: ln 100), or the fixed 1/`temperature`.
  kind="sigmoid": SigLIP (Zhai et al. 2023, eq. 1): per-pair log-sigmoid with exp(s) x.y + b, s and b the model's
                  `logit_scale` / `logit_bias`.
`chunked=True` (infonce, sigmoid) computes the same loss with the ring forms of objectives/ring_contrastive.py,
which never hold more than a [B/n, B/n] block of the [B, B] logits on a device (n = the mesh's `data` size);
the plain forms let XLA partition the full matrix. Two captions of one image in the batch (equal image ids) are
not negatives of each other: masked out for InfoNCE and the hinge, positives for the sigmoid loss.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from xmodal_jax import errors
from xmodal_jax.objectives import ring_contrastive
from xmodal_jax.objectives.contrastive_hinge import contrastive_hinge_loss
from xmodal_jax.objectives.contrastive_sigmoid import sigmoid_loss
from xmodal_jax.objectives.contrastive_softmax import infonce_loss

LOSSES = ("hinge", "infonce", "sigmoid")
CLIP_MAX_LOGIT_SCALE = float(np.log(100.0))


def loss_config(kind: str = "infonce", **fields) -> ml_collections.ConfigDict:
  """The `config.loss` section with every field (any is overridable from the command line)."""
  config = dict(
      kind=kind,                      # hinge | infonce | sigmoid
      chunked=False,                  # infonce / sigmoid: the ring form (memory per device ~ [B/n, B/n])
      learn_temperature=True,         # infonce: the model's logit_scale (else the fixed `temperature`)
      temperature=0.07,               # infonce with learn_temperature=False
      max_logit_scale=CLIP_MAX_LOGIT_SCALE,  # clamp of logit_scale (CLIP: ln 100)
      margin=0.2, max_violation=True, max_violation_warmup_steps=0)  # hinge
  config.update(fields)
  return ml_collections.ConfigDict(config)


def kind_of(cfg: ml_collections.ConfigDict) -> str:
  """config.loss.kind; a section without one is VSE++'s hinge (configs/retrieval/common.py:hinge_loss)."""
  return str(cfg.get("kind", "hinge"))


def check(cfg: ml_collections.ConfigDict) -> None:
  """Config errors before anything is built."""
  kind = kind_of(cfg)
  if kind not in LOSSES:
    raise errors.ConfigError(f"config.loss.kind={kind!r}; use one of {LOSSES}.")
  if cfg.get("chunked", False) and kind == "hinge":
    raise errors.ConfigError("config.loss.chunked=True has a ring form for kind='infonce' and 'sigmoid' only; set "
                             "config.loss.chunked=False for the hinge loss.")
  if kind == "infonce" and not cfg.get("learn_temperature", True) and not cfg.temperature > 0:
    raise errors.ConfigError(f"config.loss.temperature={cfg.temperature}: must be > 0.")


def contrastive_loss(cfg: ml_collections.ConfigDict, image_emb: jax.Array, text_emb: jax.Array,
                     image_ids: jax.Array, scalars: dict[str, jax.Array], step: jax.Array, mesh
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(loss, metrics) of unit embeddings [B, D] (row i of each is pair i), image ids [B] and the model's scalars
  ({"logit_scale"[, "logit_bias"]}); `step` (traced) for the hinge's warm-up, `mesh` for the ring forms."""
  kind = kind_of(cfg)
  if kind == "hinge":
    max_violation = jnp.logical_and(bool(cfg.max_violation), step >= cfg.max_violation_warmup_steps)
    loss, aux = contrastive_hinge_loss(image_emb, text_emb, margin=cfg.margin, max_violation=max_violation,
                                       image_ids=image_ids)
    return loss, dict(aux, max_violation=max_violation.astype(jnp.float32))
  chunked = bool(cfg.get("chunked", False))
  if kind == "infonce":
    if cfg.get("learn_temperature", True):
      scale = jnp.minimum(scalars["logit_scale"], cfg.get("max_logit_scale", CLIP_MAX_LOGIT_SCALE))
    else:
      scale = jnp.asarray(np.log(1.0 / cfg.temperature), jnp.float32)
    if chunked:
      loss, aux = ring_contrastive.ring_infonce(image_emb, text_emb, scale, image_ids, mesh=mesh)
    else:
      loss, aux = infonce_loss(image_emb, text_emb, scale, image_ids)
    return loss, dict(aux, temperature=jnp.exp(-scale))
  if "logit_bias" not in scalars:
    raise errors.ConfigError("config.loss.kind='sigmoid' needs the model's logit_bias (SigLIP); this model was built "
                             "without one.")
  scale = jnp.minimum(scalars["logit_scale"], cfg.get("max_logit_scale", CLIP_MAX_LOGIT_SCALE))
  bias = scalars["logit_bias"]
  if chunked:
    loss, aux = ring_contrastive.ring_sigmoid(image_emb, text_emb, scale, bias, image_ids, mesh=mesh)
  else:
    loss, aux = sigmoid_loss(image_emb, text_emb, scale, bias, image_ids)
  return loss, dict(aux, logit_scale_exp=jnp.exp(scale), logit_bias=bias)


def initial_scalars(kind: str) -> dict[str, float | None]:
  """The models' initial logit_scale / logit_bias for a loss kind: CLIP log(1/0.07) and no bias; SigLIP log(10)
  and -10 (Zhai et al. 2023, sec. 3)."""
  if kind == "sigmoid":
    return {"logit_scale_init": float(np.log(10.0)), "logit_bias_init": -10.0}
  return {"logit_scale_init": float(np.log(1 / 0.07)), "logit_bias_init": None}
