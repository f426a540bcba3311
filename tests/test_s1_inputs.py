"""The seed's inputs for S1: (image, query, clicks) logs, query association pairs, user labels with a declared
label set; parsing, bad-input messages, and a short S1 run on a caption folder that uses all three."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from tests.helpers import load_config
from xmodal_jax import errors, pipeline
from xmodal_jax.data import records, sources
from xmodal_jax.systems.classifier import image_labels, query_annotations, query_clicks, query_pairs

COLORS = ("red", "green", "blue", "yellow")


def _folder(root, n_train=40, n_val=8):
  """A caption folder: image i is a flat colour; field "kind" = its colour (a user label)."""
  os.makedirs(root / "images")
  lines = []
  for i in range(n_train + n_val):
    color = COLORS[i % 4]
    Image.new("RGB", (24, 24), color).save(root / "images" / f"{i:03d}.jpg", quality=95)
    lines.append({"image": f"images/{i:03d}.jpg", "split": "train" if i < n_train else "val",
                  "captions": [f"a {color} square", f"the {color} picture"], "kind": color})
  (root / "captions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
  return str(root)


def _write(path, lines):
  path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines))
  return str(path)


def _data(tmp_path, root, **fields):
  config = load_config("configs/s1/shapes.py:tiny").data
  with config.unlocked():
    config.update(source=f"folder:{root}", image_size=24, prepare_size=24, prepared_dir=str(tmp_path / "prepared"),
                  **fields)
  return config


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  return _folder(tmp_path_factory.mktemp("s1_inputs"))


def _clicks(tmp_path, n=48):
  lines = []
  for i in range(n):
    color = COLORS[i % 4]
    lines += [{"image": f"images/{i:03d}.jpg", "query": f"{color} square", "clicks": 3},
              {"image": f"{i:03d}.jpg", "query": "Square!", "clicks": 1}]   # file name alone; normalised query
  lines.append({"image": "images/000.jpg", "query": "rare tail query", "clicks": 2})  # one image only
  lines.append({"image": "images/000.jpg", "query": "red square", "clicks": 1})       # repeated: clicks add up
  return _write(tmp_path / "clicks.jsonl", lines)


def test_click_log_gives_vocabulary_sorted_by_images_and_click_weights(folder, tmp_path):
  data = _data(tmp_path, folder, query_clicks=_clicks(tmp_path), query_min_images=1)
  train = sources.load_split(data, "train")
  vocab = query_annotations.query_vocabulary(data, train)
  assert vocab[0] == "square" and "rare tail query" in vocab  # min images 1 keeps the long tail
  assert vocab.index("red square") < vocab.index("rare tail query")
  notes = query_annotations.annotate(data, train, vocab)
  row = int(np.flatnonzero(train.image_ids == 0)[0])  # image 000: red square 3+1, square 1, rare 2
  weights = dict(zip((vocab[i] for i in notes.query_ids[row]), notes.query_weights[row]))
  assert weights == pytest.approx({"red square": 4 / 7, "square": 1 / 7, "rare tail query": 2 / 7})
  strict = _data(tmp_path, folder, query_clicks=data.query_clicks, query_min_images=2)
  assert "rare tail query" not in query_annotations.query_vocabulary(strict, train)


@pytest.mark.parametrize("line, message", [
    ('{"image": "images/001.jpg", "query": "x"', "malformed JSON"),
    ({"image": "images/001.jpg", "clicks": 2}, 'missing key "query"'),
    ({"image": "images/001.jpg", "query": "  ", "clicks": 2}, "not a non-empty string"),
    ({"image": "images/001.jpg", "query": "!!!", "clicks": 2}, "has no words"),
    ({"image": "images/001.jpg", "query": "x", "clicks": 0}, "not a positive integer"),
    ({"image": "images/001.jpg", "query": "x", "clicks": 1.5}, "not a positive integer"),
    ({"image": "images/999.jpg", "query": "x", "clicks": 2}, "is not in folder:"),
])
def test_bad_click_lines_name_the_file_and_line(folder, tmp_path, line, message):
  good = {"image": "images/000.jpg", "query": "red", "clicks": 1}
  path = _write(tmp_path / "clicks.jsonl", [good, line, good])
  data = _data(tmp_path, folder, query_clicks=path)
  with pytest.raises(records.BadInputError, match=f"clicks.jsonl:2: .*{message}"):
    query_clicks.load(data)
  skipping = _data(tmp_path, folder, query_clicks=path, skip_bad=True, max_bad_fraction=0.5)
  assert query_clicks.load(skipping).clicks == {0: {"red": 2}}  # the bad line counted and skipped
  with pytest.raises(records.BadInputError, match="1 of 3 lines are bad"):
    query_clicks.load(_data(tmp_path, folder, query_clicks=path, skip_bad=True, max_bad_fraction=0.1))


def test_click_log_tsv_and_missing_file(folder, tmp_path):
  path = tmp_path / "clicks.tsv"
  path.write_text("images/000.jpg\tred square\t2\n000.jpg\tred\t1\n")
  assert query_clicks.load(_data(tmp_path, folder, query_clicks=str(path))).clicks == {0: {"red square": 2, "red": 1}}
  path.write_text("images/000.jpg\tred square\n")
  with pytest.raises(records.BadInputError, match=r"clicks.tsv:1: 2 tab-separated columns"):
    query_clicks.load(_data(tmp_path, folder, query_clicks=str(path)))
  with pytest.raises(errors.MissingError, match="nope.jsonl: the click log .* does not exist"):
    query_clicks.load(_data(tmp_path, folder, query_clicks=str(tmp_path / "nope.jsonl")))


def test_query_pairs_parse_with_weights_and_fail_clearly(folder, tmp_path):
  path = _write(tmp_path / "pairs.jsonl", [{"a": "Red square", "b": "crimson box", "weight": 2.5},
                                          {"a": "blue", "b": "navy"}])
  pairs = query_pairs.load(_data(tmp_path, folder, query_pairs=path))
  assert pairs.phrases == ["red square", "crimson box", "blue", "navy"]
  assert pairs.weights.tolist() == [2.5, 1.0] and pairs.a.tolist() == [0, 2] and pairs.b.tolist() == [1, 3]
  for line, message in (({"a": "red", "b": "Red!"}, "both phrases are 'red'"),
                        ({"a": "red", "b": "blue", "weight": -1}, "not a positive finite number"),
                        ({"a": "red", "b": "blue", "weight": "inf"}, "not a positive finite number"),
                        ({"a": "red"}, 'missing key "b"')):
    bad = _write(tmp_path / "bad_pairs.jsonl", [line])
    with pytest.raises(records.BadInputError, match=f"bad_pairs.jsonl:1: .*{message}"):
      query_pairs.load(_data(tmp_path, folder, query_pairs=bad))


def test_user_labels_from_a_file_or_a_captions_field(folder, tmp_path):
  label_set = ("red", "green", "blue", "yellow")
  from_field = _data(tmp_path, folder, label_set=label_set, labels_field="kind")
  train = sources.load_split(from_field, "train")
  expected = np.asarray([COLORS.index(COLORS[int(i) % 4]) for i in train.image_ids])
  assert query_annotations.label_names(from_field) == label_set
  assert np.array_equal(image_labels.load(from_field, train.image_ids), expected)
  path = _write(tmp_path / "labels.jsonl", [{"image": "images/000.jpg", "label": "red"},
                                           {"image": "001.jpg", "label": "green"}])
  from_file = _data(tmp_path, folder, label_set=label_set, labels_file=path)
  labels = image_labels.load(from_file, train.image_ids)
  assert sorted(labels.tolist())[-2:] == [0, 1] and int(np.sum(labels < 0)) == len(labels) - 2  # rest unlabelled
  _write(tmp_path / "labels.jsonl", [{"image": "images/000.jpg", "label": "purple"}])
  with pytest.raises(records.BadInputError, match=r"labels.jsonl:1: label 'purple' is not in config.data.label_set"):
    image_labels.load(from_file, train.image_ids)
  _write(tmp_path / "labels.jsonl", [{"image": "images/000.jpg", "label": "red"},
                                     {"image": "000.jpg", "label": "blue"}])
  with pytest.raises(records.BadInputError, match=r"labels.jsonl:2: image 0 is labelled 'blue' here but 'red'"):
    image_labels.load(from_file, train.image_ids)
  with pytest.raises(errors.ConfigError, match="need both config.data.label_set"):
    image_labels.declared(_data(tmp_path, folder, labels_file=path))
  shapes = load_config("configs/s1/shapes.py:tiny", "--config.data.query_clicks=x.jsonl").data
  with pytest.raises(errors.ConfigError, match="shapes world has its own queries"):
    query_annotations.label_names(shapes)


@pytest.mark.slow  # `bash launch/test.sh -m slow` (docs/development.md)
def test_s1_stages_train_on_clicks_pairs_and_user_labels(folder, tmp_path):
  """The generator learns from the click log, the text embedding from the pairs (no image), the pixel stage
  and the features from the user's labels."""
  pairs = _write(tmp_path / "pairs.jsonl", [{"a": f"{c} square", "b": "square", "weight": 1 + i}
                                            for i, c in enumerate(COLORS)])
  labels = _write(tmp_path / "labels.jsonl", [{"image": f"images/{i:03d}.jpg", "label": COLORS[i % 4]}
                                              for i in range(0, 48, 2)])  # every other image labelled
  overrides = [f"--config.data.source=folder:{folder}", "--config.data.image_size=24", "--config.data.prepare_size=24",
               f"--config.data.prepared_dir={tmp_path / 'prepared'}", f"--config.data.query_clicks={_clicks(tmp_path)}",
               "--config.data.query_min_images=1", f"--config.data.query_pairs={pairs}",
               f"--config.data.labels_file={labels}", f"--config.data.label_set={COLORS}",
               "--config.partition.folds=0", "--config.stages.features.splits=('train','val')"]
  for name in ("text_generator", "text_embedding", "pixel_embedding"):
    overrides += [f"--config.stages.{name}.train.batch_size=8", f"--config.stages.{name}.evals.val.batch_size=8",
                  f"--config.stages.{name}.evals.test.every=0", f"--config.stages.{name}.evals.test.at_end=False"]
  config = load_config("configs/s1/shapes.py:tiny", *overrides)
  workdir = str(tmp_path / "run")
  out = pipeline.run_pipeline(config, workdir, only=("text_generator", "text_embedding", "pixel_embedding", "features"))
  assert not out["stopped_early"]
  assert json.load(open(os.path.join(workdir, "text_generator", "queries.json")))["queries"][0] == "square"
  with np.load(os.path.join(workdir, "text_embedding", "train_images.npz")) as record:
    assert len(record["image_ids"]) == 0  # the pairs use no image
  with np.load(os.path.join(workdir, "features", "train.npz")) as f:
    assert len(f["labels"]) == 20 and set(f["labels"].tolist()) == {0, 2}  # train rows 0,2,..,38: red and blue
