"""Failure behaviour, second round (issue 28): directories xmodal did not make are never deleted, damaged feature
caches heal, named caches hold both towers, a full disk is one line, every numeric config field is validated,
workdir paths and prepare flags are named, lost evaluations are logged again, Ctrl-C saves, and the minor gaps
(content-hashed images, symlinks out of the folder, export temporaries). The search service's cases are in
tests/test_search_service_input.py."""
import errno
import glob
import logging
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

from tests import helpers
from tests.helpers import REPO, TINY, caption_folder, load_config, make_task, run_cli
from xmodal_jax import disk_space, errors
from xmodal_jax.data import feature_cache, prepared, records
from xmodal_jax.train import checkpointing, trainer
from xmodal_jax.train import workdir as workdir_lib


def _tree(path):
  """{relative path: bytes} of every file under `path` (what must stay intact)."""
  out = {}
  for root, _, files in os.walk(path):
    for name in files:
      full = os.path.join(root, name)
      with open(full, "rb") as f:
        out[os.path.relpath(full, path)] = f.read()
  return out


@pytest.fixture
def small_disk(tmp_path):
  """make(size_kb) -> the path of a fresh tmpfs of that size (needs root, as CI has; skips with the reason
  otherwise: the fake-error tests below cover the same code paths on any machine)."""
  mounts = []

  def make(size_kb):
    path = tmp_path / f"disk{len(mounts)}"
    path.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
                            capture_output=True, text=True, check=False)
    if result.returncode:
      pytest.skip(f"cannot mount a {size_kb} KB tmpfs here ({result.stderr.strip()}); needs root")
    mounts.append(path)
    return str(path)

  yield make
  for path in mounts:
    subprocess.run(["umount", "-l", str(path)], check=False)


# ---- 1. never delete what xmodal did not make
def test_prepare_refuses_a_directory_holding_user_files_and_the_data_folder_itself(tmp_path):
  data = str(tmp_path / "data")
  caption_folder(data, n_train=4, n_val=2)
  user = tmp_path / "mine"
  user.mkdir()
  (user / "notes.txt").write_text("my notes")
  before_data, before_user = _tree(data), _tree(user)
  for out in (str(user), data):
    result = run_cli("prepare", f"--source=folder:{data}", f"--out={out}", "--image_size=24")
    assert result.returncode == errors.EXIT_ERROR, result.stderr[-2000:]
    assert f"{out} holds files xmodal did not make" in result.stderr and "new or empty directory" in result.stderr
    assert "Traceback" not in result.stderr
  assert _tree(data) == before_data and _tree(user) == before_user
  # The same rule for config.data.prepared_dir (ensure_prepared), before anything is written beside it.
  with pytest.raises(errors.WorkdirError, match="holds files xmodal did not make .notes.txt."):
    prepared.ensure_prepared(f"folder:{data}", str(user), prepared.PrepareOptions(image_size=24),
                             rebuild_stale=False)
  assert not os.path.exists(f"{user}.lock") and _tree(user) == before_user
  # An earlier prepared set is xmodal's own: rebuilt in place; an empty directory is used.
  (tmp_path / "empty").mkdir()
  for out in (tmp_path / "empty", tmp_path / "empty"):
    prepared.prepare(f"folder:{data}", str(out), image_size=24)
  assert set(os.listdir(tmp_path / "empty")) <= set(prepared.OWNED)


def _encode_rows(calls):
  def encode(split, rows, view):
    calls.append((split, int(rows[0]), view))
    return np.stack([np.full((3,), row + 10 * view, np.float32) for row in rows])
  return encode


