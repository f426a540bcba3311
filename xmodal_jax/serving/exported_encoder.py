"""A run's encoders as serialised StableHLO (`jax.export`), for serving without the training code.

  OUT/encoder/
    encoder.json          image_size, max_len, dim, step, platforms, pairs, and the sha256 of every file below
    embed_image.stablehlo  f(variables, images uint8 [b, S, S, 3]) -> unit vectors float32 [b, dim]
    embed_text.stablehlo   f(variables, tokens int32 [b, L], mask bool [b, L]) -> unit vectors float32 [b, dim]
    variables.npz          the variables all programs take (flattened "a/b/c" names; np.load without pickle)
    tokenizer.json         the run's tokenizer (captions -> tokens exactly as in training)
  and for a pairwise run (S2 region-word, S4 single-stream; encoder.json "pairs": {"image": {name: {"shape",
  "dtype"}}, "text": {...}}, per-item shapes):
    pair_image.stablehlo   f(variables, images uint8 [b, S, S, 3]) -> the image's pair set {name: [b, ...]}
    pair_text.stablehlo    f(variables, tokens, mask [b, L]) -> the caption's pair set {name: [b, ...]}
    score_pairs.stablehlo  f(variables, image set {name: [p, ...]}, text set {name: [p, ...]}) -> float32 [p]:
                           the run's score of each aligned pair (row i with row i; higher = better match)

The batch dimensions `b` and `p` are symbolic (shape-polymorphic), so one artifact serves any batch size; the
caller pads a batch to a power of two (at most max_batch) so that few shapes are compiled. Image programs take
the centre crop only: the run's default regions for images without boxes (its `image_predict_inputs(images)`:
the grid of config.regions) are constants inside them. The weights are an argument, not constants inside the
program, so the artifacts stay small and the weights are read with numpy alone. jax.export over jax2tf: the
serving side here is JAX, and StableHLO is what XLA, IREE and TF Serving's XLA path consume.

  encoders = load_encoders(OUT)
  vectors = encoders.encode_texts(["a red square"])      # float32 [1, dim]
  vectors = encoders.encode_images(uint8 [n, S, S, 3])   # float32 [n, dim]
  if encoders.has_pairs:                                 # re-ranking (serve --rerank=K)
    image_set = encoders.pair_images(uint8 [n, S, S, 3]) # {name: [n, ...]}, as embedding_export.read_pair_sets
    text_set = encoders.pair_texts(["a red square"])     # {name: [1, ...]}
    scores = encoders.score_pairs(image_set, text_set)   # float32 [P]; rows aligned; a set of 1 row is broadcast
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
_PAIR_FILES = ("pair_image.stablehlo", "pair_text.stablehlo", "score_pairs.stablehlo")


def _plain(tree: Any) -> Any:
  """Nested dicts of host arrays (no FrozenDict / boxed metadata): a pytree jax.export can serialise."""
  if hasattr(tree, "items"):
    return {str(k): _plain(v) for k, v in tree.items()}
  return np.asarray(jax.device_get(tree))


def _per_image(extras: dict[str, np.ndarray], images) -> dict[str, jax.Array]:
  """Per-image constant inputs (one row each) broadcast to the batch of `images`."""
  return {k: jnp.broadcast_to(jnp.asarray(v), (images.shape[0], *v.shape)) for k, v in extras.items()}


def _spec(tree: Any) -> Any:
  return jax.tree.map(lambda x: {"shape": [int(d) for d in x.shape[1:]], "dtype": np.dtype(x.dtype).name}, tree)


def write_encoders(out_dir: str, *, embed_image: Callable, embed_text: Callable, variables: Any, image_size: int,
                   max_len: int, dim: int, tokenizer_file: str, step: int,
                   image_extras: dict[str, np.ndarray] | None = None, pair_image: Callable | None = None,
                   pair_text: Callable | None = None, score_pairs: Callable | None = None,
                   platforms: Sequence[str] | None = None) -> dict[str, Any]:
  """Exports the encoders to `out_dir/encoder/` (replacing what is there) and returns encoder.json's content.

  Args:
    embed_image, embed_text: the task's predict functions, `f(variables, images=, **image_extras)` /
      `f(variables, tokens, mask)`.
    variables: what they take (params, model state, frozen params); gathered to the host.
    image_extras: inputs of the image functions other than "images" that are the same for every image, one row
      each (e.g. default boxes [R, 4], region_mask [R]); baked into the image programs.
    pair_image, pair_text, score_pairs: a pairwise run's predict functions (all three or none):
      pair_image(variables, images=, **image_extras) -> {name: [b, ...]}, pair_text(variables, tokens, mask) ->
      {name: [b, ...]}, score_pairs(variables, image_set, text_set) -> [p].
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
  extras = {k: np.asarray(v) for k, v in (image_extras or {}).items()}
  (b,) = jax.export.symbolic_shape("b")
  image_spec = (jax.ShapeDtypeStruct((b, image_size, image_size, 3), jnp.uint8),)
  text_spec = (jax.ShapeDtypeStruct((b, max_len), jnp.int32), jax.ShapeDtypeStruct((b, max_len), jnp.bool_))
  programs = {
      "embed_image": (lambda v, images: embed_image(v, images=images, **_per_image(extras, images)), image_spec),
      "embed_text": (lambda v, tokens, mask: embed_text(v, tokens, mask), text_spec),
  }
  pairs = None
  if pair_image is not None:
    programs["pair_image"] = (lambda v, images: pair_image(v, images=images, **_per_image(extras, images)),
                              image_spec)
    programs["pair_text"] = (lambda v, tokens, mask: pair_text(v, tokens, mask), text_spec)
    image_set = jax.eval_shape(programs["pair_image"][0], var_spec, *image_spec)
    text_set = jax.eval_shape(programs["pair_text"][0], var_spec, *text_spec)
    programs["score_pairs"] = (lambda v, image, text: score_pairs(v, image, text), (image_set, text_set))
    pairs = {"image": _spec(image_set), "text": _spec(text_set)}
  for name, (fn, specs) in programs.items():
    exported = jax.export.export(jax.jit(fn), platforms=platforms)(var_spec, *specs)
    with open(os.path.join(tmp, f"{name}.stablehlo"), "wb") as f:
      f.write(exported.serialize())
  shutil.copyfile(tokenizer_file, os.path.join(tmp, "tokenizer.json"))
  files = _FILES + (_PAIR_FILES if pairs else ())
  info = {"image_size": int(image_size), "max_len": int(max_len), "dim": int(dim), "step": int(step),
          "platforms": list(platforms), "jax": jax.__version__, "pairs": pairs,
          "sha256": {name: file_sha256(os.path.join(tmp, name)) for name in files}}
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
  inputs are split; smaller ones are padded to a power of two, so at most log2(max_batch) + 1 shapes compile),
  has_pairs (a pairwise run: pair_images / pair_texts / score_pairs work), pair_arrays ({"image": {name:
  {"shape", "dtype"}}, "text": {...}}: the pair sets' per-item shapes; None without pairs).
  """

  def __init__(self, out_dir: str, *, max_batch: int = 64, verify: bool = True):
    folder = os.path.join(out_dir, ENCODER_DIR)
    info = read_encoder_info(out_dir)
    if info is None:
      raise errors.MissingError(f"{folder}/encoder.json not found: export the encoders with `xmodal export "
                                f"--workdir=RUN --out={out_dir}` (they are written unless --no_encoders).")
    self.pair_arrays = info.get("pairs") or None
    self.has_pairs = self.pair_arrays is not None
    for name in _FILES + (_PAIR_FILES if self.has_pairs else ()):
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
    for name in ("embed_image", "embed_text") + (tuple(p[:-len(".stablehlo")] for p in _PAIR_FILES)
                                                 if self.has_pairs else ()):
      with open(os.path.join(folder, f"{name}.stablehlo"), "rb") as f:
        self._programs[name] = jax.jit(jax.export.deserialize(bytearray(f.read())).call)
    self.tokenizer = tokenizers.load_tokenizer(os.path.join(folder, "tokenizer.json"))

  def _batched(self, name: str, *args: Any) -> Any:
    """Program `name` over pytrees of arrays with a leading dim n, in batches of at most max_batch, each padded
    (repeating its last row) to a power of two -> its outputs [n, ...] as numpy (same structure)."""
    n = len(jax.tree.leaves(args)[0])
    outputs = []
    for start in range(0, n, self.max_batch):
      valid = min(self.max_batch, n - start)
      size = min(self.max_batch, 1 << (valid - 1).bit_length())
      batch = jax.tree.map(lambda a: np.concatenate([a[start:start + valid]] + [a[start + valid - 1:start + valid]]
                                                    * (size - valid)), args)
      out = self._programs[name](self._variables, *batch)
      outputs.append(jax.tree.map(lambda x: np.asarray(x)[:valid], out))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outputs)

  def _tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    try:
      tokens, mask = self.tokenizer.encode_batch([str(t) for t in texts], self.max_len)
    except ValueError as e:  # e.g. a text with no words
      raise errors.DataError(str(e)) from None
    return np.asarray(tokens, np.int32), np.asarray(mask, bool)

  def _images(self, images: np.ndarray, what: str) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 3) or images.dtype != np.uint8:
      raise errors.DataError(f"{what} takes uint8 [n, {self.image_size}, {self.image_size}, 3]; got "
                             f"{images.dtype} {list(images.shape)}.")
    return images

  def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
    """Captions -> unit vectors float32 [n, dim] (tokenised as in training, cut at max_len)."""
    if not len(texts):
      return np.zeros([0, self.dim], np.float32)
    return self._batched("embed_text", *self._tokens(texts)).astype(np.float32)

  def encode_images(self, images: np.ndarray) -> np.ndarray:
    """uint8 [n, S, S, 3] (S = image_size: centre-crop and resize first) -> unit vectors float32 [n, dim]."""
    images = self._images(images, "encode_images")
    if not len(images):
      return np.zeros([0, self.dim], np.float32)
    return self._batched("embed_image", images).astype(np.float32)

  def _need_pairs(self, what: str) -> None:
    if not self.has_pairs:
      raise errors.ConfigError(f"{what}: these encoders are of a run without pairwise scoring (only S2 region-word "
                               "and S4 single-stream runs re-rank); serve without --rerank.")

  def pair_images(self, images: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 [n, S, S, 3] -> the images' pair sets {name: [n, ...]} (the run's default regions)."""
    self._need_pairs("pair_images")
    images = self._images(images, "pair_images")
    return self._batched("pair_image", images) if len(images) else self._empty("image")

  def pair_texts(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Captions -> their pair sets {name: [n, ...]} (tokenised as encode_texts)."""
    self._need_pairs("pair_texts")
    return self._batched("pair_text", *self._tokens(texts)) if len(texts) else self._empty("text")

  def _empty(self, side: str) -> dict[str, np.ndarray]:
    return {k: np.zeros([0, *v["shape"]], v["dtype"]) for k, v in self.pair_arrays[side].items()}

  def score_pairs(self, image_set: dict[str, np.ndarray], text_set: dict[str, np.ndarray]) -> np.ndarray:
    """The run's score of aligned pairs: image_set / text_set {name: [P, ...]} (pair_images / pair_texts or
    embedding_export.read_pair_sets outputs; a set with one row is repeated to P) -> float32 [P]."""
    self._need_pairs("score_pairs")
    sets = []
    for side, given in (("image", image_set), ("text", text_set)):
      spec = self.pair_arrays[side]
      if set(given) != set(spec):
        raise errors.DataError(f"score_pairs: the {side} set has arrays {sorted(given)}; this run's are "
                               f"{sorted(spec)}.")
      sets.append({k: np.asarray(given[k], spec[k]["dtype"]) for k in spec})
    p = max(len(next(iter(s.values()))) for s in sets)
    sets = [{k: np.repeat(v, p, axis=0) if len(v) == 1 and p > 1 else v for k, v in s.items()} for s in sets]
    if p == 0:
      return np.zeros([0], np.float32)
    return self._batched("score_pairs", *sets).astype(np.float32)


def load_encoders(out_dir: str, **kwargs) -> ExportedEncoders:
  return ExportedEncoders(out_dir, **kwargs)
