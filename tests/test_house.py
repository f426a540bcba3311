"""The package's layout (issue 29): one folder per system under xmodal_jax/systems/, shared layers that hold only
what two or more systems use, and imports that go one way: shared layers never import a system, train/ never imports
a system or task_bases/, no two shared layers import each other (data <-> models, ...) nor form a longer cycle, and
the package root's helpers import no layer.

Every check parses every module with `ast` (imports inside functions included); nothing is imported. A failure names
the file and line of each import that runs back up."""
from __future__ import annotations

import ast
import collections
import itertools
import pathlib

from tests.helpers import REPO

PACKAGE = pathlib.Path(REPO, "xmodal_jax")
SHARED_LAYERS = ("models", "objectives", "data", "evaluation", "serving", "train", "decoding", "task_bases")

# Modules that a single system's task modules import, yet stay in a shared layer; each with its reason.
SHARED_BY_DESIGN = {
    "xmodal_jax.serving.caption_search": "serving/search_service.py and main.py (`xmodal search`) use it",
    "xmodal_jax.train.stages": "main.py and pipeline.py run any pipeline config (multi-stage runs) with it",
    "xmodal_jax.train.workdir": "the trainer, serving/export.py and pipeline.py use it",
    "xmodal_jax.data.image_files": "serving/image_folder.py (export --images), main.py and S5's captioner read "
                                   "user image files with it",
}


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(REPO).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: pathlib.Path, modules: dict[str, pathlib.Path]) -> list[tuple[str, int]]:
  """(module of this package, line) for every import in the file, at any depth."""
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  out = []
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      out.extend((alias.name, node.lineno) for alias in node.names if alias.name in modules)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        head = package.split(".")[:len(package.split(".")) - (node.level - 1)]
        base = ".".join(head + ([base] if base else []))
      for alias in node.names:
        if f"{base}.{alias.name}" in modules:
          out.append((f"{base}.{alias.name}", node.lineno))
        elif base in modules:
          out.append((base, node.lineno))
  return out


def _graph():
  modules = _modules()
  return modules, {name: _imports(name, path, modules) for name, path in modules.items()}


def _shared_evaluators() -> list[str]:
  """The modules of evaluation/evaluator.py's _BUILTIN table: loaded by type name, so no import names them."""
  tree = ast.parse((PACKAGE / "evaluation" / "evaluator.py").read_text())
  for node in tree.body:
    if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_BUILTIN" for t in node.targets):
      return [ast.literal_eval(v) for v in node.value.values]
  raise AssertionError("evaluation/evaluator.py has no _BUILTIN table")


def _systems() -> list[str]:
  return sorted(p.name for p in (PACKAGE / "systems").iterdir() if (p / "__init__.py").exists())


def test_shared_layers_never_import_a_system():
  modules, graph = _graph()
  offenders = []
  for name, path in modules.items():
    layer = name.split(".")[1] if "." in name else ""
    if layer not in SHARED_LAYERS:
      continue
    for imported, line in graph[name]:
      if imported == "xmodal_jax.systems" or imported.startswith("xmodal_jax.systems."):
        offenders.append(f"{path.relative_to(REPO)}:{line} ({layer}/) imports {imported}")
  assert not offenders, "shared layers must not import xmodal_jax.systems:\n" + "\n".join(offenders)


# The package root's cross-cutting helpers: every layer may use them, they use no layer.
ROOT_HELPERS = ("errors", "fileio", "disk_space", "output_dirs", "host_memory")