def test_feature_cache_dir_never_replaces_user_files_and_holds_both_towers(tmp_path):
  root = tmp_path / "caches"
  root.mkdir()
  (root / "keep.txt").write_text("mine")
  plans = {"train": feature_cache.SplitPlan(5, 2)}
  calls = []
  image = feature_cache.ensure({"side": "image", "x": 1}, plans, _encode_rows(calls), directory=str(root),
                               batch_size=2)
  text = feature_cache.ensure({"side": "text", "x": 1}, {"train": feature_cache.SplitPlan(7, 1)},
                              _encode_rows(calls), directory=str(root), batch_size=4)
  assert image.directory == str(root / "image") and text.directory == str(root / "text")
  assert (root / "keep.txt").read_text() == "mine"
  built = len(calls)
  for side, plan in (("image", plans), ("text", {"train": feature_cache.SplitPlan(7, 1)})):  # reused, not rebuilt
    feature_cache.ensure({"side": side, "x": 1}, plan, _encode_rows(calls), directory=str(root), batch_size=4)
  assert len(calls) == built
  np.testing.assert_array_equal(image.read("train", np.array([3, 4]), np.array([1, 0])), [[13.0] * 3, [4.0] * 3])
  # A side directory holding something a cache does not: refused, left as it was.
  (root / "text" / "thesis.tex").write_text("mine")
  with pytest.raises(errors.WorkdirError, match=r"config.cache.dir.* holds files xmodal did not make \(thesis.tex\)"):
    feature_cache.ensure({"side": "text", "x": 2}, {"train": feature_cache.SplitPlan(7, 1)}, _encode_rows(calls),
                         directory=str(root))
  assert (root / "text" / "thesis.tex").read_text() == "mine" and os.path.exists(root / "text" / "cache.json")


