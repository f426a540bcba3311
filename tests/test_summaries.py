"""Example pictures in TensorBoard (evaluation/summary_images.py): a tiny run's event files hold, per evaluation,
the retrieval examples (text -> top-5 images, image -> top-5 captions) or the captioning examples (8 images and
their captions) as images and texts, and the data sample grid once per run."""
from __future__ import annotations

import glob
import io
import os

import numpy as np
import pytest
from PIL import Image

from tests.helpers import load_config, make_task
from xmodal_jax.evaluation import summary_images


def _summaries(workdir) -> dict[str, dict[int, object]]:
  """{tag: {step: PIL image (image summaries) or str (text summaries)}} of a workdir's event files."""
  from tensorboard.backend.event_processing import event_file_loader
  out: dict[str, dict[int, object]] = {}
  for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
    for event in event_file_loader.EventFileLoader(path).Load():
      for value in event.summary.value:
        plugin = value.metadata.plugin_data.plugin_name
        if plugin == "images":  # string tensor [width, height, png...]
          width, height, png = value.tensor.string_val[:3]
          picture = Image.open(io.BytesIO(png))
          assert picture.size == (int(width), int(height))
          out.setdefault(value.tag, {})[int(event.step)] = picture
        elif plugin == "text":
          out.setdefault(value.tag, {})[int(event.step)] = value.tensor.string_val[0].decode()
  return out


def test_retrieval_run_writes_examples_and_data_samples(tmp_path, caplog):
  import jax
  from xmodal_jax.train import trainer
  config = load_config("configs/retrieval/vsepp_shapes.py:tiny", "--config.mesh.shape=(1,1)")
  task = make_task(config, tmp_path)
  with caplog.at_level("INFO"):
    trainer.train_and_evaluate(task, devices=jax.devices()[:1])
  assert "example_texts" not in caplog.text and "Got images" not in caplog.text  # TensorBoard only, not the log
  logged = _summaries(tmp_path)
  # val evaluates at steps 3 and 6 (every=3 and the end), test at the end only
  for prefix, steps in (("val", {3, 6}), ("test", {6})):
    t2i, i2t = logged[f"{prefix}/examples/text_to_image"], logged[f"{prefix}/examples/image_to_text"]
    assert set(t2i) == set(i2t) == steps
    # 4 query rows of 128 px cells (+ 8 px gaps); a row: the query text (2 cells) + 5 images, or 1 image + 5 texts
    assert t2i[6].size == (7 * 128 + 5 * 4, 4 * 128 + 3 * 8)
    assert i2t[6].size == (11 * 128 + 5 * 4, 4 * 128 + 3 * 8)
    pixels = np.asarray(t2i[6])
    assert pixels.std() > 10  # drawn: text and images, not a blank page
    assert set(logged[f"{prefix}/example_texts/text_to_image"]) == steps
  captions = [c for caps in task.split("val").captions for c in caps]
  t2i_text = logged["val/example_texts/text_to_image"][6]
  assert captions[0] in t2i_text  # the first text query is the first image's first caption, shown as a string
  assert t2i_text.count("\n1. image") == 4 and t2i_text.count("\n5. image") == 4
  i2t_text = logged["val/example_texts/image_to_text"][6]
  assert i2t_text.count("**image ") == 4 and sum(c in i2t_text for c in set(captions)) >= 1
  # the data sample grid: once, at the first evaluation, 16 images with a caption each in 4 rows of 4
  samples = logged["data/examples/samples"]
  assert set(samples) == {3}
  assert samples[3].size[0] == 4 * 128 + 3 * 6 and samples[3].size[1] > 4 * 128
  assert logged["data/example_texts/samples"][3].count("- image ") == 16


@pytest.mark.slow  # trains a tiny captioner (about a minute on 2 cores)
def test_captioning_run_writes_eight_images_and_their_captions(tmp_path):
  import jax
  from xmodal_jax.train import trainer
  config = load_config("configs/captioning/captioner_shapes.py:tiny", "--config.mesh.shape=(1,1)",
                       "--config.evals.val.coco=False")  # no Java METEOR: the pictures are what is tested
  task = make_task(config, tmp_path)
  trainer.train_and_evaluate(task, devices=jax.devices()[:1])
  logged = _summaries(tmp_path)
  grids, tables = logged["val/examples/captions"], logged["val/example_texts/captions"]
  assert set(grids) == set(tables) == {2, 4}  # every=2, 4 steps
  assert grids[4].size[0] == 4 * 128 + 3 * 6 and grids[4].size[1] > 2 * 128  # 2 rows of 4 captioned images
  rows = [line for line in tables[4].splitlines() if line.startswith("| ") and not line.startswith("| image")]
  assert len(rows) == 8
  references = task.split("val").captions
  shown = summary_images.spread(8, 16)  # max_images=16
  for row, image in zip(rows, shown):
    assert references[image][0] in row  # each image's references beside its generated caption
  assert set(logged["data/examples/samples"]) == {2}


