"""xmodal_jax/host_memory.py: the policy's switches and the trimmer's bound (issue 28 item 11), and where it is applied:
at start-up of the CLI and of the trainer, never on import (issue 29)."""
import os
import subprocess
import sys

import pytest

from xmodal_jax import host_memory

pytestmark = pytest.mark.skipif(not host_memory._glibc(), reason="glibc only")  # pylint: disable=protected-access


def test_huge_pages_needs_the_tunable(monkeypatch):
  monkeypatch.setattr(host_memory, "thp_mode", lambda: "madvise")
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.check=0")
  assert not host_memory.huge_pages()
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.check=0:" + host_memory.HUGETLB_TUNABLE)
  assert host_memory.huge_pages()
  monkeypatch.setattr(host_memory, "thp_mode", lambda: "never")
  assert not host_memory.huge_pages()


def test_trimmer_trims_only_above_the_kept_amount(monkeypatch):
  rss = {"now": 1000 * 2**20}
  monkeypatch.setattr(host_memory, "resident_bytes", lambda: rss["now"])
  monkeypatch.setattr(host_memory, "heap_bytes", lambda: (400 * 2**20, 0))
  monkeypatch.setattr(host_memory, "release", lambda: True)
  trimmer = host_memory._Trimmer(256 * 2**20, 1.0, grow_with_peak=False)  # pylint: disable=protected-access
  trimmer.check()  # calibrates: 600 MB resident and not in use
  rss["now"] += 200 * 2**20
  trimmer.check()
  assert trimmer.trims == 0
  rss["now"] += 100 * 2**20  # 300 MB over the floor > 256 MB kept
  trimmer.check()
  assert trimmer.trims == 1
  grow = host_memory._Trimmer(256 * 2**20, 1.0, grow_with_peak=True)  # pylint: disable=protected-access
  grow.check()
  rss["now"] += 300 * 2**20  # under the 400 MB in use, which the kept heap may keep once more
  grow.check()
  assert grow.trims == 0


def test_trimmer_trims_after_long_compiles(monkeypatch):
  monkeypatch.setattr(host_memory, "release", lambda: True)
  trimmer = host_memory._Trimmer(2**30, 1.0, grow_with_peak=False, compile_s=0.5)  # pylint: disable=protected-access
  trimmer._on_event("/jax/core/compile/backend_compile_duration", 0.1)  # pylint: disable=protected-access
  trimmer._on_event("/jax/other", 5.0)  # pylint: disable=protected-access
  assert trimmer.trims == 0
  trimmer._on_event("/jax/core/compile/backend_compile_duration", 2.0)  # pylint: disable=protected-access
  assert trimmer.trims == 1


def test_release_and_heap_bytes_work():
  host_memory.release()
  in_use, free = host_memory.heap_bytes()
  assert in_use > 0 and free >= 0
  assert host_memory.resident_bytes() > 0


@pytest.mark.skipif(host_memory.thp_mode() not in ("always", "madvise"), reason="no transparent huge pages")
def test_reexec_sets_the_tunable_once():
  code = ("import os, sys; from xmodal_jax import host_memory as h; h.reexec_with_huge_pages(); h.keep_freed_memory(); "
          "print(os.environ.get('GLIBC_TUNABLES'), h.mode())")  # as main.run starts
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "XMODAL_HOST_MEMORY_REEXEC")}
  env.update(JAX_PLATFORMS="cpu", XMODAL_KEEP_HOST_MEMORY="1")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert out.stdout.split() == [host_memory.HUGETLB_TUNABLE, "huge_pages"]


def _fresh_process(code: str, **env) -> str:
  environ = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "XMODAL_HOST_MEMORY_REEXEC")}
  environ.update(JAX_PLATFORMS="cpu", **env)
  out = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  return out.stdout.strip()


def test_importing_the_package_changes_no_malloc_setting():
  code = ("import threading, xmodal_jax, xmodal_jax.main, xmodal_jax.systems, xmodal_jax.train.trainer; "
          "from xmodal_jax import host_memory as h; "
          "print(h._applied, h.mode(), h._trimmer, any(t.name == 'xmodal-host-memory' for t in threading.enumerate()))")
  assert _fresh_process(code, XMODAL_KEEP_HOST_MEMORY="1").split() == ["None", "off", "None", "False"]


def test_the_policy_applies_once_and_can_be_turned_off():
  code = ("import threading; from xmodal_jax import host_memory as h; first = h.keep_freed_memory(); "
          "trimmers = sum(t.name == 'xmodal-host-memory' for t in threading.enumerate()); "
          "print(first, h.keep_freed_memory(), h.mode(), trimmers)")
  assert _fresh_process(code, XMODAL_KEEP_HOST_MEMORY="1").split() == ["True", "True", "kept_heap", "1"]
  assert _fresh_process(code, XMODAL_KEEP_HOST_MEMORY="0").split() == ["False", "False", "off", "0"]


def test_the_cli_and_the_trainer_apply_it_at_start_up(monkeypatch):
  from xmodal_jax import main
  from xmodal_jax.train import trainer
  calls = []
  monkeypatch.setattr(host_memory, "reexec_with_huge_pages", lambda: calls.append("reexec"))
  monkeypatch.setattr(host_memory, "keep_freed_memory", lambda: calls.append("keep") or False)
  monkeypatch.setattr(main.app, "run", lambda *args, **kwargs: calls.append("app"))
  main.run()
  assert calls == ["reexec", "keep", "app"]

  class Started(Exception):
    pass

  def first_thing():
    raise Started

  monkeypatch.setattr(host_memory, "keep_freed_memory", first_thing)
  with pytest.raises(Started):
    trainer.train_and_evaluate(None)  # the policy comes before anything reads the task
