"""`xmodal export`: embeddings of a split from a trained run (shards, ids, manifest), equal to the in-library
encoders; resumption after a crash mid-export, idempotence, refusal of other inputs; the StableHLO encoders equal
the in-library ones."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from xmodal_jax import errors, systems
from xmodal_jax.serving import embedding_export as fmt, export, exported_encoder


@pytest.fixture(scope="module")
def clip_run(clip_tiny_run):
  """configs/clip/clip_shapes.py:tiny trained on a 2x4 mesh (4 steps; tests/conftest.py) -> workdir."""
  return clip_tiny_run[1]


def _export(workdir: str, out: str, **options):
  """`xmodal export --workdir=WORKDIR --out=OUT` from Python: the run's task (as the command resolves it) exported."""
  return export.export_run(systems.run_task(workdir), out, **options)


@pytest.fixture(scope="module")
def exported(clip_run, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("export") / "val")
  summary = _export(clip_run, out, split="val", shard_size=10)
  return out, summary


def _snapshot(out: str) -> dict[str, float]:
  """{relative path: mtime_ns} of every file an export wrote (not the lock file)."""
  found = {}
  for root, _, files in os.walk(out):
    for name in files:
      if name != ".xmodal.lock":
        path = os.path.join(root, name)
        found[os.path.relpath(path, out)] = os.stat(path).st_mtime_ns
  return found


