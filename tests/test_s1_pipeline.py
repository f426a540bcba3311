"""S1 end to end on the tiny shapes config: every stage on a 2x4 mesh, resume/skip, features, classify CLI."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.helpers import REPO, load_config, subprocess_xla_flags
from xmodal_jax import errors, pipeline
from xmodal_jax.data import shapes_world
from xmodal_jax.train import stages


@pytest.fixture(scope="module")
def tiny_run(s1_tiny_run):
  """The session's tiny run (tests/conftest.py: stopped at step 2 of the first stage, then resumed)."""
  return s1_tiny_run


def test_every_stage_runs_and_writes_its_outputs(tiny_run):
  config, workdir, results = tiny_run
  assert not results["stopped_early"]
  crossfit = set(config.partition.crossfit_stages)
  assert list(results["stages"]) == [v for name in config.pipeline
                                     for v in ([f"{name}_fold0", f"{name}_fold1"] if name in crossfit else [name])]
  gen = results["stages"]["text_generator_fold0"]
  assert gen["step"] == config.stages.text_generator.train.num_steps  # resumed after the stop at step 2
  assert {"val/p_at_1", "val/p_at_3", "test/r_at_10"} <= set(gen["metrics"])
  for split, n in (("train", 256), ("val", 64), ("test", 64)):
    with np.load(os.path.join(workdir, "features", f"{split}.npz")) as f:
      assert f["text"].shape == (n, config.stages.text_embedding.model.dim)
      assert f["pixel"].shape == (n, config.stages.pixel_embedding.model.bottleneck_dim)
      assert f["top_ids"].shape == (n, 3) and np.all(np.diff(f["top_scores"], axis=1) <= 1e-6)
      assert np.array_equal(f["labels"], shapes_world.generate_split(split, n, seed=0).label)
      assert not f["in_sample"].any() and set(f["model_fold"].tolist()) == {0, 1}
  for name in ("fusion", "pixel_only", "text_only"):
    assert 0.0 <= results["stages"][name]["metrics"]["test/accuracy"] <= 100.0
  table = open(os.path.join(workdir, "ablation", "ablation.md")).read()
  first_cells = [line.split("|")[1].strip() for line in table.splitlines()]
  assert "text + pixel (fusion)" in first_cells and "pixel (pixel_only)" in first_cells
  assert "Ablation" in results["report"]


def _trained_on(workdir: str, stage: str) -> set[int]:
  with np.load(os.path.join(workdir, stage, "train_images.npz")) as record:
    return set(record["image_ids"].tolist())


def test_no_fusion_training_row_has_features_from_a_model_that_trained_on_it(tiny_run):
  """Checked through the pipeline's records: the image ids each cross-fitted variant trained on, and the
  variant each feature row came from."""
  config, workdir, _ = tiny_run
  with np.load(os.path.join(workdir, "features", "train.npz")) as f:
    ids, fold = f["image_ids"], f["model_fold"]
  assert len(ids) == 256  # the fusion head's training rows (every tiny train image is labelled)
  for stage in config.partition.crossfit_stages:
    seen = [_trained_on(workdir, f"{stage}_fold{j}") for j in (0, 1)]
    for j in (0, 1):
      own = set(ids[fold == j].tolist())
      assert own and not own & seen[j], stage            # never trained on the rows it made features for
      assert own <= seen[1 - j], stage                    # ... which the other variant did train on
  assert len(_trained_on(workdir, "text_generator_fold0")) == 256 - int(np.sum(fold == 0))


@pytest.mark.slow  # a second S1 pipeline in the seed regime; `launch/test.sh -m slow`
def test_seed_regime_keeps_the_labelled_set_apart_from_the_image_query_set(tmp_path):
  config = load_config("configs/s1/shapes.py:tiny", "--config.partition.labelled_images=96",
                       "--config.partition.crossfit_stages=('pixel_embedding',)",
                       "--config.stages.text_generator.train.num_steps=2",
                       "--config.stages.pixel_embedding.train.num_steps=2")
  workdir = str(tmp_path / "run")
  pipeline.run_pipeline(config, workdir, only=("text_generator", "text_embedding", "pixel_embedding", "features"))
  with np.load(os.path.join(workdir, "features", "train.npz")) as f:
    labelled = set(f["image_ids"].tolist())
    assert len(labelled) == 96 and not f["in_sample"].any() and set(f["model_fold"].tolist()) == {0, 1}
  generator = _trained_on(workdir, "text_generator")  # trained once: it never sees a labelled image
  assert len(generator) == 256 - 96 and not generator & labelled
  assert not os.path.exists(os.path.join(workdir, "text_generator_fold0"))
  for j in (0, 1):
    assert _trained_on(workdir, f"pixel_embedding_fold{j}") < labelled
  with pytest.raises(ValueError, match="labelled_images=999"):
    pipeline.run_pipeline(load_config("configs/s1/shapes.py:tiny", "--config.partition.labelled_images=999"),
                          str(tmp_path / "bad"), only=("text_generator",))


