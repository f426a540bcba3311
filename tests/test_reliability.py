"""Failure behaviour (issue 9): stale prepared data, image decoding, the workdir lock, config changes on resume,
exit codes, config validation, errors without tracebacks, the bad-record ceiling, paths outside the dataset,
the NaN guard before evaluation, --stop_at_step below the current step, TensorBoard after a resume, and a
SIGKILL during an asynchronous checkpoint write."""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

from tests import helpers
from tests.helpers import REPO, load_config, make_task
from xmodal_jax import errors
from xmodal_jax.data import prepared, records, sources
from xmodal_jax.train import checkpointing, trainer, workdir as workdir_lib

CLI = helpers.CLI
TINY = helpers.TINY
_env, _cli, _folder, _write_lines = helpers.cli_env, helpers.run_cli, helpers.caption_folder, helpers.write_caption_lines


def _data_config(source, **fields):
  config = load_config(TINY).data
  with config.unlocked():
    config.update(dict(source=source, prepare_size=24, image_size=24), **fields)
  return config


# ---- 1. stale prepared data
def test_prepared_cache_follows_edits_missing_images_and_options(tmp_path, monkeypatch):
  monkeypatch.setenv("XMODAL_CACHE", str(tmp_path / "cache"))
  root = str(tmp_path / "data")
  lines = _folder(root)
  config = _data_config(f"folder:{root}")
  assert len(sources.load_split(config, "train")) == 12
  prepared._CHECKED.clear()  # a new process
  _write_lines(root, lines[1:])  # a record dropped and a caption changed: the cache must not serve the old set
  lines[5]["captions"] = ["an edited caption"]
  _write_lines(root, lines[1:])
  train = sources.load_split(config, "train")
  assert len(train) == 11 and ["an edited caption"] in train.captions
  # A missing image, skipped under skip_bad, then restored: the set follows.
  prepared._CHECKED.clear()
  moved = os.path.join(root, "images", "003.jpg")
  os.rename(moved, moved + ".away")
  lenient = _data_config(f"folder:{root}", skip_bad=True, max_bad_fraction=0.5)
  assert len(sources.load_split(lenient, "train")) == 10
  prepared._CHECKED.clear()
  os.rename(moved + ".away", moved)
  assert len(sources.load_split(lenient, "train")) == 11
  # A strict run never reuses a set prepared with skip_bad: it fails on the bad record.
  prepared._CHECKED.clear()
  _write_lines(root, lines[1:] + [{"image": "images/nope.jpg", "captions": ["x y"], "split": "train"}])
  assert len(sources.load_split(lenient, "train")) == 11
  prepared._CHECKED.clear()
  with pytest.raises(records.BadInputError, match="nope.jpg"):
    sources.load_split(config, "train")


def test_a_named_prepared_dir_that_went_stale_is_refused_and_prepare_rebuilds_it(tmp_path):
  root, out = str(tmp_path / "data"), str(tmp_path / "prepared")
  lines = _folder(root)
  result = _cli("prepare", f"--source=folder:{root}", f"--out={out}", "--image_size=24")
  assert result.returncode == 0, result.stderr[-2000:]
  assert prepared.read_summary(out)["examples"] == {"train": 12, "val": 6}
  _write_lines(root, lines[:-2])
  config = _data_config(f"folder:{root}", prepared_dir=out)
  prepared._CHECKED.clear()
  with pytest.raises(errors.DataError, match="no longer matches .*the records file changed.*xmodal prepare"):
    sources.load_split(config, "val")
  again = _cli("prepare", f"--source=folder:{root}", f"--out={out}", "--image_size=24")
  assert again.returncode == 0, again.stderr[-2000:]
  assert prepared.read_summary(out)["examples"] == {"train": 12, "val": 4}  # the new splits, not {} or stale
  assert len(sources.load_split(config, "val")) == 4
  assert not glob.glob(out + ".building-*") and not glob.glob(out + ".old-*")