# ---- 2. a damaged feature cache is found when opened and rebuilt
@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_feature_cache_is_rebuilt_before_training(tmp_path, damage, caplog):
  plans = {"train": feature_cache.SplitPlan(40, 1)}
  calls = []
  key = {"side": "image", "x": 1}
  cache = feature_cache.ensure(key, plans, _encode_rows(calls), directory=str(tmp_path), batch_size=8)
  path = os.path.join(cache.directory, "train.array_record")
  size = os.path.getsize(path)
  if damage == "flip":
    with open(path, "r+b") as f:
      f.seek(size // 2)
      byte = f.read(1)
      f.seek(size // 2)
      f.write(bytes([byte[0] ^ 0xFF]))
  elif damage == "truncate":
    with open(path, "r+b") as f:
      f.truncate(size - 100)
  else:
    os.remove(path)
  built = len(calls)
  with caplog.at_level(logging.WARNING):
    healed = feature_cache.ensure(key, plans, _encode_rows(calls), directory=str(tmp_path), batch_size=8)
  assert len(calls) > built, "the damaged cache was reused"
  assert any(f"feature cache {cache.directory} is damaged" in r.getMessage() and "rebuilt" in r.getMessage()
             for r in caplog.records)
  np.testing.assert_array_equal(healed.read("train", np.arange(40))[:, 0], np.arange(40))


def test_a_cache_damaged_after_it_was_opened_is_a_named_error(tmp_path):
  cache = feature_cache.ensure({"side": "image"}, {"train": feature_cache.SplitPlan(40, 1)}, _encode_rows([]),
                               directory=str(tmp_path), batch_size=8)
  path = os.path.join(cache.directory, "train.array_record")
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 3)
  with pytest.raises(errors.DataError, match=f"feature cache {cache.directory} is damaged: reading "
                                             r"train.array_record failed .*rebuilt"):
    cache.read("train", np.arange(40))


# ---- 4. a full disk is one line; the last committed checkpoint stays usable
def _single_error_line(stderr):
  lines = [line for line in stderr.splitlines() if line.startswith("xmodal: error:")]
  assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
  return lines[0]


@pytest.mark.slow  # 45 s; the default run has the writer-shape test below and the export / prepare case
def test_full_disk_during_training_is_one_line_and_the_committed_checkpoint_loads(tmp_path, small_disk, monkeypatch):
  disk = small_disk(40_000)
  workdir = os.path.join(disk, "run")
  args = ["train", f"--config={TINY}", f"--workdir={workdir}", "--config.train.checkpoint_every=2",
          "--config.evals.val.every=0"]
  assert run_cli(*args, "--stop_at_step=2").returncode == errors.EXIT_STOPPED
  free = disk_space.free_bytes(disk)
  with open(os.path.join(disk, "ballast"), "wb") as f:  # leaves about 300 KB
    f.write(b"\0" * (free - 300_000))
  result = run_cli(*args)
  assert result.returncode == errors.EXIT_ERROR
  line = _single_error_line(result.stderr)
  assert f"No space left on the device of {workdir}/checkpoints while saving the checkpoint of step 4" in line
  assert "about 1 MB needed" in line and "step 2) is intact" in line and "rerun the same command" in line
  # The writer itself hitting ENOSPC (no space check first): orbax's error becomes the same kind of message.
  monkeypatch.setattr(disk_space, "check_free_space", lambda *a, **k: None)
  config = load_config(TINY, "--config.train.checkpoint_every=2", "--config.evals.val.every=0")
  with pytest.raises(errors.DiskFullError, match=f"device of {workdir} while training .*step 2. is intact"):
    trainer.train_and_evaluate(make_task(config, workdir))
  assert checkpointing.Checkpointer(workdir, create=False).latest_step() == 2
  os.remove(os.path.join(disk, "ballast"))
  assert run_cli(*args).returncode == errors.EXIT_OK  # and it resumes from there


def test_full_disk_in_export_and_prepare_is_one_line(tmp_path, small_disk):
  workdir = str(tmp_path / "run")
  assert run_cli("train", f"--config={TINY}", f"--workdir={workdir}", "--config.evals.val.every=0").returncode == 0
  out = os.path.join(small_disk(200), "export")
  result = run_cli("export", f"--workdir={workdir}", f"--out={out}")
  assert result.returncode == errors.EXIT_ERROR
  assert f"No space left on the device of {out} while exporting" in _single_error_line(result.stderr)
  data = str(tmp_path / "data")
  caption_folder(data, n_train=30, n_val=10)
  out = os.path.join(small_disk(48), "prepared")
  result = run_cli("prepare", f"--source=folder:{data}", f"--out={out}", "--image_size=64")
  assert result.returncode == errors.EXIT_ERROR
  assert "No space left on the device of" in _single_error_line(result.stderr) and "Nothing was replaced" in result.stderr


def test_a_full_disk_reported_in_any_shape_becomes_one_named_error(tmp_path):
  """Without a tmpfs: the shapes a full disk takes in the writers (errno, orbax / tensorstore text, a cause)."""
  shapes = [OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x")),
            ValueError("RESOURCE_EXHAUSTED: Error writing local file ... [os_error_code='28']"),
            RuntimeError("array_record: Failed to write: No space left on device")]
  for shape in shapes:
    with pytest.raises(errors.DiskFullError, match=f"device of {tmp_path} while testing"):
      with disk_space.full_disk_is_an_error(str(tmp_path), "testing"):
        raise shape
  with pytest.raises(KeyError):  # anything else passes through
    with disk_space.full_disk_is_an_error(str(tmp_path), "testing"):
      raise KeyError("x")
  with pytest.raises(errors.DiskFullError, match=r"about [0-9,]+ MB needed"):
    disk_space.check_free_space(str(tmp_path), disk_space.free_bytes(str(tmp_path)) + 2**30, "testing")


# ---- 5. every numeric field of every section is validated before anything compiles
@pytest.mark.parametrize("override,message", [
    ("--config.evals.val.batch_size=0", "config.evals.val.batch_size=0: must be a positive integer"),
    ("--config.evals.val.every=-1", "config.evals.val.every=-1: must be an integer >= 0"),
    ("--config.model.embed_dim=0", "config.model.embed_dim=0: must be a positive integer"),
    ("--config.loss.margin=-0.1", "config.loss.margin=-0.1: must be a finite number >= 0"),
    ("--config.loss.margin=nan", "config.loss.margin=nan: must be a finite number >= 0"),
    ("--config.data.num_threads=0", "config.data.num_threads=0: must be a positive integer"),
    ("--config.optimizer.warmup_steps=-3", "config.optimizer.warmup_steps=-3: must be an integer >= 0"),
])
def test_every_numeric_field_is_checked_before_any_array(tmp_path, override, message):
  with pytest.raises(errors.ConfigError) as info:
    trainer.train_and_evaluate(make_task(load_config(TINY, override), tmp_path))
  assert message in str(info.value)
  assert not os.path.exists(tmp_path / "checkpoints")


def test_every_shipped_config_passes_its_own_checks():
  from xmodal_jax.train import validation
  checked = 0
  for path in sorted(glob.glob(os.path.join(REPO, "configs", "*", "*.py"))):
    if os.path.basename(path) in ("common.py", "__init__.py"):
      continue
    for variant in ("", ":tiny", ":paper", ":reward", ":judge", ":grammar_attribute"):
      try:
        config = load_config(os.path.relpath(path, REPO) + variant)
      except Exception:  # pylint: disable=broad-except  (not a variant of this config)
        continue
      validation.check_values(config)
      checked += 1
  assert checked >= 25


def test_bad_values_and_workdir_paths_are_one_message_from_the_cli(tmp_path):
  (tmp_path / "a_file").write_text("x")
  data = str(tmp_path / "data")
  caption_folder(data, n_train=2, n_val=1)
  cases = [
      (["train", f"--config={TINY}", f"--workdir={tmp_path}/w", "--config.evals.val.batch_size=0"],
       "config.evals.val.batch_size=0: must be a positive integer"),
      (["train", f"--config={TINY}", f"--workdir={tmp_path}/a_file"], f"--workdir {tmp_path}/a_file is a file"),
      (["train", f"--config={TINY}", f"--workdir={tmp_path}/a_file/run"],
       f"--workdir {tmp_path}/a_file/run cannot be created: Not a directory"),
      (["prepare", f"--source=folder:{data}", f"--out={tmp_path}/p", "--image_size=0"],
       "image_size=0 (--image_size / config.data.prepare_size): the shorter side"),
  ]
  for args, message in cases:
    result = run_cli(*args)
    assert result.returncode == errors.EXIT_ERROR, (args, result.stderr[-2000:])
    assert message in _single_error_line(result.stderr), (args, result.stderr[-2000:])
  assert not os.path.exists(tmp_path / "w" / "checkpoints") and not os.path.exists(tmp_path / "p")


# ---- 8. an evaluation lost between a checkpoint and TensorBoard is logged when the run resumes
def _logged(workdir, tag):
  return sorted(step for step, tags in workdir_lib.logged_tags(workdir).items() if tag in tags)


def test_evaluations_lost_from_tensorboard_are_run_again_on_resume(tmp_path):
  workdir = str(tmp_path / "run")
  # As if killed after the train scalars (and checkpoint) of steps 2 and 4, before their evaluations were logged:
  # the first run evaluates nothing, the resumed one evaluates every 2 steps.
  quiet = ("--config.train.log_every=1", "--config.train.checkpoint_every=2", "--config.evals.val.every=0")
  trainer.train_and_evaluate(make_task(load_config(TINY, *quiet), workdir), stop_at_step=4)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))  # and step 4's checkpoint never committed
  assert _logged(workdir, "val/rsum") == []
  resumed = load_config(TINY, *quiet[:2], "--config.evals.val.every=2")
  trainer.train_and_evaluate(make_task(resumed, workdir))
  assert _logged(workdir, "val/rsum") == [2, 4, 6]  # 2: the checkpointed step, again; 4: the redone step
  steps = [step for step, tags in sorted(workdir_lib.logged_tags(workdir).items()) if "train/loss" in tags]
  assert steps == [1, 2, 3, 4, 5, 6]
  from tensorboard.backend.event_processing import event_file_loader
  losses = [e.step for p in glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
            for e in event_file_loader.EventFileLoader(p).Load() for v in e.summary.value if v.tag == "train/loss"]
  assert sorted(losses) == [1, 2, 3, 4, 5, 6]  # nothing written twice


