"""Real-data sources end to end on small fixtures: folder / Karpathy -> prepared tfds array_record -> splits,
the tfds:NAME path, bad input through `prepare`, and the trainer on a folder source."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from tests.helpers import load_config
from xmodal_jax.data import prepared, records, sources


def _image(path, color, size=(40, 30)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.new("RGB", size, color).save(path, format="JPEG", quality=95)


def _colors(n):
  return [(int(40 + 200 * i / max(n - 1, 1)), 30, int(230 - 200 * i / max(n - 1, 1))) for i in range(n)]


def _caption_folder(root, n_train=6, n_val=3):
  lines = []
  for i, color in enumerate(_colors(n_train + n_val)):
    _image(os.path.join(root, "images", f"{i:03d}.jpg"), color)
    split = "train" if i < n_train else "val"
    lines.append({"image": f"images/{i:03d}.jpg", "split": split, "image_id": 100 + i,
                  "captions": [f"photo {i} of a colour", f"Picture number {i}!"],
                  "boxes": [[2, 3, 10, 8, "thing"]]})
  with open(os.path.join(root, "captions.jsonl"), "w") as f:
    f.writelines(json.dumps(line) + "\n" for line in lines)
  return lines


def _data_config(tmp_path, source, **overrides):
  config = load_config("configs/retrieval/vsepp_shapes.py:tiny").data
  with config.unlocked():
    config.update(dict(source=source, prepare_size=24, image_size=24, prepared_dir=str(tmp_path / "prepared")),
                  **overrides)
  return config


def test_folder_source_prepares_once_and_reads_back(tmp_path):
  lines = _caption_folder(str(tmp_path / "data"))
  config = _data_config(tmp_path, f"folder:{tmp_path / 'data'}")
  train = sources.load_split(config, "train")
  assert prepared.is_prepared(config.prepared_dir)
  summary = json.load(open(os.path.join(config.prepared_dir, "xmodal_prepare.json")))
  assert summary["examples"] == {"train": 6, "val": 3} and summary["skipped"] == {}
  assert len(train) == 6 and sorted(train.image_ids.tolist()) == list(range(100, 106))
  by_id = {int(i): caps for i, caps in zip(train.image_ids, train.captions)}
  assert by_id[103] == lines[3]["captions"]
  # Boxes come along, rescaled with the image (40x30 -> 32x24: factor 0.8).
  for boxes in train.boxes:
    np.testing.assert_allclose(boxes, [[1.6, 2.4, 8.0, 6.4]], rtol=1e-5)
  # Images: shorter side resized to prepare_size (30 -> 24, 40 -> 32), centre crop 24x24, colour kept.
  images = train.load_images(np.arange(len(train)), 24)
  assert images.shape == (6, 24, 24, 3) and images.dtype == np.uint8
  for row, image_id in enumerate(train.image_ids):
    expected = np.array(_colors(9)[image_id - 100])
    assert np.abs(images[row].reshape(-1, 3).mean(0) - expected).max() < 12
  # Training crops are a deterministic function of the per-example key.
  keys = np.arange(6, dtype=np.uint32) * 7919
  np.testing.assert_array_equal(train.load_images(np.arange(6), 20, keys=keys, flip=True),
                                train.load_images(np.arange(6), 20, keys=keys, flip=True))
  # A second load reuses the prepared set (the summary file is not rewritten).
  mtime = os.path.getmtime(os.path.join(config.prepared_dir, "xmodal_prepare.json"))
  assert len(sources.load_split(config, "val")) == 3
  assert os.path.getmtime(os.path.join(config.prepared_dir, "xmodal_prepare.json")) == mtime


def test_missing_split_names_the_available_ones(tmp_path):
  _caption_folder(str(tmp_path / "data"))
  config = _data_config(tmp_path, f"folder:{tmp_path / 'data'}")
  with pytest.raises(ValueError, match=r"no split 'test'.*train.*val|no split 'test'.*val.*train"):
    sources.load_split(config, "test")


def test_karpathy_source(tmp_path):
  root = tmp_path / "coco"
  entries = []
  for i, color in enumerate(_colors(5)):
    _image(str(root / "val2014" / f"im{i}.jpg"), color)
    entries.append({"filepath": "val2014", "filename": f"im{i}.jpg", "cocoid": 7 + i,
                    "split": ["train", "restval", "val", "test", "train"][i],
                    "sentences": [{"raw": f"A thing {i}.", "tokens": ["a", "thing"]}]})
  json_path = tmp_path / "dataset_coco.json"
  json_path.write_text(json.dumps({"images": entries, "dataset": "coco"}))
  config = _data_config(tmp_path, f"karpathy:{json_path}:{root}")
  train = sources.load_split(config, "train")
  assert sorted(train.image_ids.tolist()) == [7, 8, 11]  # restval joins train
  assert sources.load_split(config, "test").captions == [["A thing 3."]]


def test_tfds_source_reads_a_prepared_array_record_set(tmp_path):
  _caption_folder(str(tmp_path / "data"))
  out = str(tmp_path / "out")
  prepared.prepare(f"folder:{tmp_path / 'data'}", out, image_size=24)
  config = _data_config(tmp_path, "tfds:captioned_images", tfds_data_dir=out)
  val = sources.load_split(config, "val")
  assert sorted(val.image_ids.tolist()) == [106, 107, 108]
  with pytest.raises(ValueError, match="could not be loaded"):
    sources.load_split(_data_config(tmp_path, "tfds:no_such_dataset_xyz"), "train")


def test_coco_captions_field_mapping():
  fields = sources.FieldMap("coco_captions")
  example = {"image": b"jpeg", "image/id": 42, "captions": {"text": [b"A cat.", b"Two cats."], "id": [1, 2]}}
  assert fields.image_id(example, 0) == 42 and fields.captions(example) == ["A cat.", "Two cats."]


def test_unknown_source_kind(tmp_path):
  with pytest.raises(ValueError, match="folder:PATH"):
    sources.load_split(_data_config(tmp_path, "s3:bucket"), "train")


def test_corrupt_image_fails_prepare_or_is_skipped_and_counted(tmp_path):
  root = tmp_path / "data"
  _caption_folder(str(root))
  (root / "images" / "002.jpg").write_bytes(b"not a jpeg at all")
  with pytest.raises(records.BadInputError, match="002.jpg"):
    prepared.prepare(f"folder:{root}", str(tmp_path / "strict"), image_size=24)
  summary = prepared.prepare(f"folder:{root}", str(tmp_path / "lenient"),
                             options=prepared.PrepareOptions(image_size=24, skip_bad=True, max_bad_fraction=0.5))
  assert summary["examples"] == {"train": 5, "val": 3}
  assert sum(summary["skipped"].values()) == 1 and "002.jpg" in summary["skipped_examples"][0]


def test_bad_line_fails_with_file_and_line_unless_skip_bad(tmp_path):
  root = tmp_path / "data"
  _caption_folder(str(root))
  with open(root / "captions.jsonl", "a") as f:
    f.write('{"image": "images/000.jpg", "captions": [""], "split": "train", "image_id": 999}\n')
  with pytest.raises(records.BadInputError, match=r"captions.jsonl:10"):
    sources.load_split(_data_config(tmp_path, f"folder:{root}"), "train")
  config = _data_config(tmp_path, f"folder:{root}", skip_bad=True, max_bad_fraction=0.5,
                        prepared_dir=str(tmp_path / "p2"))
  assert len(sources.load_split(config, "train")) == 6


def test_trainer_runs_on_a_folder_source(tmp_path):
  from tests.helpers import make_task
  from xmodal_jax.train import trainer
  _caption_folder(str(tmp_path / "data"), n_train=16, n_val=8)
  config = load_config("configs/retrieval/vsepp_shapes.py:tiny", f"--config.data.source=folder:{tmp_path / 'data'}",
                       f"--config.data.prepared_dir={tmp_path / 'prepared'}", "--config.data.prepare_size=24",
                       "--config.data.image_size=24", "--config.data.flip=True", "--config.train.batch_size=8",
                       "--config.train.num_steps=3", "--config.evals.val.batch_size=8", "--config.evals.test.at_end=False",
                       "--config.data.tokenizer=sentencepiece", "--config.data.vocab_size=40",
                       "--config.evals.val.every=0")
  results = trainer.train_and_evaluate(make_task(config, tmp_path / "run"))
  assert results["step"] == 3 and 0 <= results["metrics"]["val/i2t_r10"] <= 100
  assert os.path.exists(tmp_path / "run" / "tokenizer.json")
