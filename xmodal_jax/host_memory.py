"""Host-memory policy for CPU training: make XLA's per-step temporary arena cheap to reuse, with bounded memory.

Why: XLA:CPU allocates one temporary arena per execution of a program (every intermediate of a train step packed
into one buffer: 1.29 GB for the CLIP reference step of bench/clip_step.py) and frees it when the step ends.
glibc serves allocations that large with a fresh `mmap` and returns them with `munmap`, so every step the kernel
maps and zeroes ~330,000 new 4 KiB pages: 0.75 s of kernel time in a 1.8 s step (measured on that benchmark).

Two ways out, in order of preference (issue 28 item 11; bench/clip_step.py compares them):

1. Huge pages (preferred; `huge_pages()`): glibc's tunable `glibc.malloc.hugetlb=1` makes malloc `madvise` its
   mmap-served blocks MADV_HUGEPAGE, so the arena faults in 2 MiB pages (~1,100 faults per step instead of
   ~330,000) and is still returned to the kernel after every step. Reference step: the speed of the kept heap,
   peak RSS 1.95-1.99 GB (1.44x open_clip's) instead of 3.2-4.7 GB. The tunable is read when the process starts:
   set GLIBC_TUNABLES=glibc.malloc.hugetlb=1 in the environment (launch/env.sh), or call `reexec_with_huge_pages()`
   first thing in a command-line entry point. Needs transparent huge pages in "madvise" or "always" mode.

2. Kept heap (fallback, when the tunable is not set): glibc `mallopt` before JAX starts its threads: one malloc
   arena (M_ARENA_MAX=1), no mmap-served blocks (M_MMAP_MAX=0; M_MMAP_THRESHOLD cannot do this: glibc refuses
   thresholds above 32 MiB) and no trimming of the heap's top (M_TRIM_THRESHOLD=max): later steps reuse the same
   pages, 0 page faults per step. Alone it is unbounded: the freed arena is a hole in the heap that small
   allocations split, the next arena no longer fits in it and is carved from fresh memory, and each time that
   happens the process keeps one more arena (reference step: 2.1 GB, then 3.4 GB, then 4.7 GB within 12 steps).

In both, a daemon thread (`_Trimmer`) bounds what is kept: every XMODAL_HOST_MEMORY_CHECK_S seconds (1) it
compares the resident memory that malloc does not have in use (RSS - mallinfo2 in use, above its level just after
the last trim) with XMODAL_HOST_MEMORY_KEEP_MB (256 with huge pages; 1024 for the kept heap, or the most memory in
use seen so far if larger: room for one more arena, so at most about twice the live peak) and calls malloc_trim(0)
past it; negative: no trimmer. Once jax is imported it also trims after every compilation of 0.5 s or more (the
compiler leaves ~200 MB freed under the first step's peak). `release()` trims at once.

The policy applies when `keep_freed_memory()` is called (once per process; later calls return the first result):
at start-up of the `xmodal` command (main.run, before JAX starts its threads) and at the start of
`train.trainer.train_and_evaluate` (a library user's training), never on import. It applies on Linux with glibc,
when no accelerator plugin (libtpu, jax_cuda*_plugin, jax_rocm*_plugin) is installed or JAX_PLATFORMS is "cpu".
XMODAL_KEEP_HOST_MEMORY=0 turns it all off (plain glibc), =1 forces it on. Call it before importing jax for the
kept heap to take full effect (threads that already have an arena keep it).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import platform
import sys
import threading

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
HUGETLB_TUNABLE = "glibc.malloc.hugetlb=1"
_THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"
_ACCELERATOR_PLUGINS = ("libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin")
_REEXEC_MARK = "XMODAL_HOST_MEMORY_REEXEC"
_applied: bool | None = None
_mode = "off"
_trimmer: "_Trimmer | None" = None


class _MallInfo2(ctypes.Structure):
  _fields_ = [(name, ctypes.c_size_t) for name in
              ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
               "keepcost")]


def _libc():
  try:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
  except OSError:
    return None


def _wanted() -> bool:
  setting = os.environ.get("XMODAL_KEEP_HOST_MEMORY", "auto").strip().lower()
  if setting in ("0", "false", "off", "no"):
    return False
  if setting in ("1", "true", "on", "yes"):
    return True
  platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
  if platforms:
    return platforms == "cpu"
  return not any(importlib.util.find_spec(name) is not None for name in _ACCELERATOR_PLUGINS)


def _glibc() -> bool:
  return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def thp_mode() -> str:
  """The kernel's transparent-huge-page mode ("always", "madvise", "never"; "" where unknown)."""
  try:
    with open(_THP_ENABLED) as f:
      text = f.read()
  except OSError:
    return ""
  return text[text.find("[") + 1:text.find("]")] if "[" in text else ""


def huge_pages() -> bool:
  """Whether this process started with glibc's hugetlb tunable on and the kernel can give huge pages."""
  return HUGETLB_TUNABLE in os.environ.get("GLIBC_TUNABLES", "").split(":") and thp_mode() in ("always", "madvise")