def test_rerun_skips_finished_stages_and_config_change_reruns_downstream(tiny_run, tmp_path):
  config, shared, first = tiny_run
  workdir = str(tmp_path / "run")
  shutil.copytree(shared, workdir)  # leave the shared run as it is for the other tests
  again = pipeline.run_pipeline(config, workdir)
  assert again["stages"]["fusion"]["metrics"] == first["stages"]["fusion"]["metrics"]
  assert "finished earlier" in again["report"]
  changed = load_config("configs/s1/shapes.py:tiny", "--config.mesh.shape=(2,4)",
                        "--config.stages.fusion.model.dropout_rate=0.5")
  out = pipeline.run_pipeline(changed, workdir)
  rerun = [name for name in changed.pipeline if f"== {name} (finished earlier) ==" not in out["report"] and
           f"== {name} (fold 1/2) (finished earlier) ==" not in out["report"]]
  assert rerun == ["fusion", "ablation"]  # the changed stage and the one that reads it, nothing else
  assert os.path.isdir(os.path.join(workdir, "fusion.old"))
  with pytest.raises(ValueError, match="Unknown stage"):
    pipeline.run_pipeline(config, workdir, only=("nope",))


def test_classify_cli_prints_label_probability_and_phrases(tiny_run, tmp_path):
  _, workdir, _ = tiny_run
  world = shapes_world.generate_split("test", 2, seed=0)
  paths = []
  for i in range(2):
    paths.append(str(tmp_path / f"img{i}.png"))
    Image.fromarray(world.images[i]).save(paths[-1])
  env = dict(os.environ, XLA_FLAGS=subprocess_xla_flags(), JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "xmodal_jax.main", "classify", f"--workdir={workdir}", "--json", *paths]
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
  assert [r["image"] for r in rows] == paths
  for row in rows:
    assert row["label"] in shapes_world.LABEL_NAMES and 0.0 < row["probability"] <= 1.0
    assert len(row["phrases"]) == 3 and all(p in shapes_world.all_queries() for p, _ in row["phrases"])
  missing = subprocess.run(cmd[:-2] + [str(tmp_path / "missing.png")], cwd=REPO, env=env, capture_output=True,
                           text=True)
  assert missing.returncode != 0 and "missing.png" in missing.stderr and "does not exist" in missing.stderr


def test_fusion_stage_without_features_names_the_fix(tmp_path):
  from xmodal_jax.systems.classifier.fusion import FusionTask
  config = stages.stage_config(load_config("configs/s1/shapes.py:tiny"), "fusion")
  with pytest.raises(FileNotFoundError, match="run the features stage first"):
    FusionTask(config, str(tmp_path / "fusion")).setup(training=True)


@pytest.mark.slow  # a second S1 pipeline with MiniLM; `launch/test.sh -m slow`
def test_minilm_text_features_option(tiny_run, tmp_path):
  from xmodal_jax.models import minilm
  ok, reason = minilm.available()
  if not ok:
    pytest.skip(reason)
  _, shared, _ = tiny_run
  workdir = str(tmp_path / "run")
  shutil.copytree(shared, workdir)  # leave the shared run as it is for the other tests
  config = load_config("configs/s1/shapes.py:tiny", "--config.mesh.shape=(2,4)",
                       "--config.stages.features.text_embedding=minilm")
  out = pipeline.run_pipeline(config, workdir, only=("features", "text_only"))
  with np.load(os.path.join(workdir, "features", "val.npz")) as f:
    assert f["text"].shape == (64, 384)
    norms = np.linalg.norm(f["text"], axis=1)  # means of 3 unit vectors
    assert np.all(norms <= 1 + 1e-5) and np.all(norms > 0.3)
  assert "test/accuracy" in out["stages"]["text_only"]["metrics"]
  # `fusion` was not re-run: its checkpoint no longer fits the features, and loading it says so.
  from xmodal_jax.systems.classifier.classifier import MultimodalClassifier
  with pytest.raises(errors.WorkdirError, match="Re-run the pipeline"):
    MultimodalClassifier(config, workdir)


