"""Caption-folder and Karpathy readers, their bad-input errors and skip counts, and image loading."""
from __future__ import annotations

import collections
import json
import os
import time

import numpy as np
import pytest
from PIL import Image

from tests.helpers import REPO
from xmodal_jax.data import records

GOOD = {"image": "images/a.jpg", "captions": ["A red dog.", " Two cats "], "split": "train"}


def _write_image(path, size=(8, 6), mode="RGB", fmt="JPEG") -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.new(mode, size).save(path, fmt)


def _folder(tmp_path, lines, images=("a", "b", "c", "d")) -> str:
  """A caption folder with `images/{name}.jpg` and `lines` (dicts, or raw strings written as is)."""
  root = tmp_path / "folder"
  for name in images:
    _write_image(str(root / "images" / f"{name}.jpg"))
  text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
  (root / "captions.jsonl").write_text(text + "\n")
  return str(root)


def _line(name, **overrides) -> dict:
  return {**GOOD, "image": f"images/{name}.jpg", **overrides}


def _karpathy(tmp_path, entries) -> tuple[str, str]:
  image_root = tmp_path / "coco"
  for sub, name in [("val2014", "x"), ("train2014", "y"), ("", "z"), ("", "w")]:
    _write_image(str(image_root / sub / f"{name}.jpg"))
  path = tmp_path / "dataset_coco.json"
  path.write_text(json.dumps({"images": entries, "dataset": "coco"}))
  return str(path), str(image_root)


def _entry(name, split="train", filepath="val2014", **overrides) -> dict:
  entry = {"filepath": filepath, "filename": f"{name}.jpg", "split": split,
           "sentences": [{"raw": f"A photo of {name}.", "tokens": ["a"]}, {"raw": "Another one."}]}
  return {**entry, **overrides}


def test_caption_folder_happy_path(tmp_path):
  root = _folder(tmp_path, [
      _line("a", extra="ignored", boxes=[[1, 2, 3, 4, "dog"], [0, 0.5, 2, 2]]),
      "",  # Blank lines are skipped but still counted for line numbers / default ids.
      _line("b", split="val", image_id=42),
      _line("c", split="unassigned", boxes=[]),
  ])
  recs, report = records.read_caption_folder(root)
  assert report.total() == 0 and report.summary() == "skipped 0 bad records"
  assert [r.image_id for r in recs] == [0, 42, 3]
  assert [r.split for r in recs] == ["train", "val", "unassigned"]
  assert recs[1].image_path == os.path.join(root, "images", "b.jpg") and os.path.isabs(recs[1].image_path)
  assert recs[0].captions == ("A red dog.", "Two cats")
  np.testing.assert_array_equal(recs[0].boxes, [[1, 2, 3, 4], [0, 0.5, 2, 2]])
  assert recs[0].boxes.dtype == np.float32 and recs[0].box_labels == ("dog", "")
  assert recs[2].boxes.shape == (0, 4) and recs[2].box_labels == ()
  assert [r.image_id for r in records.select_split(recs, "val", "fixture")] == [42]


def test_karpathy_happy_path(tmp_path):
  path, image_root = _karpathy(tmp_path, [
      _entry("x", cocoid=7, imgid=0),
      _entry("y", split="restval", filepath="train2014", imgid=5),
      {k: v for k, v in _entry("z", split="test").items() if k != "filepath"},  # No filepath: directly in root.
      _entry("w", split="val", filepath=None),  # null filepath: same.
  ])
  recs, report = records.read_karpathy(path, image_root)
  assert report.total() == 0
  assert [r.image_id for r in recs] == [7, 5, 2, 3]  # cocoid, then imgid, then the entry index.
  assert [r.split for r in recs] == ["train", "train", "test", "val"]
  assert recs[0].image_path == os.path.join(image_root, "val2014", "x.jpg")
  assert recs[2].image_path == os.path.join(image_root, "z.jpg")
  assert recs[3].image_path == os.path.join(image_root, "w.jpg")
  assert recs[0].captions == ("A photo of x.", "Another one.") and recs[0].boxes.shape == (0, 4)
  recs, _ = records.read_karpathy(path, image_root, restval_to_train=False)
  assert recs[1].split == "restval"


# Line 2 of a three-line file; lines 1 and 3 are good.
BAD_LINES = {
    "malformed JSON": '{"image": "images/b.jpg", "captions": [',
    "not an object": '["images/b.jpg", "A dog."]',
    "missing key": {"image": "images/b.jpg", "split": "train"},
    "captions not a list": _line("b", captions="A dog."),
    "empty captions": _line("b", captions=[]),
    "empty caption": _line("b", captions=["A dog.", "  "]),
    "non-text caption": _line("b", captions=["A dog.", 5]),
    "bad image path": _line("b", image=None),
    "bad image id": _line("b", image_id="9"),
    "duplicate image id": _line("b", image_id=0),
    "duplicate image path": _line("a"),
    "missing image file": _line("nope"),
    "malformed boxes": _line("b", boxes=[[1, 2, 3]]),
    "bad split": _line("b", split="training"),
}