# ---- 2. images that decode wrongly
def test_every_image_mode_is_converted_or_named(tmp_path):
  ramp = np.linspace(0, 65535, 40 * 30).reshape(30, 40).astype(np.uint16)
  Image.fromarray(ramp).save(tmp_path / "gray16.png")
  gray = records.load_image(str(tmp_path / "gray16.png"))
  assert gray.shape == (30, 40, 3) and abs(gray.mean() - 127.5) < 1.0  # scaled, not clipped to white
  Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(tmp_path / "float.tiff")
  assert records.load_image(str(tmp_path / "float.tiff")).max() == 128
  Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
  assert tuple(records.load_image(str(tmp_path / "cmyk.jpg"))[0, 0]) == (255, 0, 0)
  palette = Image.new("P", (4, 4), 1)
  palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
  palette.info["transparency"] = 1
  palette.save(tmp_path / "transparent.png", transparency=1)
  assert tuple(records.load_image(str(tmp_path / "transparent.png"))[0, 0]) == (255, 255, 255)  # over white
  upright = Image.new("RGB", (40, 20), (255, 0, 0))
  exif = upright.getexif()
  exif[0x0112] = 6  # stored rotated: displayed 90 degrees clockwise
  upright.save(tmp_path / "rotated.jpg", exif=exif)
  assert records.load_image(str(tmp_path / "rotated.jpg")).shape == (40, 20, 3)
  Image.new("I", (4, 4), 70000).save(tmp_path / "int32.tiff")
  with pytest.raises(records.BadInputError, match="int32.tiff.*beyond 16 bits"):
    records.load_image(str(tmp_path / "int32.tiff"))
  Image.new("RGB", (2000, 20)).save(tmp_path / "strip.png")
  with pytest.raises(records.BadInputError, match="strip.png: aspect ratio 2000x20"):
    records.load_image(str(tmp_path / "strip.png"))


def test_skip_bad_catches_every_per_file_failure(tmp_path):
  root = str(tmp_path / "data")
  _folder(root, n_train=12, n_val=2)
  Image.new("RGB", (2000, 20)).save(os.path.join(root, "images", "004.jpg"))  # extreme aspect ratio
  with open(os.path.join(root, "images", "005.jpg"), "wb") as f:
    f.write(b"\xff\xd8\xff not really a jpeg")
  with pytest.raises(records.BadInputError, match="004.jpg: aspect ratio"):
    prepared.prepare(f"folder:{root}", str(tmp_path / "strict"), image_size=24)
  summary = prepared.prepare(f"folder:{root}", str(tmp_path / "lenient"), options=prepared.PrepareOptions(
      image_size=24, skip_bad=True, max_bad_fraction=0.2))
  assert summary["examples"] == {"train": 10, "val": 2}
  assert summary["skipped"] == {"extreme aspect ratio": 1, "corrupt image": 1}
  assert not os.path.exists(tmp_path / "strict")  # the failed build left nothing behind


# ---- 3. one trainer per workdir
def test_a_second_trainer_on_a_locked_workdir_fails_at_once_naming_the_holder(tmp_path):
  workdir = str(tmp_path / "run")
  with workdir_lib.WorkdirLock(workdir):
    start = time.time()
    result = _cli("train", f"--config={TINY}", f"--workdir={workdir}")
    assert result.returncode == errors.EXIT_ERROR and time.time() - start < 120
    assert f"in use by pid {os.getpid()} on host" in result.stderr and "Traceback" not in result.stderr
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))
  # A holder killed by SIGKILL releases the lock (the OS drops it).
  holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from xmodal_jax.train import workdir; "
                             f"l = workdir.WorkdirLock({workdir!r}).__enter__(); print('held', flush=True); "
                             "time.sleep(600)"], cwd=REPO, env=_env(), stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "held"
  with pytest.raises(errors.WorkdirError, match=f"pid {holder.pid}"):
    workdir_lib.WorkdirLock(workdir).__enter__()
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  with workdir_lib.WorkdirLock(workdir):
    pass


# ---- 4. resuming with a changed config; 5. exit codes; 10b. --stop_at_step below the current step
@pytest.mark.slow  # four CLI runs; `launch/test.sh -m slow`
def test_changed_model_is_refused_before_anything_is_written_and_harmless_changes_resume(tmp_path):
  workdir = str(tmp_path / "run")
  stopped = _cli("train", f"--config={TINY}", f"--workdir={workdir}", "--stop_at_step=2")
  assert stopped.returncode == errors.EXIT_STOPPED, stopped.stderr[-2000:]
  with open(os.path.join(workdir, "config.json"), "rb") as f:
    before = f.read()
  changed = _cli("train", f"--config={TINY}", f"--workdir={workdir}", "--config.model.embed_dim=48")
  assert changed.returncode == errors.EXIT_ERROR and "Traceback" not in changed.stderr
  assert "model.embed_dim: 32 -> 48" in changed.stderr and "--allow_config_change" in changed.stderr
  with open(os.path.join(workdir, "config.json"), "rb") as f:
    assert f.read() == before  # the record is untouched
  forced = _cli("train", f"--config={TINY}", f"--workdir={workdir}", "--config.model.embed_dim=48",
                "--allow_config_change")
  assert forced.returncode == errors.EXIT_ERROR and "does not fit this config's model" in forced.stderr
  below = _cli("train", f"--config={TINY}", f"--workdir={workdir}", "--stop_at_step=1")
  assert below.returncode == errors.EXIT_STOPPED and "nothing to train" in below.stderr
  assert checkpointing.Checkpointer(workdir, create=False).latest_step() == 2
  harmless = _cli("train", f"--config={TINY}", f"--workdir={workdir}", "--config.train.log_every=3")
  assert harmless.returncode == errors.EXIT_OK, harmless.stderr[-2000:]
  assert "Resuming" in harmless.stderr and "train.log_every: 2 -> 3" in harmless.stderr