# ---- 9. Ctrl-C saves and exits 130; a second Ctrl-C exits at once
def _start_long_run(workdir):
  proc = subprocess.Popen(helpers.CLI + ["train", f"--config={TINY}", f"--workdir={workdir}",
                                         "--config.train.num_steps=100000", "--config.train.log_every=1",
                                         "--config.train.checkpoint_every=100000"],
                          cwd=REPO, env=helpers.cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while time.time() < deadline and not glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
    time.sleep(0.5)
  time.sleep(3)  # some steps in
  return proc


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path):
  workdir = str(tmp_path / "run")
  proc = _start_long_run(workdir)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == errors.EXIT_INTERRUPTED, err[-3000:]
  assert "Ctrl-C" in err and "Traceback" not in err
  step = checkpointing.Checkpointer(workdir, create=False).latest_step()
  assert step is not None and step > 0


def test_a_second_ctrl_c_stops_at_once(tmp_path):
  watcher = trainer._PreemptionWatcher()  # pylint: disable=protected-access
  try:
    os.kill(os.getpid(), signal.SIGINT)
    assert watcher.should_stop(1) and watcher.reason == "interrupted"
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(1)  # the handler runs at the next bytecode boundary
  finally:
    watcher.close()
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
  # From the command line, whichever Ctrl-C wins the race: exit 130, no traceback.
  proc = _start_long_run(str(tmp_path / "run"))
  proc.send_signal(signal.SIGINT)
  time.sleep(0.2)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == errors.EXIT_INTERRUPTED and "Traceback" not in err, err[-3000:]


