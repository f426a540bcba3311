"""A workdir that is a URL (gs://BUCKET/...), without a network.

Two stand-ins for GCS, both reached through the code paths a real gs:// run takes:

* `ram_gcs`: epath's gs:// backend (tf.io.gfile, as on a real run with TensorFlow installed) pointed at
  TensorFlow's in-memory `ram://` filesystem: a real non-POSIX filesystem, so any os / builtin call on a
  workdir path would miss it. Used for the files our code reads and writes (xmodal_jax/fileio.py, config.json,
  tokenizer.json, npz assets).
* `dir_gcs`: epath's gs:// backend pointed at a local directory (the "bucket"), and orbax's TensorStore GCS
  kvstore spec (the one orbax builds for a gs:// directory) turned into a `file` kvstore on the same directory,
  so orbax's GCS code path (commit-file atomicity, no renames, its GCS deleter) runs end to end with a real
  training run. While it is active, builtin open / os.makedirs / os.replace / os.path.exists / os.path.isdir of
  any "gs:" path fail the test: nothing may treat the URL as a local path. TensorFlow's own gs:// users
  (TensorBoard's summary writer, its event file reader) get the bucket directory instead of the URL: TF's GCS
  filesystem itself is not exercised here.

Not verified here: real GCS (auth, latency, eventual listing), TF's GCS filesystem, TensorStore's gcs driver.
"""
import builtins
import json
import os

import numpy as np
import pytest

from tests.helpers import load_config, make_task

BUCKET = "fake-bucket"


class _Translating:
  """An epath backend that maps gs://BUCKET/... onto another root and maps results back."""

  def __init__(self, inner, prefix: str):
    self._inner, self._prefix = inner, prefix  # gs://X -> PREFIX + X

  def _in(self, value):
    if isinstance(value, os.PathLike):
      value = os.fspath(value)
    if isinstance(value, str) and value.startswith("gs://"):
      return self._prefix + value[len("gs://"):]
    return value

  def _out(self, value):
    if isinstance(value, str) and value.startswith(self._prefix):
      return "gs://" + value[len(self._prefix):]
    if isinstance(value, list):
      return [self._out(v) for v in value]
    return value

  def __getattr__(self, name):
    fn = getattr(self._inner, name)

    def call(*args, **kwargs):
      result = fn(*[self._in(a) for a in args], **{k: self._in(v) for k, v in kwargs.items()})
      if name == "walk":
        return ((self._out(root), dirs, files) for root, dirs, files in result)
      return self._out(result)
    return call


def _patch_gs_backend(monkeypatch, backend):
  from etils.epath import gpath
  original = gpath._GPath._backend  # pylint: disable=protected-access
  monkeypatch.setattr(gpath._GPath, "_backend",  # pylint: disable=protected-access
                      property(lambda self: backend if self._uri_scheme == "gs" else original.fget(self)))


@pytest.fixture
def ram_gcs(monkeypatch):
  """gs://BUCKET/x -> ram://BUCKET/x through epath's TensorFlow backend."""
  from etils.epath import backend as backend_lib
  _patch_gs_backend(monkeypatch, _Translating(backend_lib.tf_backend, "ram://"))
  import tensorflow as tf
  yield lambda url: "ram://" + url[len("gs://"):]
  if tf.io.gfile.exists(f"ram://{BUCKET}"):
    tf.io.gfile.rmtree(f"ram://{BUCKET}")


