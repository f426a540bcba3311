"""`xmodal export`: embeddings of a split from a trained run (shards, ids, manifest), equal to the in-library
encoders; resumption after a crash mid-export, idempotence, refusal of other inputs; the StableHLO encoders equal
the in-library ones."""
from __future__ import annotations

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


# ------------------------------------------------------------------------------------------ export --images=DIR


def _photo_folder(root, task) -> dict[str, np.ndarray]:
  """A user's folder: val images as lossless PNG / WebP, a 16-bit greyscale PNG, an RGBA PNG, a JPEG stored
  sideways with an EXIF rotation, a corrupt JPEG and a truncated PNG (in subfolders), a text file and a hidden
  file. Returns {relative path: the upright RGB pixels} of the good ones (those that can be compared exactly)."""
  from PIL import Image
  images = task.eval_images("val")
  (root / "trip" / "day2").mkdir(parents=True)
  good = {"a.png": images[0], "trip/b.webp": images[1]}
  Image.fromarray(images[0]).save(root / "a.png")
  Image.fromarray(images[1]).save(root / "trip" / "b.webp", lossless=True)
  gray = np.tile(np.linspace(0, 65535, 64, dtype=np.uint16), (64, 1))   # a 16-bit horizontal ramp
  Image.fromarray(gray).save(root / "trip" / "ramp16.png")
  assert Image.open(root / "trip" / "ramp16.png").mode.startswith("I")
  rgba = np.concatenate([images[2], np.full([64, 64, 1], 255, np.uint8)], axis=-1)
  Image.fromarray(rgba, "RGBA").save(root / "trip" / "day2" / "alpha.png")
  good["trip/day2/alpha.png"] = images[2]
  sideways = Image.fromarray(np.ascontiguousarray(np.rot90(images[3])))  # stored rotated; EXIF 6 turns it back
  exif = Image.Exif()
  exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
  sideways.save(root / "trip" / "rotated.jpg", quality=98, exif=exif)
  (root / "trip" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
  with open(root / "a.png", "rb") as f:
    (root / "trip" / "day2" / "cut.png").write_bytes(f.read()[:200])
  (root / "notes.txt").write_text("not an image")
  (root / ".hidden.jpg").write_bytes(b"junk")
  return good


def test_export_of_a_photo_folder_skips_bad_files_and_keeps_their_paths(clip_run, tmp_path, capsys):
  model = systems.load_run(clip_run, mesh_shape=(-1, 1))
  task = model.task
  good = _photo_folder(tmp_path / "photos", task)
  out = str(tmp_path / "out")
  summary = _export(clip_run, out, images_dir=str(tmp_path / "photos"), shard_size=3)
  stderr = capsys.readouterr().err
  assert summary["skipped"] == 2 and summary["written"] == {"images": 3}  # 7 files in 3 shards
  assert "trip/broken.jpg" in stderr and "trip/day2/cut.png" in stderr and "skipped 2 of 7" in stderr
  manifest = fmt.read_manifest(out)
  assert sorted(s["file"] for s in manifest["skipped"]) == ["trip/broken.jpg", "trip/day2/cut.png"]
  assert "corrupt" in manifest["skipped"][0]["reason"] and "split" not in manifest
  assert manifest["kinds"]["images"]["count"] == 5 and list(manifest["kinds"]) == ["images"]
  items = fmt.read_items(out, "images")
  paths = ["a.png", "trip/b.webp", "trip/day2/alpha.png", "trip/ramp16.png", "trip/rotated.jpg"]
  assert [item["path"] for item in items] == paths and all(item["captions"] == [] for item in items)
  ids, vectors, _ = fmt.read_embeddings(out, "images")
  assert [item["id"] for item in items] == ids.tolist() == [0, 1, 3, 5, 6]  # positions in the sorted file list
  lossless = [p for p in paths if p in good]
  reference = model.predict("embed_image", {"images": np.stack([good[p] for p in lossless])})
  np.testing.assert_allclose(vectors[[paths.index(p) for p in lossless]], reference, atol=1e-5)
  from PIL import Image
  shown = {item["path"]: np.asarray(Image.open(os.path.join(out, item["file"]))).astype(int) for item in items}
  upright = task.eval_images("val")[3].astype(int)
  error = np.abs(shown["trip/rotated.jpg"] - upright).mean()
  assert error < 8 and error < np.abs(np.rot90(shown["trip/rotated.jpg"]) - upright).mean() / 2  # EXIF applied
  ramp = shown["trip/ramp16.png"][32, :, 0]
  assert ramp[0] < 8 and ramp[-1] > 247 and np.all(np.diff(ramp.astype(float)) > -6)  # 16 bits scaled, not clipped
  # Idempotent; another file list is refused (unless overwritten); texts are not there.
  before = _snapshot(out)
  again = _export(clip_run, out, images_dir=str(tmp_path / "photos"), shard_size=3)
  assert again["written"] == {"images": 0} and again["encoders"] == "kept" and _snapshot(out) == before
  (tmp_path / "photos" / "new.png").write_bytes((tmp_path / "photos" / "a.png").read_bytes())
  with pytest.raises(errors.WorkdirError, match="images_fingerprint.*--overwrite"):
    _export(clip_run, out, images_dir=str(tmp_path / "photos"), shard_size=3)
  with pytest.raises(errors.ConfigError, match="has no captions.*--what=images"):
    _export(clip_run, str(tmp_path / "texts"), images_dir=str(tmp_path / "photos"), what=("images", "texts"))


def test_a_folder_without_usable_images_is_one_clear_error(clip_run, tmp_path):
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "x.jpg").write_bytes(b"nope")
  (bad / "y.png").write_bytes(b"")
  with pytest.raises(errors.DataError, match=r"none of its 2 image files could be read.*x\.jpg.*y\.png"):
    _export(clip_run, str(tmp_path / "out"), images_dir=str(bad), encoders=False)
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "readme.md").write_text("no photos")
  with pytest.raises(errors.DataError, match="no JPEG / PNG / WebP file.*1 other files ignored"):
    _export(clip_run, str(tmp_path / "out2"), images_dir=str(empty))
  with pytest.raises(errors.MissingError, match="no such folder"):
    _export(clip_run, str(tmp_path / "out3"), images_dir=str(tmp_path / "absent"))