def test_retrieval_examples_mark_the_true_matches():
  images = np.stack([np.full((8, 8, 3), 40 * i, np.uint8) for i in range(6)])  # tiny: scaled up by repetition
  text_to_image = np.arange(6).repeat(2)  # 2 captions per image
  captions = [f"caption {t} of image {i}" for t, i in enumerate(text_to_image)]
  t2i = np.eye(6)[[0, 3]][:, ::-1].copy()  # query text 0 ranks image 5 first; text 6 (image 3): image 2 first
  t2i[0, 0], t2i[1, 3] = 0.5, 0.9  # ...then its own image second
  i2t = np.zeros((1, 12))
  i2t[0, [1, 7]] = (1.0, 0.5)
  out = summary_images.retrieval_examples(t2i, i2t, np.array([0, 6]), np.array([0]), text_to_image, images,
                                          captions, k=3, side=32)
  lines = out.texts["text_to_image"].splitlines()
  assert lines[0].startswith("**caption 0 of image 0**") and lines[2] == "1. image 5 (1.000)"
  assert lines[3] == "2. image 0 (0.500) (true)"
  assert "1. image 2 (1.000)\n2. image 3 (0.900) (true)" in out.texts["text_to_image"]
  assert "1. caption 1 of image 0 (1.000) (true)" in out.texts["image_to_text"]
  assert "2. caption 7 of image 3 (0.500)\n" in out.texts["image_to_text"]
  picture = out.images["text_to_image"][0]
  assert picture.shape == (2 * 32 + 8, 2 * 32 + 3 * 32 + 3 * 4, 3)
  x_second = 2 * 32 + 4 + 32 + 4  # the second result of the first query: framed green (true)
  assert tuple(picture[0, x_second + 16]) == summary_images.TRUE
  assert tuple(picture[0, 2 * 32 + 4 + 16]) == summary_images.OTHER


def test_text_cells_wrap_and_cut_long_text():
  font = summary_images._font(12)
  lines = summary_images._wrap("word " * 200, font, 100, max_lines=3)
  assert len(lines) == 3 and lines[-1].endswith("...")
  assert all(font.getlength(line) <= 100 for line in lines[:2])
  assert summary_images._wrap("x" * 300, font, 50, max_lines=2)[0].endswith("...")  # one long word is cut too


def test_no_pictures_when_the_split_has_no_images():
  from xmodal_jax.evaluation.evaluator import EvalData
  data = EvalData(image_inputs={"features": np.zeros((5, 3), np.float32)})
  assert summary_images.display_images(data) is None and summary_images.data_samples(data) is None
  out = summary_images.label_examples(None, [["red", "circle"]], [["circle"]])
  assert out.images == {} and "circle (true)" in out.texts["top_labels"]


def test_s1_label_ranking_and_classification_show_images_with_their_top_labels():
  from xmodal_jax.evaluation import evaluator as evaluator_lib
  from xmodal_jax.evaluation.evaluator import EvalData, evaluator_config
  from xmodal_jax.systems.classifier import label_ranking_evaluator  # noqa: F401  (registers "label_ranking")
  from xmodal_jax.train import sharding
  from xmodal_jax.train.runtime import Runtime
  runtime = Runtime(mesh=sharding.create_mesh((8, 1)), variable_shardings={"params": {}})
  scores = np.asarray([[0.3, 0.5, 0.1, 0.9], [0.9, 0.5, 0.2, 0.1], [0.5, 0.9, 0.2, 0.1]], np.float32)
  pictures = np.zeros((3, 16, 16, 3), np.uint8)
  names = ("red circle", "blue square", "green", "large yellow cross")
  data = EvalData(image_inputs={"x": scores}, label_sets=[np.asarray([3]), np.asarray([2]), np.asarray([1, 0])],
                  label_names=names, extras={"display_images": pictures})
  spec = evaluator_config("label_ranking", split="val", recall_at=(4,), batch_size=8, examples=2)
  evaluator = evaluator_lib.create("val", spec)
  evaluator.evaluate({"label_scores": lambda v, x: x}, {"params": {}}, data, runtime)
  text = evaluator.summaries.texts["top_labels"]  # images 0 and 2 (spread over 3), 4 labels each, best first
  assert text.splitlines() == [
      "- image 0: large yellow cross (true), blue square, red circle, green; true: large yellow cross",
      "- image 2: blue square (true), red circle (true), green, large yellow cross; true: blue square, red circle"]
  grid = evaluator.summaries.images["top_labels"]
  assert grid.shape == (1, 128 + 4 * 17, 2 * 128 + 6, 3)  # 2 images side by side, 4 label lines under each
  # classification (S1's image stages): top-3 classes of each labelled image
  data = EvalData(image_inputs={"x": scores}, labels=np.asarray([3, -1, 0]), label_names=names,
                  extras={"display_images": pictures})
  evaluator = evaluator_lib.create("val", evaluator_config("classification", split="val", batch_size=8))
  evaluator.evaluate({"classify": lambda v, x: x}, {"params": {}}, data, runtime)
  assert evaluator.summaries.texts["top_labels"].splitlines()[1] == (
      "- image 2: blue square, red circle (true), green; true: red circle")
  assert evaluator.summaries.images["top_labels"].shape == (1, 128 + 3 * 17, 2 * 128 + 6, 3)


def test_figure_script_names_its_command_and_skips_a_missing_run(tmp_path):
  import subprocess
  import sys
  from tests.helpers import REPO, cli_env
  done = subprocess.run([sys.executable, "docs/figures/make_figures.py", "shapes_samples", "vsepp_shapes_curves",
                         f"--vsepp_workdir={tmp_path / 'no_run'}", f"--out={tmp_path}"], cwd=REPO, env=cli_env(),
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  assert f"skipped vsepp_shapes_curves: needs a run: --vsepp_workdir={tmp_path / 'no_run'} holds none" in done.stdout
  picture = Image.open(tmp_path / "shapes_samples.png")
  assert picture.text["Command"] == "python docs/figures/make_figures.py shapes_samples"
  assert picture.size[0] == 4 * 176 + 3 * 6 and picture.size[1] > 3 * 176  # 3 rows of 4 captioned images
  assert not (tmp_path / "vsepp_shapes_curves.png").exists()