CAPTION_LEVEL = ("empty caption", "non-text caption")  # the record has a good caption besides the bad one


@pytest.mark.parametrize("reason", list(BAD_LINES))
def test_caption_folder_bad_line(tmp_path, reason):
  root = _folder(tmp_path, [_line("a"), BAD_LINES[reason], _line("c")])
  with pytest.raises(records.BadInputError, match=r"captions\.jsonl:2\b") as info:
    records.read_caption_folder(root)
  assert info.value.reason == reason
  recs, report = records.read_caption_folder(root, skip_bad=True, max_bad_fraction=0.5)
  assert "captions.jsonl:2" in report.examples[0]
  if reason in CAPTION_LEVEL:  # the bad caption is dropped; its image keeps its good one
    assert [os.path.basename(r.image_path) for r in recs] == ["a.jpg", "b.jpg", "c.jpg"]
    assert recs[1].captions == ("A dog.",) and report.caption_counts == {reason: 1} and report.total() == 0
    assert report.summary().startswith(f"dropped 1 bad captions of kept images: 1 {reason} (first: ")
    return
  assert [os.path.basename(r.image_path) for r in recs] == ["a.jpg", "c.jpg"]
  assert report.counts == {reason: 1} and report.total() == 1
  assert report.summary().startswith(f"skipped 1 bad records: 1 {reason} (first: ")


def test_malformed_json_names_column_and_non_utf8(tmp_path):
  root = _folder(tmp_path, [_line("a"), '{"image": "images/b.jpg" "captions": []}'])
  with pytest.raises(records.BadInputError, match=r"captions\.jsonl:2: malformed JSON at column 26: Expecting"):
    records.read_caption_folder(root)
  with open(os.path.join(root, "captions.jsonl"), "ab") as f:
    f.write(b'{"image": "images/c.jpg", "captions": ["caf\xe9"], "split": "train"}\n')
  recs, report = records.read_caption_folder(root, skip_bad=True, max_bad_fraction=1.0)
  assert len(recs) == 1 and report.counts == {"malformed JSON": 2} and "UTF-8" in report.examples[1]


@pytest.mark.parametrize("value", [
    "x", [[1, 2, 3, 4, 5]], [[1, 2, -3, 4]], [[1, 2, 3, 0, "a"]], [[1, "2", 3, 4]], [[1, 2, 3, float("nan")]],
    [(1, 2, 3, 4, "a", "b")],
])
def test_malformed_boxes(tmp_path, value):
  root = _folder(tmp_path, [_line("a", boxes=value)])
  with pytest.raises(records.BadInputError, match=r"captions\.jsonl:1: .*box") as info:
    records.read_caption_folder(root)
  assert info.value.reason == "malformed boxes"


@pytest.mark.parametrize("caption,reason", [(None, "non-text caption"), ("...!", "non-text caption"),
                                            ("", "empty caption"), ("\t \n", "empty caption")])
def test_validate_caption(caption, reason):
  with pytest.raises(records.BadInputError, match="here: caption") as info:
    records.validate_caption(caption, "here")
  assert info.value.reason == reason
  assert records.validate_caption(" 3 dogs ", "here") == "3 dogs"


def test_missing_image_file_only_checked_when_asked(tmp_path):
  root = _folder(tmp_path, [_line("a"), _line("nope")])
  recs, _ = records.read_caption_folder(root, check_images=False)
  assert len(recs) == 2


def test_caption_folder_file_errors(tmp_path):
  with pytest.raises(records.BadInputError, match="not a directory"):
    records.read_caption_folder(str(tmp_path / "absent"))
  with pytest.raises(FileNotFoundError, match=r"captions\.jsonl: not found"):
    records.read_caption_folder(str(tmp_path))
  root = _folder(tmp_path, ["", " "])
  with pytest.raises(records.BadInputError, match="no usable records"):
    records.read_caption_folder(root)


def test_all_bad_raises_with_summary(tmp_path):
  root = _folder(tmp_path, [_line("nope"), _line("a", captions=[]), _line("gone")])
  with pytest.raises(records.BadInputError, match="no usable records .*2 missing image file, 1 empty captions"):
    records.read_caption_folder(root, skip_bad=True)


