"""S4 single-stream pretraining: masks never leak their targets (with and without the seed library), ITM negatives
never pair a text with its own image, aligned / suffix masks, the seed library, the masked-prediction evaluator,
one step on 1 and 8 devices, and a tiny run end to end (with a fine-tuning run from it)."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tests.helpers import load_config, make_task, one_train_step, subprocess_xla_flags
from xmodal_jax.systems.single_stream import image_text_matching, masking, object_masking, seed_library
from xmodal_jax.systems.single_stream import masked_prediction_evaluator  # noqa: F401  (registers "masked_prediction")
from xmodal_jax.systems.single_stream.single_stream_transformer import SingleStreamTransformer
from xmodal_jax.train import sharding

TINY = "configs/vlp/single_stream_shapes.py:tiny"
MASK_ID = 29


def _model(library):
  return SingleStreamTransformer(vocab_size=30, mask_id=MASK_ID, max_text_len=6, num_labels=5, feature_dim=5,
                                 width=16, num_layers=2, num_heads=2, mlp_dim=32, embed_dim=8, library=library)


def _inputs(seed=0):
  k = jax.random.split(jax.random.PRNGKey(seed), 3)
  return dict(features=jax.random.normal(k[0], (2, 3, 5)), geometry=jax.random.uniform(k[1], (2, 3, 7)),
              object_mask=jnp.ones((2, 3), bool), tokens=jnp.array([[4, MASK_ID, 6, 3, 0, 0], [7, 8, MASK_ID, 9, 3, 0]]),
              token_mask=jnp.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]], bool),
              label_tokens=jax.random.randint(k[2], (2, 3, 4), 1, 28))


@pytest.mark.parametrize("library", [False, True])
def test_a_masked_object_shows_neither_its_feature_nor_its_label(library):
  model, x = _model(library), _inputs()
  word_images = jax.random.normal(jax.random.PRNGKey(5), (30, 5)) if library else None
  masked = jnp.array([[False, True, False], [True, False, False]])
  lib = dict(label_tokens=x["label_tokens"], word_images=word_images) if library else {}
  args = (x["features"], x["geometry"], x["object_mask"], x["tokens"], x["token_mask"])
  params = model.init(jax.random.PRNGKey(1), *args, method=SingleStreamTransformer.init_all, **lib)
  apply = jax.jit(model.apply)  # one compilation per call shape, not one per operation
  base = apply(params, *args, masked_objects=masked, **lib)
  # change the hidden objects' features (and label text): no output may move
  changed = x["features"].at[0, 1].add(3.0).at[1, 0].multiply(-2.0)
  lib2 = dict(lib, label_tokens=x["label_tokens"].at[0, 1].set(7).at[1, 0].set(11)) if library else {}
  other = apply(params, changed, *args[1:], masked_objects=masked, **lib2)
  for key in base:
    np.testing.assert_allclose(other[key], base[key], atol=1e-5, err_msg=key)
  # ...while the same change on a visible object does move them (the test can fail)
  visible = apply(params, x["features"].at[0, 0].add(3.0), *args[1:], masked_objects=masked, **lib)
  assert np.abs(np.asarray(visible["itm_logit"] - base["itm_logit"])).max() > 1e-4
  if library:  # a masked unit is the mask token, whose standard-image row is ignored
    moved = apply(params, *args, masked_objects=masked, label_tokens=x["label_tokens"],
                        word_images=word_images.at[MASK_ID].set(100.0))
    np.testing.assert_allclose(moved["word_logits"], base["word_logits"], atol=1e-5)
    # and the library does reach the model: a visible word's standard image changes the outputs
    moved = apply(params, *args, masked_objects=masked, label_tokens=x["label_tokens"],
                        word_images=word_images.at[4].set(100.0))
    assert np.abs(np.asarray(moved["word_logits"] - base["word_logits"])).max() > 1e-4


def _cfg(**kw):
  base = dict(text_mode="span", text_ratio=0.15, max_span=3, object_mode="overlap", aligned_fraction=1.0,
              suffix_fraction=0.0)
  return ml_collections.ConfigDict(dict(base, **kw))


def test_aligned_masking_hides_the_words_that_name_the_masked_object():
  # "a small red circle left of a big blue square <eos>"; labels: object 0 = small red circle, 1 = big blue square
  tokens = np.array([4, 5, 6, 7, 8, 9, 4, 10, 11, 12, 3, 0])
  valid = tokens > 0
  label_tokens = np.array([[5, 6, 7, 0], [10, 11, 12, 0]])
  np.testing.assert_array_equal(np.flatnonzero(object_masking.referring_positions(tokens, valid, label_tokens[0])),
                                [1, 2, 3])
  # a run without the noun ("red" alone) names nothing; a shorter mention ("blue square") does
  t2 = np.array([6, 8, 11, 12, 3])
  np.testing.assert_array_equal(object_masking.referring_positions(t2, t2 > 0, label_tokens[0]), [0, 0, 0, 0, 0])
  np.testing.assert_array_equal(object_masking.referring_positions(t2, t2 > 0, label_tokens[1]), [0, 0, 1, 1, 0])
  boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)  # disjoint: each an isolated object
  for seed in range(20):
    out = masking.mask_example(np.random.default_rng(seed), _cfg(), tokens=tokens, valid=valid, boxes=boxes,
                               object_mask=np.ones(2, bool), object_labels=np.array([0, 1]),
                               label_tokens=label_tokens, mask_id=MASK_ID)
    (hidden,) = np.flatnonzero(out["masked_objects"])
    assert out["object_targets"][hidden] == hidden and (out["object_targets"] == -1).sum() == 1
    shown = set(out["masked_tokens"][valid].tolist())
    assert not shown & set(label_tokens[hidden][label_tokens[hidden] > 0].tolist())  # no word of its label shown
    masked = out["word_targets"] != -1
    np.testing.assert_array_equal(out["word_targets"][masked], tokens[masked])      # targets: the hidden units
    assert (out["masked_tokens"][masked] == MASK_ID).all() and not masked[~valid].any()


def test_suffix_masks_for_caption_filling():
  tokens = np.array([4, 5, 6, 3, 0, 0])
  valid = tokens > 0
  for seed in range(10):
    out = masking.mask_example(np.random.default_rng(seed), _cfg(suffix_fraction=1.0), tokens=tokens, valid=valid,
                               boxes=np.zeros((2, 4), np.float32), object_mask=np.ones(2, bool),
                               object_labels=np.array([0, 1]), label_tokens=np.zeros((2, 4), int), mask_id=MASK_ID)
    start = int(np.argmax(out["masked_tokens"] == MASK_ID))
    assert start <= 3 and (out["masked_tokens"][start:] == MASK_ID).all() and out["masked_token_mask"].all()
    np.testing.assert_array_equal(out["word_targets"][start:], np.where(valid, tokens, 0)[start:])  # <pad> after
    assert not out["masked_objects"].any()


@pytest.mark.parametrize("hard", [False, True])
def test_matching_negatives_never_pair_a_text_with_its_own_image(hard):
  ids = jnp.array([5, 5, 6, 7, 7, 7, 8, 9])  # repeated ids: several captions of one image in a batch
  sim = jax.random.normal(jax.random.PRNGKey(0), (8, 8)) * 5 if hard else None
  for seed in range(30):
    img, txt, mode = image_text_matching.sample_negative_pairs(jax.random.PRNGKey(seed), ids, 16, (1, 1, 1), sim)
    assert (ids[img] != ids[txt]).all()
    anchors = np.arange(16) % 8
    assert (np.asarray(txt)[np.asarray(mode) == 0] == anchors[np.asarray(mode) == 0]).all()  # fixed text
    assert (np.asarray(img)[np.asarray(mode) == 1] == anchors[np.asarray(mode) == 1]).all()  # fixed image
  _, _, mode = image_text_matching.sample_negative_pairs(jax.random.PRNGKey(0), ids, 64, (0, 1, 0))
  assert (np.asarray(mode) == 1).all()
  loss, aux = image_text_matching.matching_loss(jnp.array([3.0, -3.0]), jnp.array([1, 0]))
  assert aux["accuracy"] == 1.0 and loss < 0.1


def test_seed_library_standard_images_and_word_table(tmp_path):
  labels = ("red circle", "blue circle", "red square")
  words = [[4, 5], [6, 5], [4, 7]]  # red=4 circle=5 blue=6 square=7
  obj_labels = np.array([[0, 1, -1], [2, 0, 1]])
  feats = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
  lib = seed_library.build_library(obj_labels, feats, labels, words, vocab_size=9, per_label=4)
  np.testing.assert_array_equal(lib.count, [2, 2, 1])
  np.testing.assert_allclose(sorted(lib.standard[0, :2].tolist()), [feats[0, 0].tolist(), feats[1, 1].tolist()])
  # "circle": the standard images of "red circle" and "blue circle" (4 features); "square": of "red square"
  np.testing.assert_allclose(lib.word_images[5], np.mean([feats[0, 0], feats[1, 1], feats[0, 1], feats[1, 2]], 0))
  np.testing.assert_allclose(lib.word_images[7], feats[1, 0])
  assert not lib.word_images[[0, 1, 2, 3, 8]].any()
  lib.save(str(tmp_path / "lib.npz"))
  again = seed_library.SeedLibrary.load(str(tmp_path / "lib.npz"))
  assert again.labels == labels and np.array_equal(again.word_images, lib.word_images)


def test_masked_prediction_evaluator_counts_only_masked_positions():
  from xmodal_jax.evaluation import evaluator as evaluator_lib
  from xmodal_jax.evaluation.evaluator import EvalData
  from xmodal_jax.train import runtime as runtime_lib
  spec = evaluator_lib.evaluator_config("masked_prediction", protocols=("p",), batch_size=2)
  ev = evaluator_lib.get(spec.type)("m", spec)
  targets = np.array([[5, -1, 7], [-1, -1, 2], [1, 1, -1]])
  data = EvalData(extras={"masked": {"p": {"predict": "guess", "targets": targets,
                                           "inputs": {"x": np.array([[5, 0, 0], [0, 0, 2], [1, 3, 9]])}}}})
  runtime = runtime_lib.Runtime(mesh=sharding.create_mesh((1, 1), devices=jax.devices()[:1]),
                                variable_shardings={})
  metrics = ev.evaluate({"guess": lambda v, x: x}, {}, data, runtime)
  assert metrics["p_count"] == 5 and metrics["p_accuracy"] == pytest.approx(100 * 3 / 5)


@pytest.mark.slow  # two compilations of the full S4 step (the default run has test_trainer.py's 1 vs 8)
def test_one_step_on_one_and_eight_devices_agree(tmp_path):
  flags = ("--config.model.dropout_rate=0.0", "--config.library.enabled=True")
  one = one_train_step(load_config(TINY, "--config.mesh.shape=(1,1)", *flags), str(tmp_path / "a"), jax.devices()[:1])
  eight = one_train_step(load_config(TINY, "--config.mesh.shape=(8,1)", *flags), str(tmp_path / "b"), jax.devices())
  for k in ("loss", "words_loss", "objects_loss", "matching_loss", "dual_loss"):
    assert eight[k] == pytest.approx(one[k], rel=1e-4, abs=1e-5), k
  assert one["negative_is_own_image"] == 0.0 and one["masked_objects"] > 0 and one["masked_words"] > 0


@pytest.mark.slow  # two CLI training runs (minutes); `launch/test.sh -m slow`
def test_tiny_run_end_to_end_then_caption_fine_tuning(tmp_path):
  env = dict(os.environ, XLA_FLAGS=subprocess_xla_flags())
  work = tmp_path / "run"
  cmd = [sys.executable, "-m", "xmodal_jax.main", "train", f"--config={TINY}", f"--workdir={work}",
         "--config.library.enabled=True"]
  done = subprocess.run(cmd, capture_output=True, text=True, env=env)
  assert done.returncode == 0, done.stderr[-3000:]
  metrics = json.loads((work / "results.json").read_text())["metrics"]
  for key in ("test/rsum", "test_dual/rsum", "test_full8/rsum", "test_by_objects/rsum",
              "test_masked/words_span_accuracy", "test_masked/words_token_accuracy", "test_masked/objects_accuracy",
              "test_captions/cider_d"):
    assert np.isfinite(metrics[key]), key
  assert (work / "library.npz").exists() and json.loads((work / "labels.json").read_text())
  fine = tmp_path / "fine"
  cmd = [sys.executable, "-m", "xmodal_jax.main", "train", f"--config={TINY},caption_finetune", f"--workdir={fine}",
         f"--config.init_from={work}", "--config.library.enabled=True"]
  done = subprocess.run(cmd, capture_output=True, text=True, env=env)
  assert done.returncode == 0, done.stderr[-3000:]
  assert np.isfinite(json.loads((fine / "results.json").read_text())["metrics"]["test_captions/cider_d"])


def test_config_errors_name_the_field(tmp_path):
  from xmodal_jax import errors
  for flag, field in (("--config.masking.text_mode=word", "text_mode"), ("--config.masking.object_mode=iou", "object_mode"),
                      ("--config.itm.mode_weights=(0,0,0)", "mode_weights"), ("--config.schedule=mixed", "schedule"),
                      ("--config.masking.object_target=box", "object_target")):
    with pytest.raises(errors.ConfigError, match=field):
      make_task(load_config(TINY, flag), str(tmp_path))
  task = make_task(load_config(TINY, "--config.regions.include_full=True"), str(tmp_path / "full"))
  with pytest.raises(errors.ConfigError, match="include_full"):
    task.setup(training=True)


def test_alternate_schedule_trains_the_masked_tasks_on_even_steps(tmp_path):
  config = load_config(TINY, "--config.mesh.shape=(1,1)", "--config.schedule=alternate",
                       "--config.masking.object_target=both")
  m = one_train_step(config, str(tmp_path), jax.devices()[:1])  # step 0: words + objects, no matching / dual
  assert m["loss"] == pytest.approx(m["words_loss"] + m["objects_loss"], rel=1e-5)
  assert m["matching_loss"] > 0 and m["dual_loss"] > 0 and m["object_feature_loss"] > 0


@pytest.mark.slow  # a tiny training run and three `xmodal caption` processes
def test_xmodal_caption_on_an_s4_run(tmp_path):
  from PIL import Image
  from tests.helpers import run_cli
  from xmodal_jax import systems
  from xmodal_jax.data import shapes_world
  from xmodal_jax.data.image_files import load_image_file  # how `xmodal caption` reads files
  from xmodal_jax.systems.single_stream import image_captioner
  from xmodal_jax.train import trainer
  work = str(tmp_path / "run")
  config = load_config(f"{TINY},caption_finetune", "--config.evals.test_captions.coco=False")
  results = trainer.train_and_evaluate(systems.create(config, work))  # the captioning evaluator: caption_features
  assert np.isfinite(results["metrics"]["test_captions/empty_captions"])
  paths = []
  for i, image in enumerate(shapes_world.generate_split("test", 2, seed=3).images):
    paths.append(str(tmp_path / f"shape{i}.png"))
    Image.fromarray(image).resize((96, 80)).save(paths[-1])  # not square, not the run's size: resized and cropped
  done = run_cli("caption", f"--workdir={work}", paths[0], paths[1])
  assert done.returncode == 0, done.stderr[-3000:]
  lines = [line.split("\t") for line in done.stdout.strip().splitlines()]
  assert [line[0] for line in lines] == paths and all(len(line) == 2 for line in lines), done.stdout
  # the same captions as the library's raw-image `caption` predict function on the same files
  captioner = image_captioner.ImageCaptioner.from_workdir(work)
  images = np.stack([load_image_file(p, config.data) for p in paths])
  assert [line[1] for line in lines] == [c[0] for c in captioner.caption(images)]
  done = run_cli("caption", f"--workdir={work}", "--json", paths[1])
  row = json.loads(done.stdout)
  assert row["image"] == paths[1] and row["caption"] == lines[1][1] and row["captions"] == [row["caption"]]
  assert row["decode"] == "mask_filling" and row["step"] == int(config.train.num_steps)
  done = run_cli("caption", f"--workdir={work}", "--all")
  assert done.returncode != 0 and "Traceback" not in done.stderr
  assert "not supported for S4 runs" in done.stderr and "IMAGE" in done.stderr, done.stderr[-2000:]