def reexec_with_huge_pages() -> None:
  """Re-executes this process (same argv) with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 when the policy wants it and
  it is not set yet; returns otherwise. Call it first thing in a command-line entry point, before any thread starts."""
  if (os.environ.get(_REEXEC_MARK) or not _glibc() or not _wanted() or thp_mode() not in ("always", "madvise")
      or huge_pages()):
    return
  tunables = [t for t in os.environ.get("GLIBC_TUNABLES", "").split(":") if t and not t.startswith("glibc.malloc.hugetlb=")]
  env = dict(os.environ, GLIBC_TUNABLES=":".join(tunables + [HUGETLB_TUNABLE]), **{_REEXEC_MARK: "1"})
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
  except OSError:
    return


def heap_bytes() -> tuple[int, int]:
  """(in use, free) bytes of glibc's malloc: mallinfo2 (uordblks + hblkhd: heap chunks and mmap-served blocks in
  use; fordblks: free heap chunks); (-1, -1) where unknown."""
  libc = _libc()
  if libc is None or not hasattr(libc, "mallinfo2"):
    return -1, -1
  libc.mallinfo2.restype = _MallInfo2
  info = libc.mallinfo2()
  return int(info.uordblks + info.hblkhd), int(info.fordblks)


def resident_bytes() -> int:
  """This process's resident set size now (/proc/self/statm), 0 where unknown."""
  try:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
  except (OSError, ValueError, IndexError):
    return 0


def release() -> bool:
  """Returns the heap's free pages to the kernel now (glibc malloc_trim(0)); True if any were."""
  libc = _libc() if _glibc() else None
  return bool(libc is not None and libc.malloc_trim(0))


class _Trimmer(threading.Thread):
  """Daemon thread that bounds the freed memory the process keeps: every `period_s` it compares the resident memory
  not in use by malloc (RSS - in use; above what it was just after the last trim: code, mapped files) with
  `keep_bytes` (with `grow_with_peak`: or the most memory in use seen so far, if larger) and calls malloc_trim(0)
  when it is exceeded. Once jax is imported it also trims after every compilation longer than `compile_s` (the
  compiler's freed memory, ~200 MB for the reference step, would otherwise sit under the first step's peak)."""

  def __init__(self, keep_bytes: int, period_s: float, grow_with_peak: bool, compile_s: float = 0.5):
    super().__init__(name="xmodal-host-memory", daemon=True)
    self.keep_bytes, self.period_s, self.grow_with_peak, self.compile_s = keep_bytes, period_s, grow_with_peak, compile_s
    self.trims, self.peak_in_use, self.floor = 0, 0, None
    self._listening = False
    self._stop = threading.Event()

  def _trim(self) -> None:
    if release():
      self.trims += 1
    self.floor = resident_bytes() - heap_bytes()[0]

  def _on_event(self, event: str, duration: float, **_) -> None:
    if event == "/jax/core/compile/backend_compile_duration" and duration >= self.compile_s:
      self._trim()

  def _listen_to_compiles(self) -> None:
    monitoring = sys.modules.get("jax.monitoring")
    if monitoring is not None and hasattr(monitoring, "register_event_duration_secs_listener"):
      monitoring.register_event_duration_secs_listener(self._on_event)
      self._listening = True

  def check(self) -> None:
    if not self._listening:
      self._listen_to_compiles()
    in_use, _ = heap_bytes()
    self.peak_in_use = max(self.peak_in_use, in_use)
    idle = resident_bytes() - in_use
    if self.floor is None:
      self.floor = idle
    keep = max(self.keep_bytes, self.peak_in_use) if self.grow_with_peak else self.keep_bytes
    if idle > self.floor + keep:
      self._trim()

  def run(self) -> None:
    while not self._stop.wait(self.period_s):
      self.check()

  def stop(self) -> None:
    self._stop.set()


def keep_freed_memory() -> bool:
  """Apply the policy once (see the module docstring); True if huge pages or the bounded kept heap are in effect."""
  global _applied, _mode, _trimmer
  if _applied is not None:
    return _applied
  _applied = False
  if not _glibc() or not _wanted():
    return False
  libc = _libc()
  if libc is None:
    return False
  if huge_pages():
    _applied, _mode = True, "huge_pages"
  else:
    # mallopt returns 1 on success. M_TRIM_THRESHOLD's int -1 is read as the largest size_t: never trim the top.
    _applied = all(libc.mallopt(option, value) == 1
                   for option, value in ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1)))
    _mode = "kept_heap" if _applied else "off"
  keep_mb = float(os.environ.get("XMODAL_HOST_MEMORY_KEEP_MB", "256" if _mode == "huge_pages" else "1024"))
  if _applied and keep_mb >= 0 and hasattr(libc, "mallinfo2"):
    _trimmer = _Trimmer(int(keep_mb * 2**20), float(os.environ.get("XMODAL_HOST_MEMORY_CHECK_S", "1")),
                        grow_with_peak=_mode == "kept_heap")
    _trimmer.start()
  return _applied


def applied() -> bool:
  """Whether `keep_freed_memory` put a policy in effect in this process."""
  return bool(_applied)


def mode() -> str:
  """"huge_pages", "kept_heap" (bounded by the trimmer) or "off"."""
  return _mode


def trims() -> int:
  """How many times the trimmer returned memory so far."""
  return _trimmer.trims if _trimmer is not None else 0
