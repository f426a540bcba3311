"""mFSR's modal and specific losses (seed 003, eq. 7 and 10), on the parts of systems/vse/feature_separation_model.py.

Modal loss (eq. 7). Each modality's modal parts should gather around their batch mean, and the two means should
separate:
    L_mo = (1/N) sum_i ( ||v_i^mo - mean(v^mo)|| + ||l_i^mo - mean(l^mo)|| ) + exp(-||mean(v^mo) - mean(l^mo)||)
Reading: as printed the exponent is e^{-||v_i^mo - mean(v^mo)||}, which would push each image's modal part away
from its own mean, against the first term; the text says the two modalities' modal features should be apart, so the
exponent here is the distance between the two batch means. Means are over the GLOBAL batch.

Specific loss (eq. 10). Specific parts should carry what the semantic parts do not:
    L_sp = (1/N) sum_i ( exp(v_i^sp . v_i^se) + exp(l_i^sp . l_i^se) )
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

_EPS = 1e-12


def _norm(x: jax.Array) -> jax.Array:
  """Euclidean norm along the last axis, with a finite gradient at 0."""
  return jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=-1) + _EPS)


def modal_loss(v_mo: jax.Array, l_mo: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Eq. 7 (reading above). v_mo [batch, d], l_mo [batch, d] -> (scalar loss, metrics)."""
  v_mean, l_mean = jnp.mean(v_mo, axis=0), jnp.mean(l_mo, axis=0)
  spread = jnp.mean(_norm(v_mo - v_mean) + _norm(l_mo - l_mean))
  gap = _norm(v_mean - l_mean)
  return spread + jnp.exp(-gap), {"modal_spread": spread, "modal_gap": gap}


def specific_loss(v_sp: jax.Array, v_se: jax.Array, l_sp: jax.Array, l_se: jax.Array
                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Eq. 10. Parts [batch, d] (specific and semantic of one modality share d) -> (scalar loss, metrics)."""
  v_dot = jnp.sum(v_sp.astype(jnp.float32) * v_se, axis=-1)
  l_dot = jnp.sum(l_sp.astype(jnp.float32) * l_se, axis=-1)
  return jnp.mean(jnp.exp(v_dot) + jnp.exp(l_dot)), {"specific_cos_image": jnp.mean(v_dot),
                                                    "specific_cos_text": jnp.mean(l_dot)}
