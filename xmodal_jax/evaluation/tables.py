"""The one formatter of result tables (markdown "pipe" tables, through `tabulate`)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tabulate import tabulate


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str = "",
                   floatfmt: str = ".2f", footer: str = "") -> str:
  """A markdown table: text left-aligned, numbers right-aligned; optional bold title and footer line.

  Missing values (None) print as "-".
  """
  table = tabulate([list(r) for r in rows], headers=list(headers), tablefmt="pipe", floatfmt=floatfmt,
                   numalign="right", stralign="left", missingval="-")
  lines = ([f"**{title}**", ""] if title else []) + [table]
  if footer:
    lines += ["", footer]
  return "\n".join(lines)


def format_distribution(distribution: Mapping[str, int], header: str = "images") -> str:
  """A markdown table of images per class (e.g. data/taxonomy.py's class_distribution): class | count | % of all
  images (dropped included), then the total."""
  total = sum(distribution.values())
  rows = [[name, count, 100 * count / max(total, 1)] for name, count in distribution.items()]
  rows.append(["total", total, 100.0])
  return markdown_table(["class", header, "%"], rows, floatfmt=".1f")
