"""The one formatter of result tables (markdown "pipe" tables, through `tabulate`)."""
from __future__ import annotations

from typing import Any, Sequence

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
