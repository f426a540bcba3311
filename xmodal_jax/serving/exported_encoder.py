"""A run's two encoders as serialised StableHLO (`jax.export`), for serving without the training code.

  OUT/encoder/
    encoder.json          image_size, max_len, dim, step, platforms, and the sha256 of every file below
    embed_image.stablehlo  f(variables, images uint8 [b, S, S, 3]) -> unit vectors float32 [b, dim]
    embed_text.stablehlo   f(variables, tokens int32 [b, L], mask bool [b, L]) -> unit vectors float32 [b, dim]
    variables.npz          the variables both take (flattened "a/b/c" names; np.load without pickle)
    tokenizer.json         the run's tokenizer (captions -> tokens exactly as in training)

The batch dimension `b` is symbolic, so one artifact serves any batch size; the weights are an argument, not
constants inside the program, so the artifacts stay small and the weights are read with numpy alone. jax.export
over jax2tf: the serving side here is JAX, and StableHLO is what XLA, IREE and TF Serving's XLA path consume.

  encoders = load_encoders(OUT)
  vectors = encoders.encode_texts(["a red square"])      # float32 [1, dim]
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from xmodal_jax import errors
from xmodal_jax.data import tokenizers
from xmodal_jax.serving.embedding_export import file_sha256, write_json_atomic

ENCODER_DIR = "encoder"
_FILES = ("embed_image.stablehlo", "embed_text.stablehlo", "variables.npz", "tokenizer.json")


def _plain(tree: Any) -> Any:
  """Nested dicts of host arrays (no FrozenDict / boxed metadata): a pytree jax.export can serialise."""
  if hasattr(tree, "items"):
    return {str(k): _plain(v) for k, v in tree.items()}
  return np.asarray(jax.device_get(tree))


def write_encoders(out_dir: str, *, embed_image: Callable, embed_text: Callable, variables: Any, image_size: int,
                   max_len: int, dim: int, tokenizer_file: str, step: int,
                   platforms: Sequence[str] | None = None) -> dict[str, Any]:
  """Exports both encoders to `out_dir/encoder/` (replacing what is there) and returns encoder.json's content.

  Args:
    embed_image, embed_text: the task's predict functions, `f(variables, images)` / `f(variables, tokens, mask)`.
    variables: what they take (params, model state, frozen params); gathered to the host.
    platforms: lowering platforms (default: this backend and "cpu"), e.g. ("cpu", "tpu", "cuda").
  """
  folder = os.path.join(out_dir, ENCODER_DIR)
  tmp = folder + f".tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  host_vars = _plain(variables)
  flat = traverse_util.flatten_dict(host_vars, sep="/")
  np.savez(os.path.join(tmp, "variables.npz"), **flat)
  platforms = tuple(platforms or sorted({jax.default_backend(), "cpu"}))
  var_spec = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), host_vars)
  (b,) = jax.export.symbolic_shape("b")
  programs = {
      "embed_image": (lambda v, images: embed_image(v, images),
                      (jax.ShapeDtypeStruct((b, image_size, image_size, 3), jnp.uint8),)),
      "embed_text": (lambda v, tokens, mask: embed_text(v, tokens, mask),
                     (jax.ShapeDtypeStruct((b, max_len), jnp.int32), jax.ShapeDtypeStruct((b, max_len), jnp.bool_))),
  }
  for name, (fn, specs) in programs.items():
    exported = jax.export.export(jax.jit(fn), platforms=platforms)(var_spec, *specs)
    with open(os.path.join(tmp, f"{name}.stablehlo"), "wb") as f:
      f.write(exported.serialize())
  shutil.copyfile(tokenizer_file, os.path.join(tmp, "tokenizer.json"))
  info = {"image_size": int(image_size), "max_len": int(max_len), "dim": int(dim), "step": int(step),
          "platforms": list(platforms), "jax": jax.__version__,
          "sha256": {name: file_sha256(os.path.join(tmp, name)) for name in _FILES}}
  write_json_atomic(os.path.join(tmp, "encoder.json"), info)
  shutil.rmtree(folder, ignore_errors=True)
  os.replace(tmp, folder)
  return info


def read_encoder_info(out_dir: str) -> dict[str, Any] | None:
  path = os.path.join(out_dir, ENCODER_DIR, "encoder.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


class ExportedEncoders:
  """The exported encoders of an export directory, run with `jax.jit` on this machine's default device.

  Attributes: image_size (S), max_len (L), dim, step, max_batch (the largest batch one call encodes; bigger
  inputs are split).
  """

  def __init__(self, out_dir: str, *, max_batch: int = 64, verify: bool = True):
    folder = os.path.join(out_dir, ENCODER_DIR)
    info = read_encoder_info(out_dir)
    if info is None:
      raise errors.MissingError(f"{folder}/encoder.json not found: export the encoders with `xmodal export "
                                f"--workdir=RUN --out={out_dir}` (they are written unless --no_encoders).")
    for name in _FILES:
      path = os.path.join(folder, name)
      if not os.path.exists(path):
        raise errors.MissingError(f"{path} not found: rerun `xmodal export` to rewrite the encoders.")
      if verify and file_sha256(path) != info["sha256"][name]:
        raise errors.DataError(f"{path} does not match its sha256 in encoder.json: it was changed or damaged; "
                               "rerun `xmodal export` to rewrite the encoders.")
    if jax.default_backend() not in info["platforms"]:
      raise errors.ConfigError(f"{folder} was exported for {info['platforms']}, not for this machine's "
                               f"{jax.default_backend()!r}; export again here or with that platform.")
    self.image_size, self.max_len, self.dim, self.step = (int(info["image_size"]), int(info["max_len"]),
                                                          int(info["dim"]), int(info["step"]))
    self.max_batch = int(max_batch)
    with np.load(os.path.join(folder, "variables.npz"), allow_pickle=False) as data:
      flat = {k: data[k] for k in data.files}
    self._variables = jax.device_put(traverse_util.unflatten_dict(flat, sep="/"))
    self._programs = {}
    for name in ("embed_image", "embed_text"):
      with open(os.path.join(folder, f"{name}.stablehlo"), "rb") as f:
        self._programs[name] = jax.jit(jax.export.deserialize(bytearray(f.read())).call)
    self.tokenizer = tokenizers.load_tokenizer(os.path.join(folder, "tokenizer.json"))

  def _batched(self, name: str, *arrays: np.ndarray) -> np.ndarray:
    n = len(arrays[0])
    if n == 0:
      return np.zeros([0, self.dim], np.float32)
    out = [np.asarray(self._programs[name](self._variables, *(a[s:s + self.max_batch] for a in arrays)))
           for s in range(0, n, self.max_batch)]
    return np.concatenate(out).astype(np.float32)

  def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
    """Captions -> unit vectors float32 [n, dim] (tokenised as in training, cut at max_len)."""
    try:
      tokens, mask = self.tokenizer.encode_batch([str(t) for t in texts], self.max_len)
    except ValueError as e:  # e.g. a text with no words
      raise errors.DataError(str(e)) from None
    return self._batched("embed_text", np.asarray(tokens, np.int32), np.asarray(mask, bool))

  def encode_images(self, images: np.ndarray) -> np.ndarray:
    """uint8 [n, S, S, 3] (S = image_size: centre-crop and resize first) -> unit vectors float32 [n, dim]."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 3) or images.dtype != np.uint8:
      raise errors.DataError(f"encode_images takes uint8 [n, {self.image_size}, {self.image_size}, 3]; got "
                             f"{images.dtype} {list(images.shape)}.")
    return self._batched("embed_image", images)


def load_encoders(out_dir: str, **kwargs) -> ExportedEncoders:
  return ExportedEncoders(out_dir, **kwargs)