def test_sigterm_saves_and_exits_143(tmp_path):
  workdir = str(tmp_path / "run")
  proc = subprocess.Popen(CLI + ["train", f"--config={TINY}", f"--workdir={workdir}", "--config.train.num_steps=100000",
                                 "--config.train.log_every=1", "--config.train.checkpoint_every=100000"],
                          cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while time.time() < deadline and not glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
    time.sleep(0.5)
  time.sleep(3)  # some steps in
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == errors.EXIT_PREEMPTED, err[-2000:]
  step = checkpointing.Checkpointer(workdir, create=False).latest_step()
  assert step is not None and step > 0 and "preemption signal" in err


# ---- 6. config values
@pytest.mark.parametrize("override,message", [
    ("--config.train.batch_size=0", "config.train.batch_size=0: must be a positive integer"),
    ("--config.train.batch_size=-8", "config.train.batch_size=-8: must be a positive integer"),
    ("--config.train.log_every=0", "config.train.log_every=0: must be a positive integer"),
    ("--config.train.checkpoint_every=0", "config.train.checkpoint_every=0: must be a positive integer"),
    ("--config.train.batch_size=12", "config.train.batch_size=12: the global batch must be divisible by the mesh's "
                                     "data-parallel size (8"),
    ("--config.optimizer.learning_rate=-1.0", "config.optimizer.learning_rate=-1.0: must be a finite number > 0"),
])
def test_bad_config_values_are_named_before_any_array(tmp_path, override, message):
  config = load_config(TINY, "--config.mesh.shape=(8,1)", override)
  task = make_task(config, tmp_path)
  with pytest.raises(errors.ConfigError) as info:
    trainer.train_and_evaluate(task)
  assert message in str(info.value)
  assert not os.path.exists(tmp_path / "checkpoints") and not os.path.exists(tmp_path / "config.json")


# ---- 7. errors without tracebacks
def test_user_errors_print_one_message_and_exit_non_zero(tmp_path):
  cases = [
      (["train", "--config=configs/nope.py", f"--workdir={tmp_path}/a"], errors.EXIT_USAGE, "configs/nope.py does not exist"),
      (["train", f"--config={TINY}", f"--workdir={tmp_path}/a", "--config.train.bach_size=1"], errors.EXIT_USAGE,
       "unknown config field 'bach_size'; did you mean 'batch_size'?"),
      (["train", "--config=configs/retrieval/vsepp_shapes.py:huge", f"--workdir={tmp_path}/a"], errors.EXIT_USAGE,
       "unknown variant 'huge'"),
      (["eval", f"--config={TINY}", f"--workdir={tmp_path}/empty"], errors.EXIT_ERROR, "tokenizer.json not found"),
      (["classify", f"--workdir={tmp_path}/empty", "x.png"], errors.EXIT_ERROR, "config.json not found"),
  ]
  for args, code, message in cases:
    result = _cli(*args)
    assert result.returncode == code, (args, result.stderr[-2000:])
    assert message in result.stderr and "Traceback" not in result.stderr, (args, result.stderr[-2000:])
  verbose = _cli("eval", f"--config={TINY}", f"--workdir={tmp_path}/empty", "--verbose")
  assert verbose.returncode != 0 and "Traceback" in verbose.stderr


# ---- 8. the bad-record ceiling, caption-level skipping
def test_skip_bad_has_a_ceiling_and_keeps_good_captions(tmp_path):
  root = str(tmp_path / "data")
  lines = _folder(root, n_train=60, n_val=1)
  _write_lines(root, lines, encoding="utf-16")  # every line unreadable as UTF-8 JSON
  with pytest.raises(records.BadInputError, match=r"6\d of 6\d records are bad .*commonest reason is 'malformed JSON'"):
    records.read_caption_folder(root, skip_bad=True)
  lines[0]["captions"] = ["a good caption", "", 7]
  _write_lines(root, lines)
  recs, report = records.read_caption_folder(root, skip_bad=True, max_bad_fraction=0.05)
  assert len(recs) == 61 and recs[0].captions == ("a good caption",)
  assert report.caption_counts == {"empty caption": 1, "non-text caption": 1} and report.total() == 0
  lines[1]["image"] = "images/missing.jpg"
  _write_lines(root, lines)
  with pytest.raises(records.BadInputError, match="1 of 61 records are bad .*'missing image file'"):
    records.read_caption_folder(root, skip_bad=True, max_bad_fraction=0.01)


# ---- 9. paths outside the dataset folder
def test_paths_outside_the_dataset_are_refused_unless_allowed(tmp_path):
  root = str(tmp_path / "data")
  lines = _folder(root, n_train=3, n_val=1)
  shutil.copy(os.path.join(root, "images", "000.jpg"), tmp_path / "outside.jpg")
  for image in ("../outside.jpg", str(tmp_path / "outside.jpg")):
    _write_lines(root, lines + [{"image": image, "captions": ["x y"], "split": "train", "image_id": 1}])
    with pytest.raises(records.BadInputError, match="outside the dataset folder") as info:
      records.read_caption_folder(root)
    assert info.value.reason == "path outside the dataset folder"
    recs, _ = records.read_caption_folder(root, allow_outside=True)
    assert recs[-1].image_path == str(tmp_path / "outside.jpg")


# ---- 10. the NaN guard fires before an evaluation; TensorBoard after a resume
def test_nan_guard_fires_before_an_evaluation_of_a_diverged_state(tmp_path):
  config = load_config(TINY, "--config.optimizer.learning_rate=1e30", "--config.optimizer.grad_clip_norm=0.0",
                       "--config.optimizer.warmup_steps=0", "--config.train.log_every=100",
                       "--config.train.checkpoint_every=100", "--config.evals.val.every=1")
  with pytest.raises(trainer.NonFiniteLossError, match=r"NaN/Inf at step \d+"):
    trainer.train_and_evaluate(make_task(config, tmp_path))


def _logged_steps(workdir, tag="train/loss"):
  from tensorboard.backend.event_processing import event_file_loader
  steps = []
  for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
    for event in event_file_loader.EventFileLoader(path).Load():
      steps += [event.step for value in event.summary.value if value.tag == tag]
  return sorted(steps)


def test_a_resumed_run_does_not_log_redone_steps_twice(tmp_path):
  workdir = str(tmp_path / "run")
  overrides = ("--config.train.log_every=1", "--config.train.checkpoint_every=2", "--config.evals.val.every=0")
  trainer.train_and_evaluate(make_task(load_config(TINY, *overrides), workdir), stop_at_step=4)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))  # as if killed after logging step 4, before saving it
  trainer.train_and_evaluate(make_task(load_config(TINY, *overrides), workdir))
  assert _logged_steps(workdir) == [1, 2, 3, 4, 5, 6]