def test_export_writes_the_split_as_the_in_library_encoders_see_it(clip_run, exported):
  out, summary = exported
  model = systems.load_run(clip_run, mesh_shape=(-1, 1))
  task = model.task
  data, toks = task.split("val"), task.tokens("val")
  assert summary["written"] == {"images": 7, "texts": 32} and summary["kept"] == {"images": 0, "texts": 0}
  manifest = fmt.read_manifest(out)
  assert manifest["step"] == model.step == 4 and manifest["split"] == "val" and manifest["normalized"]
  assert manifest["kinds"]["images"]["count"] == len(data) == 64
  ids, vectors, _ = fmt.read_embeddings(out, "images")
  np.testing.assert_array_equal(ids, data.image_ids)
  reference = model.predict("embed_image", {"images": task.eval_images("val")})
  np.testing.assert_allclose(vectors, reference, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
  text_ids, text_vectors, _ = fmt.read_embeddings(out, "texts")
  np.testing.assert_array_equal(text_ids, np.arange(len(toks.tokens)))
  np.testing.assert_allclose(text_vectors, model.predict("embed_text", {"tokens": toks.tokens, "mask": toks.mask}),
                             atol=1e-5)
  texts = fmt.read_items(out, "texts")
  flat = [c for caps in data.captions for c in caps]
  assert [t["text"] for t in texts] == flat
  assert [t["image_id"] for t in texts] == [int(data.image_ids[i]) for i in toks.text_to_image]
  images = fmt.read_items(out, "images")
  assert all(os.path.isfile(os.path.join(out, item["file"])) for item in images)


def test_stablehlo_encoders_equal_the_in_library_encoders(clip_run, exported):
  out, _ = exported
  model = systems.load_run(clip_run, mesh_shape=(-1, 1))
  task = model.task
  encoders = exported_encoder.load_encoders(out, max_batch=16)  # 64 images: 4 calls, the last one full
  captions = ["a red square", "two blue circles left of a green triangle", "x " * 100]
  np.testing.assert_allclose(encoders.encode_texts(captions),
                             model.predict("embed_text", task.encode_texts(captions)), atol=1e-5)
  images = task.eval_images("val")[:37]  # not a multiple of max_batch
  np.testing.assert_allclose(encoders.encode_images(images), model.predict("embed_image", {"images": images}),
                             atol=1e-5)
  with pytest.raises(errors.DataError, match="empty"):
    encoders.encode_texts(["!!"])
  with pytest.raises(errors.DataError, match=r"uint8 \[n, 64, 64, 3\]"):
    encoders.encode_images(images[:, :32])


def test_a_damaged_encoder_file_is_refused(exported, tmp_path):
  import shutil
  out = str(tmp_path / "copy")
  shutil.copytree(exported[0], out)
  with open(os.path.join(out, "encoder", "variables.npz"), "r+b") as f:
    f.seek(100)
    f.write(b"\x00\x01\x02")
  with pytest.raises(errors.DataError, match="variables.npz does not match its sha256"):
    exported_encoder.load_encoders(out)


def test_export_resumes_after_a_crash_and_a_second_run_writes_nothing(clip_run, exported, tmp_path, monkeypatch):
  out = str(tmp_path / "resumed")
  real_write, calls = fmt.write_shard, []

  def crash_after_five(*args, **kwargs):
    if len(calls) == 5:
      raise KeyboardInterrupt("killed")  # what a kill between two shards leaves behind
    calls.append(args[1:3])
    return real_write(*args, **kwargs)

  monkeypatch.setattr(fmt, "write_shard", crash_after_five)
  with pytest.raises(KeyboardInterrupt):
    _export(clip_run, out, split="val", shard_size=10)
  assert not os.path.exists(os.path.join(out, fmt.MANIFEST))
  monkeypatch.setattr(fmt, "write_shard", real_write)
  # A damaged finished shard is found and written again.
  with open(os.path.join(out, "images-00001-of-00007.npz"), "ab") as f:
    f.write(b"garbage")
  summary = _export(clip_run, out, split="val", shard_size=10)
  assert summary["kept"]["images"] == 4 and summary["written"]["images"] == 3  # shards 0, 2, 3, 4 kept
  assert summary["written"]["texts"] == 32
  reference = fmt.read_manifest(exported[0])
  resumed = fmt.read_manifest(out)
  for kind in fmt.KINDS:  # the same bytes as an uninterrupted export
    assert ([s["sha256"] for s in resumed["kinds"][kind]["shards"]]
            == [s["sha256"] for s in reference["kinds"][kind]["shards"]])
  before = _snapshot(out)
  again = _export(clip_run, out, split="val", shard_size=10)
  assert again["written"] == {"images": 0, "texts": 0} and again["encoders"] == "kept"
  assert _snapshot(out) == before


def test_other_inputs_in_an_export_dir_are_refused_unless_overwritten(clip_run, tmp_path):
  out = str(tmp_path / "images_only")
  _export(clip_run, out, split="val", what=("images",), shard_size=32, encoders=False)
  with pytest.raises(errors.WorkdirError, match="shard_size: 32 there, 16 now.*--overwrite"):
    _export(clip_run, out, split="val", what=("images",), shard_size=16, encoders=False)
  summary = _export(clip_run, out, split="val", what=("images",), shard_size=16, encoders=False, overwrite=True,
                    dtype="float16")
  assert summary["written"] == {"images": 4}
  ids, vectors, manifest = fmt.read_embeddings(out, "images")
  assert manifest["dtype"] == "float16" and len(ids) == 64 and vectors.dtype == np.float32
  assert sorted(n for n in os.listdir(out) if n.startswith("images-")) == [
      f"images-0000{i}-of-00004.{ext}" for i in range(4) for ext in ("json", "npz")]
  with pytest.raises(errors.DataError, match="no exported texts"):
    fmt.read_embeddings(out, "texts")
  stranger = tmp_path / "stranger"
  stranger.mkdir()
  (stranger / "notes.txt").write_text("mine")
  with pytest.raises(errors.WorkdirError, match="not empty and holds no xmodal export"):
    _export(clip_run, str(stranger), split="val", encoders=False)
  assert (stranger / "notes.txt").read_text() == "mine"


def test_export_of_a_directory_without_a_run_names_it(tmp_path):
  with pytest.raises(errors.MissingError, match="config.json not found.*made by `xmodal train`"):
    _export(str(tmp_path / "nothing"), str(tmp_path / "out"))