@pytest.fixture
def dir_gcs(monkeypatch, tmp_path):
  """gs://BUCKET/x -> tmp_path/gcs/BUCKET/x for epath, orbax's TensorStore and TensorBoard; any local-file
  call on a gs: path fails. Yields (bucket-to-local function, the TensorStore kvstore specs orbax asked for)."""
  from etils.epath import backend as backend_lib
  from orbax.checkpoint._src.path import gcs_utils
  root = str(tmp_path / "gcs")
  os.makedirs(root)
  local = lambda url: root + "/" + url[len("gs://"):]
  _patch_gs_backend(monkeypatch, _Translating(backend_lib.os_backend, root + "/"))

  kvstores = []
  original_kvstore = gcs_utils.get_kvstore_for_gcs

  def file_kvstore(path):
    spec = original_kvstore(path)  # what orbax would hand TensorStore for this gs:// path
    kvstores.append(spec)
    assert spec["driver"] == "gcs"
    return {"driver": "file", "path": os.path.join(root, spec["bucket"], spec["path"])}
  monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs", file_kvstore)
  # A GCS bucket lookup (hierarchical namespace) needs google-cloud-storage and the network.
  monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)

  from clu import metric_writers
  from tensorboard.backend.event_processing import event_file_loader
  real_writer, real_loader = metric_writers.create_default_writer, event_file_loader.EventFileLoader
  real_summary_writer = metric_writers.SummaryWriter
  monkeypatch.setattr(metric_writers, "create_default_writer",
                      lambda logdir, **kw: real_writer(local(logdir) if logdir.startswith("gs://") else logdir, **kw))
  monkeypatch.setattr(metric_writers, "SummaryWriter",  # the trainer's writer of example pictures
                      lambda logdir, **kw: real_summary_writer(local(logdir) if logdir.startswith("gs://") else logdir,
                                                               **kw))
  monkeypatch.setattr(event_file_loader, "EventFileLoader",
                      lambda path, *a, **kw: real_loader(local(path) if path.startswith("gs://") else path, *a, **kw))

  def refuse(fn):
    def guarded(path, *args, **kwargs):
      if isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith("gs:"):
        raise AssertionError(f"{fn.__name__}({os.fspath(path)!r}): a URL used as a local path")
      return fn(path, *args, **kwargs)
    return guarded
  monkeypatch.setattr(builtins, "open", refuse(builtins.open))
  for name in ("makedirs", "replace", "remove"):
    monkeypatch.setattr(os, name, refuse(getattr(os, name)))
  for name in ("exists", "isdir", "isfile"):
    monkeypatch.setattr(os.path, name, refuse(getattr(os.path, name)))
  monkeypatch.chdir(tmp_path)
  yield local, kvstores
  monkeypatch.undo()
  assert not os.path.exists(tmp_path / "gs:"), "a local gs: directory was created"


def test_fileio_on_a_non_posix_filesystem(ram_gcs):
  from xmodal_jax import fileio
  import tensorflow as tf
  run = f"gs://{BUCKET}/runs/a"
  assert not fileio.is_local(run) and fileio.is_local("/tmp/x") and fileio.absolute(run) == run
  assert not fileio.exists(run)
  fileio.makedirs(run + "/sub")
  assert fileio.isdir(run) and fileio.isdir(run + "/sub")
  fileio.write_atomic(run + "/config.json", lambda f: json.dump({"a": 1}, f))
  with fileio.open(run + "/config.json") as f:
    assert json.load(f) == {"a": 1}
  assert tf.io.gfile.exists(ram_gcs(run + "/config.json"))  # really in the ram:// filesystem
  assert fileio.isfile(run + "/config.json") and not fileio.isfile(run + "/sub")
  assert not [p for p in tf.io.gfile.listdir(ram_gcs(run)) if ".tmp" in p]  # a URL is written directly
  fileio.save_npz(run + "/x.npz", a=np.arange(5), b=np.ones((2, 3), np.float32))
  with fileio.load_npz(run + "/x.npz") as data:
    assert data["a"].tolist() == [0, 1, 2, 3, 4] and data["b"].shape == (2, 3)
  with fileio.open(run + "/events.out.tfevents.1", "wb") as f:
    f.write(b"x")
  assert fileio.glob(run + "/events.out.tfevents.*") == [run + "/events.out.tfevents.1"]
  fileio.remove(run + "/events.out.tfevents.1")
  assert not fileio.exists(run + "/events.out.tfevents.1")
  fileio.makedirs(run + "/sub/deeper")
  for name in ("sub/done.json", "sub/deeper/x.txt"):
    with fileio.open(f"{run}/{name}", "w") as f:
      f.write(name)
  # (not "sub.old": TF's ram:// lists by bare string prefix, so it would count sub.old as inside sub)
  fileio.rename_dir(run + "/sub", run + "/old-sub")
  assert not fileio.exists(run + "/sub")
  for name in ("done.json", "deeper/x.txt"):
    with fileio.open(f"{run}/old-sub/{name}") as f:
      assert f.read() == f"sub/{name}"
  fileio.rmtree(run + "/old-sub")
  fileio.rmtree(run + "/old-sub")  # missing: no error
  assert not fileio.exists(run + "/old-sub")