# ---- acceptance: SIGKILL during an asynchronous checkpoint write
def test_sigkill_during_an_async_checkpoint_write_resumes_to_the_uninterrupted_result(tmp_path):
  args = ["train", f"--config={TINY}", "--config.train.checkpoint_every=2", "--config.evals.val.every=0"]
  killed = _cli(*args, f"--workdir={tmp_path / 'killed'}", env=_env(**{checkpointing.FAULT_KILL_DURING_SAVE: "4"}))
  assert killed.returncode == -signal.SIGKILL
  steps = checkpointing.Checkpointer(str(tmp_path / "killed"), create=False).latest_step()
  assert steps == 2  # the write of step 4 never committed; step 2 is intact
  resumed = _cli(*args, f"--workdir={tmp_path / 'killed'}")
  straight = _cli(*args, f"--workdir={tmp_path / 'straight'}")
  assert resumed.returncode == 0 and straight.returncode == 0, (resumed.stderr[-2000:], straight.stderr[-2000:])
  a = json.load(open(tmp_path / "killed" / "results.json"))
  b = json.load(open(tmp_path / "straight" / "results.json"))
  assert a["step"] == b["step"] == 6 and a["metrics"] == b["metrics"]
  from xmodal_jax import systems
  for x, y in zip(jax.tree.leaves(systems.load_run(str(tmp_path / "killed"), mesh_shape=(-1, 1)).variables),
                  jax.tree.leaves(systems.load_run(str(tmp_path / "straight"), mesh_shape=(-1, 1)).variables)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
