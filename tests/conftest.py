"""Test set-up: 8 fake CPU devices, so sharded code is tested without accelerators; fast compilation.

XLA_FLAGS must be set before JAX is imported anywhere, which is why this lives in conftest.py.
Tests never write to the user's cache: XMODAL_CACHE (converted weights, feature caches, prepared data sets named
by default) points to a per-session temporary directory; tests that check cache behaviour set their own.
A per-session persistent compilation cache lets tests that build the same programs several times (kill and
resume runs the trainer three times) compile once; it starts empty, so nothing carries over between sessions.
"""
import atexit
import os
import shutil
import tempfile

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
# XLA's LLVM backend optimisation off: compiling is most of the suite's time (an mFSR train step: 20 s instead of
# 55 s), and the tests' tiny programs run about as fast unoptimised. XLA's HLO passes (fusion, sharding, layout)
# are unchanged; only the CPU code generator's optimisation level drops. Child processes keep the flag
# (tests.helpers.subprocess_xla_flags), so in-process and command-line results stay comparable.
# XMODAL_TEST_FULL_OPTIMIZATION=1 tests with the production compiler settings instead.
_COMPILE_FLAG = "--xla_backend_optimization_level=0"
if os.environ.get("XMODAL_TEST_FULL_OPTIMIZATION") != "1" and "--xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " " + _COMPILE_FLAG
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Keep TensorFlow (imported by clu/tfds) quiet and off any accelerator.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_xmodal_cache = tempfile.mkdtemp(prefix="xmodal-test-cache-")
atexit.register(shutil.rmtree, _xmodal_cache, ignore_errors=True)
os.environ["XMODAL_CACHE"] = _xmodal_cache

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="xmodal-test-jax-cache-")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"


import pytest  # noqa: E402  (after the environment set-up above)


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
  """After each test file: drop JAX's in-memory compiled programs and trace caches and the library's memoised
  loads (functools.lru_cache at module level: loaded scorer runs, generated shapes worlds), collect garbage and
  return freed heap pages to the kernel. A pytest-xdist worker runs many files in one process; without this its
  resident memory grows with every program compiled and run loaded (about 5 GB by the end of the slow tier),
  which, beside the child processes the end-to-end tests start, can exhaust a CI machine's memory. Programs needed
  again are reloaded from the per-session persistent compilation cache above."""
  yield
  import gc  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  if "jax" in sys.modules:
    sys.modules["jax"].clear_caches()
  for name, module in list(sys.modules.items()):
    if name.startswith("xmodal_jax.") and module is not None:
      for value in list(vars(module).values()):
        if hasattr(value, "cache_info") and callable(getattr(value, "cache_clear", None)):
          value.cache_clear()
  gc.collect()
  from xmodal_jax import host_memory  # pylint: disable=import-outside-toplevel
  host_memory.release()


@pytest.fixture(scope="session")
def s1_tiny_run(tmp_path_factory):
  """configs/s1/shapes.py:tiny trained once per session on a 2x4 mesh, interrupted in its first stage and resumed:
  (config, workdir, results). Shared by tests/test_s1_pipeline.py and tests/test_s1_serving.py; tests that write
  into a run copy the workdir first."""
  from tests.helpers import load_config
  from xmodal_jax import pipeline
  workdir = str(tmp_path_factory.mktemp("s1") / "run")
  config = load_config("configs/s1/shapes.py:tiny", "--config.mesh.shape=(2,4)")
  stopped = pipeline.run_pipeline(config, workdir, stop_at_step=2)  # a "preemption" in the first stage
  assert stopped["stopped_early"] and stopped["stage"] == "text_generator (fold 1/2)"
  results = pipeline.run_pipeline(config, workdir)
  return config, workdir, results


@pytest.fixture(scope="session")
def clip_tiny_run(tmp_path_factory):
  """configs/clip/clip_shapes.py:tiny trained once per session on a 2x4 mesh (4 steps): (config, workdir, results).
  Shared by tests/test_clip.py, tests/test_export.py and tests/test_serving_end_to_end.py; read-only."""
  from tests.helpers import load_config
  from xmodal_jax import systems
  from xmodal_jax.train import trainer
  workdir = str(tmp_path_factory.mktemp("clip") / "run")
  config = load_config("configs/clip/clip_shapes.py:tiny", "--config.mesh.shape=(2,4)")
  results = trainer.train_and_evaluate(systems.create(config, workdir))
  return config, workdir, results