def test_workdir_files_and_tokenizer_on_a_non_posix_filesystem(ram_gcs):
  from xmodal_jax import errors
  from xmodal_jax.data import tokenizers
  from xmodal_jax.data.text import WordVocab
  from xmodal_jax.systems.classifier.ngrams import NgramVocab
  from xmodal_jax.train import inference, workdir as workdir_lib
  run = f"gs://{BUCKET}/runs/b"
  workdir_lib.check_resume_config(run, {"task": "x"}, allow_change=False)  # no config.json yet: nothing to check
  workdir_lib.write_config(run, {"task": "x", "seed": 1})
  assert inference.read_run_config(run).task == "x"
  workdir_lib.check_resume_config(run, {"task": "x", "seed": 1}, allow_change=False)
  with pytest.raises(errors.WorkdirError, match="seed"):
    workdir_lib.check_resume_config(run, {"task": "x", "seed": 2}, allow_change=False)
  vocab = WordVocab.build(["a red circle", "a blue square"], min_count=1)
  path = tokenizers.tokenizer_path(run)
  assert path == run + "/tokenizer.json"
  vocab.save(path)
  assert tokenizers.load_tokenizer(path).encode("a red square") == vocab.encode("a red square")
  ngrams = NgramVocab.build(["red circle", "blue square"])
  ngrams.save(run + "/ngrams.json")
  assert len(NgramVocab.load(run + "/ngrams.json")) == len(ngrams)
  with pytest.raises(errors.MissingError):
    inference.read_run_config(f"gs://{BUCKET}/runs/none")


def test_checkpointer_hands_orbax_the_url(dir_gcs):
  from xmodal_jax import errors
  from xmodal_jax.train import checkpointing
  with pytest.raises(errors.MissingError, match="No checkpoints"):
    checkpointing.Checkpointer(f"gs://{BUCKET}/runs/none", create=False)
  ckpt = checkpointing.Checkpointer(f"gs://{BUCKET}/runs/c", use_async=False)
  try:
    assert ckpt.directory == f"gs://{BUCKET}/runs/c/checkpoints"
    assert str(ckpt._manager.directory) == f"gs://{BUCKET}/runs/c/checkpoints"  # pylint: disable=protected-access
  finally:
    ckpt.close()


def test_train_resume_eval_and_load_with_a_gs_workdir(dir_gcs):
  """A real run in gs://BUCKET/runs/x: stopped at step 2, resumed to 4 (max_to_keep=1, so orbax deletes the
  old checkpoint on "GCS"), then evaluated and loaded for inference from the URL alone."""
  local, kvstores = dir_gcs
  from xmodal_jax import systems
  from xmodal_jax.train import trainer
  run = f"gs://{BUCKET}/runs/x"
  config = load_config("configs/retrieval/vsepp_shapes.py:tiny", "--config.train.num_steps=4",
                       "--config.evals.val.every=0", "--config.train.checkpoint_every=2",
                       "--config.checkpoint.max_to_keep=1")
  stopped = trainer.train_and_evaluate(make_task(config, run), stop_at_step=2)
  assert stopped["stopped_early"] and stopped["step"] == 2
  for name in ("config.json", "tokenizer.json", "checkpoints/2/commit_success.txt"):
    assert os.path.exists(os.path.join(local(run), name)), name
  assert not os.path.exists(os.path.join(local(run), "results.json"))
  assert kvstores and all(k["bucket"] == BUCKET and k["path"].startswith("runs/x/checkpoints/") for k in kvstores)

  resumed = trainer.train_and_evaluate(make_task(config, run))
  assert not resumed["stopped_early"] and resumed["step"] == 4
  with open(os.path.join(local(run), "results.json")) as f:
    results = json.load(f)
  assert results["step"] == 4 and results["metrics"] == pytest.approx(resumed["metrics"])
  assert sorted(os.listdir(os.path.join(local(run), "checkpoints"))) == ["4"]  # step 2 deleted through epath
  assert [n for n in os.listdir(local(run)) if n.startswith("events.out.tfevents")]

  evaluated = trainer.evaluate_checkpoint(make_task(config, run))
  assert evaluated["step"] == 4 and evaluated["metrics"] == pytest.approx(resumed["metrics"], abs=1e-5)
  model = systems.load_run(run, mesh_shape=(-1, 1))
  texts = model.predict("embed_text", model.task.encode_texts(["a small red circle"]))
  assert model.step == 4 and np.allclose(np.linalg.norm(np.asarray(texts), axis=-1), 1.0, atol=1e-4)


def test_a_prepared_set_on_a_url_is_refused_with_the_fix(tmp_path, monkeypatch):
  """Prepared sets stay local (lock file, fingerprint check, build and swap): a URL is a named error, and
  nothing local is made from it."""
  from xmodal_jax import errors
  from xmodal_jax.data import prepared
  monkeypatch.chdir(tmp_path)
  with pytest.raises(errors.ConfigError, match="gcsfuse"):
    prepared.ensure_prepared(f"folder:{tmp_path}", f"gs://{BUCKET}/prepared/x", prepared.PrepareOptions(),
                             rebuild_stale=False)
  assert not os.path.exists(tmp_path / "gs:")
