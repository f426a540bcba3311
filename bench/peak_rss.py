"""Peak resident memory for the bench scripts: every speed figure of bench/ is printed beside the peak RSS of the
process that produced it (issue 28 item 11).

ru_maxrss is a high-water mark: in a script that measures several settings in one process, the figure printed beside
a setting is the peak so far (settings measured earlier included); scripts that run each setting in its own worker
process print that worker's own peak.
"""
from __future__ import annotations

import resource


def peak_rss_mb(children: bool = False) -> float:
  """Peak RSS in MB of this process (or, children=True, of the largest waited-for child process)."""
  who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
  return resource.getrusage(who).ru_maxrss / 1024  # Linux: KiB


def label(children: bool = False) -> str:
  return f"peak RSS {peak_rss_mb(children):,.0f} MB"