@pytest.fixture(scope="session")
def s5_tiny_runs(clip_tiny_run, tmp_path_factory):
  """S5 end to end at tiny size on a 2x4 mesh: the tiny clip run as reward and scorers, an MLE captioner, a reward
  model with a grammar head and attribute negatives, and an SCST fine-tune under it: {name: (config, workdir,
  results)}. Shared by tests/test_captioning.py and tests/test_caption_cli.py; read-only."""
  from tests.helpers import load_config
  from xmodal_jax import systems
  from xmodal_jax.train import trainer
  _, clip_dir, _ = clip_tiny_run
  root = tmp_path_factory.mktemp("s5")
  scorers = [f"--config.scorers.{name}={clip_dir}" for name in ("judge", "clip")]
  runs = {}

  def train(name, config_path, *overrides):
    workdir = str(root / name)
    config = load_config(config_path, "--config.mesh.shape=(2,4)", *overrides)
    runs[name] = (config, workdir, trainer.train_and_evaluate(systems.create(config, workdir)))

  train("mle", "configs/captioning/captioner_shapes.py:tiny", f"--config.reward.workdir={clip_dir}", *scorers)
  train("reward", "configs/captioning/reward_shapes.py:tiny", f"--config.init_from={clip_dir}")
  train("scst", "configs/captioning/captioner_shapes.py:tiny_scst", f"--config.init_from={root / 'mle'}",
        f"--config.reward.workdir={root / 'reward'}", *scorers, f"--config.scorers.grammar={root / 'reward'}",
        "--config.scst.samples=2", "--config.scst.baseline=leave_one_out")
  return runs


@pytest.fixture(scope="session")
def dual_encoder_tiny_run(tmp_path_factory):
  """configs/retrieval/vsepp_flickr8k_pretrained.py:tiny (the dual encoder over the pretrained towers, shapes world)
  trained once per session (the config's 4 steps), no evaluations: its workdir. The reward / base run of S5's tests over the
  pretrained towers (tests/test_captioning_pretrained.py, tests/test_reward_model_pretrained.py); read-only. Skips
  without the pretrained weights packages."""
  from tests.helpers import load_config, skip_without_pretrained_weights
  from xmodal_jax import systems
  from xmodal_jax.train import trainer
  skip_without_pretrained_weights()
  workdir = str(tmp_path_factory.mktemp("dual_encoder") / "run")
  config = load_config("configs/retrieval/vsepp_flickr8k_pretrained.py:tiny", "--config.evals.val.every=0",
                       "--config.evals.test.at_end=False")
  trainer.train_and_evaluate(systems.create(config, workdir))
  return workdir


# Test files that read a tiny run trained once per session (the fixtures above). Under pytest-xdist
# (launch/test.sh) a session fixture is made once per worker, so each set of files below runs on one worker
# (`pytest_xdist_make_scheduler`) and every other test is scheduled on its own. The table is by file because
# xdist's scheduler sees only node ids; `pytest_collection_modifyitems` checks it against the fixtures the tests
# really use. (xdist's `--dist loadgroup` marks no longer take effect with pytest 9.2: pytest-xdist issue 1386.)
_SHARED_RUN_FILES = {
    "s1_tiny_run": ("tests/test_s1_pipeline.py", "tests/test_s1_serving.py"),
    # S5's runs start from the clip run: one worker for both
    "clip_tiny_run": ("tests/test_clip.py", "tests/test_export.py", "tests/test_serving_end_to_end.py",
                      "tests/test_captioning.py", "tests/test_caption_cli.py"),
    "dual_encoder_tiny_run": ("tests/test_captioning_pretrained.py", "tests/test_reward_model_pretrained.py"),
}
_FIXTURE_GROUP = {"s1_tiny_run": "s1_tiny_run", "clip_tiny_run": "clip_tiny_run", "s5_tiny_runs": "clip_tiny_run",
                  "dual_encoder_tiny_run": "dual_encoder_tiny_run"}


def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    path = item.nodeid.split("::", 1)[0]
    for fixture in set(getattr(item, "fixturenames", ())) & set(_FIXTURE_GROUP):
      if path not in _SHARED_RUN_FILES[_FIXTURE_GROUP[fixture]]:
        raise pytest.UsageError(f"{item.nodeid} reads the session fixture {fixture}: add {path} to "
                                f"_SHARED_RUN_FILES[{_FIXTURE_GROUP[fixture]!r}] in tests/conftest.py, so that one "
                                "xdist worker runs all its readers.")


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook (installed by launch/test.sh)
def pytest_xdist_make_scheduler(config, log):
  """xdist's default `--dist load`, except that the files of each shared run go to one worker as a unit."""
  if config.getvalue("dist") != "load":
    return None  # an explicit --dist choice stands
  from xdist.scheduler import LoadScopeScheduling  # pylint: disable=import-outside-toplevel

  group_of = {path: group for group, paths in _SHARED_RUN_FILES.items() for path in paths}

  class SharedRunScheduling(LoadScopeScheduling):
    def _split_scope(self, nodeid):
      return group_of.get(nodeid.split("::", 1)[0], nodeid)

  return SharedRunScheduling(config, log)
