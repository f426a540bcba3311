"""EfficientNet-Lite in Flax against a PyTorch reference of the same checkpoint, the torch-free .pth reader
against torch.load, and the converter's errors."""
import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import REPO
from xmodal_jax import errors
from xmodal_jax.models import efficientnet_lite, efficientnet_weights
from xmodal_jax.models.torch_state_dict import read_state_dict

FLICKR8K = os.path.join(os.path.dirname(REPO), "shared", "data", "flickr8k")


def _installed(name):
  try:
    return efficientnet_weights.source_file(name)
  except errors.MissingError as e:
    pytest.skip(str(e))


def _real_images(size, n=4):
  from PIL import Image
  files = sorted(glob.glob(os.path.join(FLICKR8K, "images", "*.jpg")))[:n]
  if not files:
    pytest.skip(f"Flickr8k not found at {FLICKR8K} (real-image parity needs it)")
  return np.stack([np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BICUBIC)) for f in files])


@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite2"])
@pytest.mark.parametrize("images", ["random", "real"])
def test_logits_match_the_pytorch_reference(name, images, tmp_path, monkeypatch):
  torch = pytest.importorskip("torch", reason="parity reference needs torch: launch/test.sh installs it")
  from tests.reference_efficientnet_lite import EfficientNetLiteTorch
  monkeypatch.setenv("XMODAL_CACHE", str(tmp_path))
  source = _installed(name)
  size = efficientnet_lite.variant(name).resolution
  if images == "random":
    pixels = np.random.default_rng(0).integers(0, 256, (3, size, size, 3)).astype(np.uint8)
  else:
    pixels = _real_images(size)
  x = np.asarray(efficientnet_lite.normalize_images(pixels))
  reference = EfficientNetLiteTorch(torch.load(str(source), weights_only=True, map_location="cpu"))
  with torch.no_grad():
    want = reference(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  model = efficientnet_lite.EfficientNetLite(name)
  got = np.asarray(jax.jit(lambda v, x: model.apply(v, x, logits=True))(efficientnet_weights.load(name), x))
  assert np.max(np.abs(got - want)) <= 1e-4, np.max(np.abs(got - want))
  if images == "real":  # and the prediction is an ImageNet class, not noise: the top-1 agree
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_cut_points_compose_to_the_full_network(tmp_path, monkeypatch):
  monkeypatch.setenv("XMODAL_CACHE", str(tmp_path))
  _installed("efficientnet-lite0")
  variables = efficientnet_weights.load("efficientnet-lite0")
  model = efficientnet_lite.EfficientNetLite("efficientnet-lite0")
  x = efficientnet_lite.normalize_images(np.random.default_rng(1).integers(0, 256, (2, 224, 224, 3)))
  full = model.apply(variables, x)
  cuts = efficientnet_lite.stage_starts(model.spec)
  lower = model.apply(variables, x, stop=cuts["stage6"])
  assert lower.shape == (2, 7, 7, 192)
  np.testing.assert_allclose(model.apply(variables, lower, start=cuts["stage6"]), full, rtol=1e-5, atol=1e-5)
  grid = model.apply(variables, x, pool=False)
  assert grid.shape == (2, 7, 7, 1280)
  np.testing.assert_allclose(model.apply(variables, full, start=cuts["pooled"], logits=True),
                             model.apply(variables, x, logits=True), rtol=1e-5, atol=1e-5)


def test_state_dict_reader_equals_torch_load_and_refuses_other_pickles(tmp_path):
  torch = pytest.importorskip("torch", reason="the reference reader is torch.load")
  source = _installed("efficientnet-lite0")
  ours = read_state_dict(str(source))
  ref = torch.load(str(source), weights_only=True, map_location="cpu")
  assert set(ours) == set(ref) and all(np.array_equal(ours[k], ref[k].numpy()) for k in ref)
  torch.save({k: ref[k] for k in list(ref)[:4]}, tmp_path / "zip.pth")  # the zip serialisation too
  assert all(np.array_equal(read_state_dict(str(tmp_path / "zip.pth"))[k], ref[k].numpy()) for k in list(ref)[:4])
  import pickle
  (tmp_path / "evil.pth").write_bytes(pickle.dumps({"w": __import__("os").system}))
  with pytest.raises(errors.DataError, match="evil.pth.*refused"):
    read_state_dict(str(tmp_path / "evil.pth"))
  (tmp_path / "short.pth").write_bytes(source.read_bytes()[:100_000])
  with pytest.raises(errors.DataError, match="short.pth"):
    read_state_dict(str(tmp_path / "short.pth"))


def test_converter_errors_name_the_file_and_the_fix(tmp_path, monkeypatch):
  monkeypatch.setenv("XMODAL_CACHE", str(tmp_path))
  with pytest.raises(errors.ConfigError, match="Unknown EfficientNet-Lite variant 'efficientnet-lite9'"):
    efficientnet_weights.load("efficientnet-lite9")
  with pytest.raises(errors.ConfigError, match="No offline ImageNet weights for 'efficientnet-lite3'"):
    efficientnet_weights.load("efficientnet-lite3")
  source = _installed("efficientnet-lite0")
  lite0 = read_state_dict(str(source))
  with pytest.raises(errors.DataError, match="does not fit efficientnet-lite2"):
    efficientnet_weights.convert("efficientnet-lite2", lite0, "lite0.pth")
  efficientnet_weights.load("efficientnet-lite0")
  cached = tmp_path / "weights" / "efficientnet-lite0.safetensors"
  cached.write_bytes(b"garbage")
  with pytest.raises(errors.DataError, match="efficientnet-lite0.safetensors.*xmodal convert-weights"):
    efficientnet_weights.load("efficientnet-lite0")