# ------------------------------------------------------------------------------------------------ pair sets


def test_pair_sets_are_read_by_position_from_memory_mapped_shards(tmp_path):
  """read_pair_sets over shards written by write_pair_shard (one with a skipped row, one empty): any positions in
  any order across shards, float16 storage widened back to the computed dtype, ids <-> positions, damage found."""
  out = str(tmp_path)
  rng = np.random.default_rng(0)
  regions = rng.normal(size=[7, 3, 4]).astype(np.float32)
  mask = rng.random([7, 3]) > 0.5
  ids = np.asarray([10, 11, 12, 14, 15, 16, 17])         # row 3 of the input was skipped, rows 7..8 all bad
  bounds, kept = [(0, 4), (4, 7), (7, 9)], [(0, 3), (3, 6), (6, 6)]
  records = []
  for index, ((start, stop), (a, b)) in enumerate(zip(bounds, kept)):
    skipped = [{"file": f"f{stop - 1 - i}", "reason": "corrupt"} for i in range((stop - start) - (b - a))]
    records.append(fmt.write_pair_shard(out, "images", index, 3, (start, stop), ids[a:b],
                                        {"regions": regions[a:b].astype(np.float16), "mask": mask[a:b]}, skipped))
  arrays = {"regions": {"shape": [3, 4], "dtype": "float32"}, "mask": {"shape": [3], "dtype": "bool"}}
  fmt.write_json_atomic(os.path.join(out, fmt.MANIFEST), {
      "format": fmt.FORMAT, "version": fmt.VERSION, "dim": 4,
      "kinds": {"images": {"count": 6, "shards": [], "pairs": {"shards": records, "arrays": arrays, "dtype": "float16"}},
                "texts": {"count": 0, "shards": []}}})
  assert records[1]["count"] == 3 and records[0]["skipped"] == [{"file": "f3", "reason": "corrupt"}]
  positions = [5, 0, 3, 3, 2]
  got = fmt.read_pair_sets(out, "images", positions)
  assert got["regions"].dtype == np.float32 and got["regions"].shape == (5, 3, 4)
  np.testing.assert_allclose(got["regions"], regions[:6][positions], atol=1e-2)   # float16 storage
  np.testing.assert_array_equal(got["mask"], mask[:6][positions])
  sets = fmt.PairSets(out, "images")
  np.testing.assert_array_equal(sets.ids, [10, 11, 12, 14, 15, 16])
  np.testing.assert_array_equal(sets.positions([16, 10, 14]), [5, 0, 3])
  assert isinstance(sets._shard(0)["pair/regions"], np.memmap)  # pylint: disable=protected-access
  with pytest.raises(errors.DataError, match=r"ids not in the images.*\[13\]"):
    sets.positions([13])
  with pytest.raises(errors.DataError, match=r"positions must be in \[0, 6\)"):
    sets.read([6])
  with pytest.raises(errors.DataError, match="no pair sets of texts.*without --rerank"):
    fmt.read_pair_sets(out, "texts", [0])
  sets.verify()
  with open(os.path.join(out, records[1]["file"]), "r+b") as f:
    f.seek(-4, os.SEEK_END)
    f.write(b"\x00\x00\x00\x01")
  with pytest.raises(errors.DataError, match="images-pairs-00001-of-00003.npz does not match its sha256"):
    sets.verify()
