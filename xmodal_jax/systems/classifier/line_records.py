"""Small tabular inputs read line by line: JSON Lines (one object per line) or, for files ending in .tsv,
tab-separated columns in a fixed order. S1's click logs, query associations and label files use it.

Every bad line raises `records.BadInputError` naming the file, the line, the problem and the fix; with
`skip_bad` it is counted instead and the read fails only if more than `max_bad_fraction` of the lines are bad
(the same rule as data/records.py). Nothing is dropped silently: the caller logs `ReadSummary.describe()`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Iterator, Sequence, TypeVar

from xmodal_jax.data import records
from xmodal_jax.data import text as text_lib

T = TypeVar("T")


@dataclasses.dataclass
class ReadSummary:
  path: str
  kept: int = 0
  skipped: int = 0
  first_skipped: str = ""

  def describe(self) -> str:
    out = f"{self.path}: {self.kept} lines read"
    return out + (f", {self.skipped} bad lines skipped (first: {self.first_skipped})" if self.skipped else "")


def bad(where: str, problem: str, fix: str) -> records.BadInputError:
  return records.BadInputError(f"{where}: {problem}. {fix}", problem)


def _fields(line: bytes, where: str, columns: Sequence[str], required: int, tsv: bool, fmt: str) -> dict[str, Any]:
  """One line -> {column: value}; the first `required` columns must be present."""
  try:
    text = line.decode("utf-8").rstrip("\r\n")
  except UnicodeDecodeError:
    raise bad(where, "not UTF-8 text", "Save the file as UTF-8.") from None
  if tsv:
    cells = text.split("\t")
    if not required <= len(cells) <= len(columns):
      raise bad(where, f"{len(cells)} tab-separated columns", f"Write {fmt}.")
    return dict(zip(columns, cells))
  try:
    obj = json.loads(text)
  except json.JSONDecodeError as e:
    raise bad(where, f"malformed JSON at column {e.colno}: {e.msg}", f"Write {fmt}.") from None
  if not isinstance(obj, dict):
    raise bad(where, f"a JSON {type(obj).__name__}, not an object", f"Write {fmt}.")
  for key in columns[:required]:
    if key not in obj:
      raise bad(where, f'missing key "{key}"', f"Write {fmt}.")
  return obj


def read(path: str, columns: Sequence[str], parse: Callable[[dict[str, Any], str], T], *, what: str,
         required: int | None = None, skip_bad: bool = False,
         max_bad_fraction: float = records.DEFAULT_MAX_BAD_FRACTION) -> tuple[list[T], ReadSummary]:
  """Parses every non-blank line of `path` with `parse(fields, where)`; returns the parsed values in file order.

  columns: the JSON keys (or TSV columns, in this order); the first `required` (default all) are mandatory.
  what: what the file is, for messages (e.g. "click log (config.data.query_clicks)").
  """
  required = len(columns) if required is None else required
  tsv = path.endswith(".tsv")
  fmt = ("one line per record, " + "<TAB>".join(columns) if tsv else
         "one JSON object per line with keys " + ", ".join(f'"{c}"' for c in columns[:required]) +
         (" (optional: " + ", ".join(f'"{c}"' for c in columns[required:]) + ")" if len(columns) > required else ""))
  if not os.path.isfile(path):
    raise records.MissingFileError(f"{path}: the {what} does not exist. Give the path of a file with {fmt}.",
                                   "missing file")
  out: list[T] = []
  summary = ReadSummary(path)
  for where, line in _lines(path):
    try:
      out.append(parse(_fields(line, where, columns, required, tsv, fmt), where))
      summary.kept += 1
    except records.BadInputError as e:
      if not skip_bad:
        raise
      summary.skipped += 1
      summary.first_skipped = summary.first_skipped or str(e)
  total = summary.kept + summary.skipped
  if not total:
    raise records.BadInputError(f"{path}: the {what} has no records. Write {fmt}.", "empty file")
  if summary.skipped > max_bad_fraction * total:
    raise records.BadInputError(
        f"{path}: {summary.skipped} of {total} lines are bad (more than config.data.max_bad_fraction="
        f"{max_bad_fraction}); first: {summary.first_skipped}", "too many bad lines")
  return out, summary


def _lines(path: str) -> Iterator[tuple[str, bytes]]:
  with open(path, "rb") as f:
    for line_no, line in enumerate(f, start=1):
      if line.strip():
        yield f"{path}:{line_no}", line


def text_field(value: Any, where: str, key: str, fix: str) -> str:
  if not isinstance(value, str) or not value.strip():
    raise bad(where, f'"{key}" is {value!r}, not a non-empty string', fix)
  return value


def number_field(value: Any, where: str, key: str, *, integer: bool) -> float:
  """A positive finite number (an integer if `integer`); TSV cells arrive as strings."""
  try:
    number = float(value) if not isinstance(value, bool) else float("nan")
  except (TypeError, ValueError):
    number = float("nan")
  if not (number > 0 and number != float("inf")) or (integer and number != int(number)):
    kind = "a positive integer" if integer else "a positive finite number"
    raise bad(where, f'"{key}" is {value!r}, not {kind}', f'Give "{key}" as {kind}.')
  return number


def phrase_field(value: Any, where: str, key: str) -> str:
  """A query phrase, normalised like captions (lower case, no punctuation): must keep at least one word."""
  raw = text_field(value, where, key, f'Give "{key}" as text.')
  try:
    return text_lib.normalize_caption(raw)
  except ValueError:
    raise bad(where, f'"{key}" {raw!r} has no words', f'Give "{key}" as text with at least one word.') from None
