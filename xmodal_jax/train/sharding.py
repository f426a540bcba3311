"""Device mesh, logical-axis rules and shardings: the one place that maps model axes to devices.

Every parameter is annotated with *logical* axis names in the model code (`embed`, `hidden`, `conv_out`,
...). `logical_axis_rules` maps those names onto the two mesh axes (`data`, `model`); changing the
parallelism layout means changing this table (or `config.mesh`), never the models.

Gotcha (see NOTES-stack.md): `jax.make_mesh` defaults to Explicit axis types in this JAX; a plain jitted
step then fails to shard contractions. We always pass Auto axis types.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from absl import logging

from xmodal_jax import errors
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "model")

# Logical axis name -> mesh axis (or None = replicated). Batch dims go over `data`; wide feature dims
# over `model` (tensor parallelism). With FSDP, the otherwise replicated `embed`-like dims are split over
# `data` as well, so each data-parallel replica holds 1/|data| of the parameters.
_BASE_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", "data"),
    ("length", None),
    ("vocab", "model"),
    ("hidden", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),             # per-head width (attention): kept whole
    ("patch", None),          # a ViT patch's flattened pixels (p * p * channels)
    ("conv_out", "model"),
    ("joint", "model"),
    ("queries", "model"),     # S1's query matrix W [K, 64]: K rows split over `model`
    ("query_embed", None),
    ("conv_h", None),
    ("conv_w", None),
)
_FSDP_SHARDED = ("embed", "hidden_in", "conv_in")


def logical_axis_rules(fsdp: bool = False) -> tuple[tuple[str, Any], ...]:
  """The rule table: pairs (logical axis name, mesh axis or None)."""
  extra = tuple((name, "data" if fsdp else None) for name in _FSDP_SHARDED)
  return _BASE_RULES + extra


def create_mesh(shape: Sequence[int] = (-1, 1), axis_names: Sequence[str] = MESH_AXES,
                devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh over all (or the given) devices; one entry of `shape` may be -1 (inferred).

  Example: 8 devices, shape (2, -1) -> a 2x4 mesh with axes (data=2, model=4).
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = list(shape)
  if len(shape) != len(axis_names):
    raise errors.ConfigError(f"config.mesh.shape={tuple(shape)} must have one entry per mesh axis {tuple(axis_names)}.")
  n_infer = shape.count(-1)
  if n_infer > 1:
    raise errors.ConfigError(f"config.mesh.shape={tuple(shape)}: at most one entry may be -1.")
  known = int(np.prod([s for s in shape if s != -1]))
  if n_infer:
    if len(devices) % known:
      raise errors.ConfigError(f"config.mesh.shape={tuple(shape)} does not divide the {len(devices)} devices; "
                       f"choose sizes whose product divides {len(devices)}.")
    shape[shape.index(-1)] = len(devices) // known
  if int(np.prod(shape)) != len(devices):
    raise errors.ConfigError(f"config.mesh.shape={tuple(shape)} needs {int(np.prod(shape))} devices but "
                     f"{len(devices)} are available; set config.mesh.shape so the product is {len(devices)} "
                     "(use -1 for one axis to infer it).")
  return jax.make_mesh(tuple(shape), tuple(axis_names), axis_types=(jax.sharding.AxisType.Auto,) * len(axis_names),
                       devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dim over `data`, everything else replicated."""
  return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def logical_shardings(abstract_boxed_tree: Any, mesh: Mesh, rules) -> Any:
  """Shardings for a tree whose leaves may be `nn.LogicallyPartitioned` boxes (e.g. from eval_shape).

  The returned tree has the structure of `nn.meta.unbox(tree)`: one NamedSharding per array.
  Unannotated leaves are replicated, and so is a dimension that its mesh axes do not divide (logged).
  """
  specs = nn.get_partition_spec(abstract_boxed_tree)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
  shapes = nn.meta.unbox(abstract_boxed_tree)
  return jax.tree_util.tree_map_with_path(lambda path, s, x: _divisible(s, getattr(x, "shape", ()), path), shardings,
                                          shapes)


def _divisible(sharding: NamedSharding, shape: tuple[int, ...], path) -> NamedSharding:
  """`sharding` without the mesh axes that do not divide their dimension (that dimension is then replicated over
  them, with a warning naming the parameter): e.g. 12 attention heads on a `model` axis of 8."""
  spec, changed = list(sharding.spec), []
  for dim, axes in enumerate(spec[:len(shape)]):
    if axes is None:
      continue
    names = axes if isinstance(axes, tuple) else (axes,)
    size = int(np.prod([sharding.mesh.shape[a] for a in names]))
    if shape[dim] % size:
      spec[dim] = None
      changed.append(f"dim {dim} ({shape[dim]}) over {names} ({size})")
  if not changed:
    return sharding
  logging.warning("Replicating %s instead of sharding %s: not divisible.", jax.tree_util.keystr(path),
                  ", ".join(changed))
  return NamedSharding(sharding.mesh, P(*spec))


def global_batch_from_host(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assemble each host's slice of the batch into global arrays sharded over `data`.

  On one host this is a plain sharded `device_put`; with several hosts each contributes its rows.
  """
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}