def test_pixel_embedding_is_the_pretrained_tower_by_default_and_from_scratch_on_request(tiny_run, tmp_path):
  from xmodal_jax import systems
  config, shared, _ = tiny_run
  # Default: the frozen ImageNet EfficientNet-Lite0 (cached pooled features) + a trained bottleneck and head.
  assert config.stages.pixel_embedding.model.pretrained_image == "efficientnet-lite0"
  assert json.load(open(os.path.join(shared, "pixel_embedding_fold0", "frozen_params.json")))["arrays"] > 100
  loaded = systems.load_run(os.path.join(shared, "pixel_embedding_fold0"), mesh_shape=(-1, 1))
  assert set(loaded.variables["params"]) == {"bottleneck", "head"}
  assert "backbone" in loaded.variables["frozen"]["params"]
  # The from-scratch option: a ResNet trained on the target labels, its bottleneck the pixel feature.
  workdir = str(tmp_path / "run")
  shutil.copytree(shared, workdir)
  config = load_config("configs/s1/shapes.py:tiny", "--config.mesh.shape=(2,4)",
                       "--config.stages.pixel_embedding.model.pretrained_image=",
                       "--config.stages.pixel_embedding.model.cache=False")
  out = pipeline.run_pipeline(config, workdir, only=("pixel_embedding", "features", "pixel_only"))
  assert "test/accuracy" in out["stages"]["pixel_only"]["metrics"]
  loaded = systems.load_run(os.path.join(workdir, "pixel_embedding_fold1"), mesh_shape=(-1, 1))
  assert {"backbone", "bottleneck", "head"} <= set(loaded.variables["params"])
  with np.load(os.path.join(workdir, "features", "val.npz")) as f:
    assert f["pixel"].shape == (64, config.stages.pixel_embedding.model.bottleneck_dim)
  with pytest.raises(ValueError, match="needs a pretrained tower"):
    pipeline.run_pipeline(load_config("configs/s1/shapes.py:tiny", "--config.stages.pixel_embedding.model.pretrained_image="),
                          str(tmp_path / "bad"), only=("pixel_embedding",))


def test_add_queries_from_prototypes_without_retraining(tiny_run):
  from xmodal_jax.systems.classifier.classifier import MultimodalClassifier
  config, workdir, _ = tiny_run
  model = MultimodalClassifier(config, workdir)
  world = shapes_world.generate_split("test", 8, seed=0)
  before = model.features(world.images)
  k = len(model.queries)
  model.add_queries(["my new circle"], [world.images[:4]])
  after = model.features(world.images)
  assert len(model.queries) == k + 1 and model.query_vectors.shape[0] == k + 1
  assert model.query_table.shape[0] == k + 1
  assert np.all(after["top_ids"][:4, 0] == k)  # the prototype's own images now generate the new phrase first
  for i in range(4, 8):  # other images: the old phrases keep their ids and order (the new one may enter)
    old = [q for q in after["top_ids"][i].tolist() if q != k]
    assert old == before["top_ids"][i].tolist()[:len(old)]
  assert model.classify(world.images[:1])[0]["phrases"][0][0] == "my new circle"
  with pytest.raises(ValueError, match="already in the vocabulary"):
    model.add_queries(["my new circle"], [world.images[:1]])


def test_classifier_loads_from_the_workdir_alone(tiny_run, monkeypatch):
  """`xmodal classify`'s loader reads params, query vocabulary and n-grams from the run: no data source (the
  30K-image shapes train split of a default run would take seconds to generate)."""
  from xmodal_jax.data import sources
  from xmodal_jax.systems.classifier.classifier import MultimodalClassifier
  _, workdir, _ = tiny_run
  world = shapes_world.generate_split("test", 3, seed=0)

  def no_data(*args, **kwargs):
    raise AssertionError("inference read a data source")

  monkeypatch.setattr(sources, "load_split", no_data)
  monkeypatch.setattr(shapes_world, "generate_split", no_data)
  model = MultimodalClassifier.from_workdir(workdir, mesh_shape=(-1, 1))
  rows = model.classify(world.images)
  assert [r["label"] in shapes_world.LABEL_NAMES for r in rows] == [True] * 3
  assert all(abs(sum(r["probabilities"].values()) - 1.0) < 1e-5 for r in rows)


def test_eval_of_a_pipeline_reproduces_the_training_metrics(tiny_run):
  config, workdir, results = tiny_run
  evaluated = dict(pipeline.evaluate_pipeline(config, workdir, only=("fusion", "text_generator")))
  assert sorted(evaluated) == ["fusion", "text_generator_fold0", "text_generator_fold1"]
  for name, out in evaluated.items():
    assert out["step"] == config.stages[name.split("_fold")[0]].train.num_steps
    trained = results["stages"][name]["metrics"]
    assert out["metrics"].keys() == trained.keys()
    for key, value in trained.items():
      assert out["metrics"][key] == pytest.approx(value, abs=1e-6), (name, key)
  only_test = dict(pipeline.evaluate_pipeline(config, workdir, only=("fusion",), splits=("test",)))
  assert set(only_test["fusion"]["metrics"]) == {k for k in results["stages"]["fusion"]["metrics"] if k.startswith("test/")}