def _layer(module: str) -> str:
  """xmodal_jax.data.taxonomy -> "data"; xmodal_jax.errors -> "errors"."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else ""


def _path_back(edges: dict[tuple[str, str], list[str]], start: str, goal: str) -> list[str] | None:
  """A path of layers from `start` to `goal` along `edges` (breadth first), or None."""
  paths, seen = [[start]], {start}
  while paths:
    path = paths.pop(0)
    if path[-1] == goal:
      return path
    for a, b in sorted(edges):
      if a == path[-1] and b not in seen:
        seen.add(b)
        paths.append(path + [b])
  return None


def _cycle_offenders(edges: dict[tuple[str, str], list[str]]) -> list[str]:
  """One line per layer edge that lies on a cycle: its first import (file:line) and the way back."""
  out = []
  for (a, b), where in sorted(edges.items()):
    back = _path_back(edges, b, a)
    if back:
      steps = "; ".join(edges[(x, y)][0] for x, y in itertools.pairwise(back))
      out.append(f"{where[0]} ({a}/ -> {b}/), while {' -> '.join(back)}: {steps}")
  return out


def test_cycle_finder_names_both_sides_of_a_tie():
  edges = {("data", "models"): ["xmodal_jax/data/tokenizers.py:142 imports xmodal_jax.models.minilm"],
           ("models", "data"): ["xmodal_jax/models/roi_align.py:17 imports xmodal_jax.data.regions"],
           ("evaluation", "data"): ["xmodal_jax/evaluation/captioning.py:97 imports x"]}
  found = _cycle_offenders(edges)
  assert len(found) == 2 and "data/tokenizers.py:142" in found[0] and "models/roi_align.py:17" in found[0]
  longer = _cycle_offenders({("a", "b"): ["x"], ("b", "c"): ["y"], ("c", "a"): ["z"]})
  assert longer[0] == "x (a/ -> b/), while b -> c -> a: y; z"


def test_imports_run_one_way_between_layers():
  modules, graph = _graph()
  offenders, edges = [], collections.defaultdict(list)
  for name, path in modules.items():
    source = _layer(name)
    for imported, line in graph[name]:
      target = _layer(imported)
      where = f"{path.relative_to(REPO)}:{line} imports {imported}"
      if source == "train" and target in ("systems", "task_bases"):
        offenders.append(f"{where}: train/ never imports a system or task_bases/")
      if source in ROOT_HELPERS and target not in ROOT_HELPERS:
        offenders.append(f"{where}: the package root's helpers import no layer")
      if source in SHARED_LAYERS and target in SHARED_LAYERS and source != target:
        edges[(source, target)].append(where)
  offenders += [f"import cycle between shared layers: {line}" for line in _cycle_offenders(edges)]
  assert not offenders, "imports that run back up:\n" + "\n".join(offenders)


def test_every_system_keeps_its_own_modules_in_its_folder():
  modules, graph = _graph()

  def closure(starts):
    seen, stack = set(), list(starts)
    while stack:
      name = stack.pop()
      if name not in seen:
        seen.add(name)
        stack.extend(m for m, _ in graph[name])
    return seen

  systems = _systems()
  assert set(systems) == {"captioning", "classifier", "clip", "region_word", "single_stream", "vse"}, systems
  used = {s: closure(m for m in modules if m.startswith(f"xmodal_jax.systems.{s}.")
                     or m == f"xmodal_jax.systems.{s}") for s in systems}
  # What the shared evaluators use counts as used by a shared layer, whichever systems configure them.
  used["(shared evaluators)"] = closure(_shared_evaluators())
  users = collections.defaultdict(set)
  for system, names in used.items():
    for name in names:
      users[name].add(system)
  misplaced = []
  for name, who in sorted(users.items()):
    if len(who) != 1 or name in SHARED_BY_DESIGN:
      continue
    (system,) = who
    if system not in systems:
      continue
    if not (name == f"xmodal_jax.systems.{system}" or name.startswith(f"xmodal_jax.systems.{system}.")):
      misplaced.append(f"{modules[name].relative_to(REPO)} is used by systems/{system}/ only: move it there")
  assert not misplaced, "\n".join(misplaced)
  for name in SHARED_BY_DESIGN:
    assert name in modules, f"SHARED_BY_DESIGN lists {name}, which no longer exists"
