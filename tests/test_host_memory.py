"""xmodal_jax/host_memory.py: the policy's switches and the trimmer's bound (issue 28 item 11)."""
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
  code = ("import os, sys; from xmodal_jax import host_memory as h; h.reexec_with_huge_pages(); "
          "print(os.environ.get('GLIBC_TUNABLES'), h.mode())")
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "XMODAL_HOST_MEMORY_REEXEC")}
  env.update(JAX_PLATFORMS="cpu", XMODAL_KEEP_HOST_MEMORY="1")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert out.stdout.split() == [host_memory.HUGETLB_TUNABLE, "huge_pages"]