BAD_ENTRIES = {
    "not an object": "x.jpg",
    "missing key": {"filename": "y.jpg", "split": "train"},
    "captions not a list": _entry("y", sentences="A dog."),
    "malformed sentence": _entry("y", sentences=[{"tokens": ["a"]}]),
    "empty captions": _entry("y", sentences=[]),
    "empty caption": _entry("y", sentences=[{"raw": " "}]),
    "bad split": _entry("y", split="dev"),
    "duplicate image id": _entry("y", cocoid=10),
    "missing image file": _entry("nope"),
  "bad image path": _entry("y", filepath=3),
}


@pytest.mark.parametrize("reason", list(BAD_ENTRIES))
def test_karpathy_bad_entry(tmp_path, reason):
  path, image_root = _karpathy(tmp_path, [_entry("x", cocoid=10), BAD_ENTRIES[reason], _entry("w", filepath=None)])
  with pytest.raises(records.BadInputError, match=r"dataset_coco\.json: images\[1\]\W") as info:
    records.read_karpathy(path, image_root)
  assert info.value.reason == reason
  recs, report = records.read_karpathy(path, image_root, skip_bad=True, max_bad_fraction=0.5)
  # A single bad caption leaves its image no caption: the record goes, under the reason that says so.
  assert [r.image_id for r in recs] == [10, 2]
  assert report.counts == {("no usable caption" if reason == "empty caption" else reason): 1}


def test_karpathy_file_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"dataset_coco\.json: not found"):
    records.read_karpathy(str(tmp_path / "dataset_coco.json"), str(tmp_path))
  path, image_root = _karpathy(tmp_path, [_entry("x")])
  with pytest.raises(records.BadInputError, match="image root is not a directory"):
    records.read_karpathy(path, str(tmp_path / "absent"))
  with open(path, "w") as f:
    f.write('{"images": [')
  with pytest.raises(records.BadInputError, match=r"dataset_coco\.json: malformed JSON"):
    records.read_karpathy(path, image_root)
  with open(path, "w") as f:
    json.dump({"annotations": []}, f)
  with pytest.raises(records.BadInputError, match=r'dataset_coco\.json: no "images" list'):
    records.read_karpathy(path, image_root)


def test_select_split_names_available_splits(tmp_path):
  recs, _ = records.read_caption_folder(_folder(tmp_path, [_line("a"), _line("b", split="val")]))
  with pytest.raises(records.BadInputError, match=r"my-data: .*'test'.*train \(1\), val \(1\)"):
    records.select_split(recs, "test", "my-data")


def test_load_image_bad_files(tmp_path):
  noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)
  full = tmp_path / "full.jpg"
  Image.fromarray(noise).save(full, "JPEG")
  truncated = tmp_path / "truncated.jpg"
  truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
  text = tmp_path / "text.jpg"
  text.write_text("not an image\n")
  empty = tmp_path / "empty.jpg"
  empty.write_bytes(b"")
  assert records.load_image(str(full)).shape == (64, 64, 3)
  for path in [truncated, text, empty]:
    with pytest.raises(records.BadInputError, match=path.name):
      records.load_image(str(path))
  with pytest.raises(FileNotFoundError, match="missing.jpg"):
    records.load_image(str(tmp_path / "missing.jpg"))


@pytest.mark.parametrize("mode,color,expected", [
    ("L", 100, [100, 100, 100]),
    ("RGBA", (10, 20, 30, 255), [10, 20, 30]),
    ("RGBA", (10, 20, 30, 0), [255, 255, 255]),  # Transparent pixels become white.
    ("P", 3, None),
])
def test_load_image_converts_to_rgb(tmp_path, mode, color, expected):
  path = tmp_path / "img.png"
  Image.new(mode, (5, 3), color).save(path, "PNG")
  image = records.load_image(str(path))
  assert image.shape == (3, 5, 3) and image.dtype == np.uint8
  if expected is not None:
    np.testing.assert_array_equal(image[0, 0], expected)


def _real_flickr8k() -> str | None:
  for path in ["/work/shared/data/flickr8k", os.path.join(REPO, "..", "shared", "data", "flickr8k")]:
    if os.path.isfile(os.path.join(path, "captions.jsonl")):
      return path
  return None


@pytest.mark.skipif(_real_flickr8k() is None,
                    reason="real Flickr8k folder (../shared/data/flickr8k/captions.jsonl) is not on this machine")
def test_real_flickr8k():
  start = time.perf_counter()
  recs, report = records.read_caption_folder(_real_flickr8k())
  assert time.perf_counter() - start < 5  # Budget is < 1 s; loose so a busy machine does not flake.
  assert len(recs) == 7091 and report.total() == 0
  assert collections.Counter(r.split for r in recs) == {"train": 6000, "val": 1000, "unassigned": 91}
  assert all(len(r.captions) == 5 for r in recs)
  val = records.select_split(recs, "val", "flickr8k")
  assert records.load_image(val[0].image_path).shape == (224, 224, 3)