# ---- 10. minor gaps
def test_an_image_replaced_with_the_same_size_and_mtime_is_noticed(tmp_path):
  data = str(tmp_path / "data")
  caption_folder(data, n_train=3, n_val=1)
  options = prepared.PrepareOptions(image_size=24)
  before = prepared.source_fingerprint(f"folder:{data}", options)
  image = os.path.join(data, "images", "001.jpg")
  stat = os.stat(image)
  with open(os.path.join(data, "images", "002.jpg"), "rb") as f:
    other = f.read()
  with open(image, "rb") as f:
    assert len(f.read()) == len(other)  # solid-colour JPEGs of one size: same byte count
  with open(image, "wb") as f:
    f.write(other)
  os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  after = prepared.source_fingerprint(f"folder:{data}", options)
  assert after["images_sha256"] != before["images_sha256"]
  assert "image files changed" in prepared._what_changed(before, after)  # pylint: disable=protected-access


def test_a_symlink_out_of_the_dataset_folder_is_refused_unless_allowed(tmp_path):
  data = str(tmp_path / "data")
  lines = caption_folder(data, n_train=3, n_val=1)
  secret = tmp_path / "secret.jpg"
  shutil.copy(os.path.join(data, "images", "000.jpg"), secret)
  os.symlink(secret, os.path.join(data, "images", "link.jpg"))
  os.symlink(os.path.join(data, "images", "001.jpg"), os.path.join(data, "images", "inner.jpg"))
  helpers.write_caption_lines(data, lines + [{"image": "images/link.jpg", "captions": ["x"], "split": "train"}])
  with pytest.raises(records.BadInputError, match=f"images/link.jpg is a symlink to {secret}, outside"):
    records.read_caption_folder(data)
  recs, _ = records.read_caption_folder(data, allow_outside=True)
  assert recs[-1].image_path.endswith("link.jpg")
  helpers.write_caption_lines(data, lines + [{"image": "images/inner.jpg", "captions": ["x"], "split": "train"}])
  assert len(records.read_caption_folder(data)[0]) == 5  # a link inside the folder is fine


def test_export_removes_the_temporaries_a_killed_export_left(tmp_path):
  from xmodal_jax.serving import export
  out = tmp_path / "export"
  (out / "images").mkdir(parents=True)
  left = [out / "images.shard-00000-of-00001.tmp-99999.npz", out / "images" / ".7.jpg.tmp-99999",
          out / "texts.jsonl.tmp-123"]
  for path in left:
    path.write_bytes(b"partial")
  (out / "encoder.tmp-4242").mkdir()
  (out / "notes.tmp.txt").write_text("not ours")
  mine = out / f"manifest.json.tmp-{os.getpid()}"
  mine.write_text("being written by this process")
  removed = export._remove_temporaries(str(out))  # pylint: disable=protected-access
  assert sorted(removed) == sorted(["images.shard-00000-of-00001.tmp-99999.npz", "images/.7.jpg.tmp-99999",
                                    "texts.jsonl.tmp-123", "encoder.tmp-4242"])
  assert not any(p.exists() for p in left) and (out / "notes.tmp.txt").exists() and mine.exists()
