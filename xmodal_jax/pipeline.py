"""Multi-stage runs (S1 today): an ordered list of stages, each an ordinary run of the one trainer or a job (a
function, e.g. feature extraction), in subdirectories of one workdir. The config layout is in
`train/stages.py`.

A library feature users call: `xmodal train --config=configs/s1/shapes.py --workdir=W` trains S1's stages through
it (and `xmodal eval` / `xmodal classify` read its workdir). The paper experiment over seeds (S1's claim) is not
here: the experiments runner (`python -m experiments.run classifier`, outside the package) runs this pipeline once
per seed as an ordinary `xmodal train` and judges the claim.

Layout: WORKDIR/config.json (the pipeline config), WORKDIR/<stage>/... (each stage's own run). A stage that
finished is skipped on the next run; one that was interrupted resumes from its checkpoint; so the same
command resumes the whole pipeline. A stage whose config changed, or that reads (names in its config) a stage
whose config changed, is moved to <stage>.old and re-run.

This module sits beside `main.py`: it resolves stage configs to tasks (`xmodal_jax.systems`) and hands them to
the trainer, which knows neither.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import ml_collections
from absl import logging

from xmodal_jax import errors, fileio
from xmodal_jax import systems
from xmodal_jax.train import stages, trainer
from xmodal_jax.train import workdir as workdir_lib

DONE_FILE = "stage_done.json"


def _dependencies(stage: ml_collections.ConfigDict, earlier: dict[str, str]) -> list[str]:
  """Earlier stages named by any string field (or tuple element) of `stage`, e.g. features.generator."""
  found: list[str] = []

  def visit(value):
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      for v in value.values():
        visit(v)
    elif isinstance(value, (tuple, list)):
      for v in value:
        visit(v)
    elif isinstance(value, str) and value in earlier and value not in found:
      found.append(value)

  visit(stage)
  return found


def _stage_finished(path: str, fingerprint: str) -> bool:
  """True if the stage finished with this config; a stage that finished with another config (its own or an
  earlier stage's changed) is moved aside to <path>.old so that it re-runs from scratch."""
  done = os.path.join(path, DONE_FILE)
  if not fileio.exists(done):
    return False  # new, or interrupted: the trainer resumes from its checkpoint
  with fileio.open(done) as f:
    if json.load(f).get("config") == fingerprint:
      return True
  if jax.process_index() == 0:
    old = path.rstrip("/") + ".old"
    fileio.rmtree(old)
    fileio.rename_dir(path, old)
    logging.warning("Stage %s finished with a different config (its own or an earlier stage's); moved it to %s "
                    "and re-running it.", path, old)
  return False


def run_pipeline(config: ml_collections.ConfigDict, workdir: str, *, stop_at_step: int | None = None,
                 only: tuple[str, ...] = (), allow_config_change: bool = False) -> dict[str, Any]:
  """Run the stages in order (skipping finished ones). Returns {stage: results}, a 'report' string and, when a
  stage stopped early, 'stage' and 'stop_reason'.

  The pipeline workdir is locked for the whole run (and each stage's directory by its trainer). stop_at_step
  applies to every training stage (like a preemption); `only` restricts to those stages.
  """
  with workdir_lib.WorkdirLock(workdir, enabled=jax.process_index() == 0):
    return _run_pipeline(config, workdir, stop_at_step=stop_at_step, only=only,
                         allow_config_change=allow_config_change)


def _run_pipeline(config: ml_collections.ConfigDict, workdir: str, *, stop_at_step: int | None,
                  only: tuple[str, ...], allow_config_change: bool) -> dict[str, Any]:
  for name in only:
    if name not in config.pipeline:
      raise errors.ConfigError(f"Unknown stage {name!r}; the pipeline has {tuple(config.pipeline)}.")
  fileio.makedirs(workdir)
  if jax.process_index() == 0:
    with fileio.open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump(json.loads(config.to_json_best_effort()), f, indent=2, sort_keys=True)
  results: dict[str, Any] = {}
  reports = []
  fingerprints: dict[str, str] = {}
  for name in config.pipeline:
    variants = stages.stage_folds(config, name)
    # A stage's identity: its config plus those of the stages it reads (any field naming an earlier stage), so
    # a change re-runs the stage and what depends on it, and nothing else.
    deps = [fingerprints[d] for d in _dependencies(config.stages[name], fingerprints)]
    prints = {fold: "\n".join([stages.stage_config(config, name, fold).to_json_best_effort(sort_keys=True)] + deps)
              for fold in variants}
    fingerprints[name] = "\n".join(prints[fold] for fold in variants)
    if only and name not in only:
      continue
    for fold in variants:
      label = name if fold < 0 else f"{name} (fold {fold + 1}/{len(variants)})"
      out = _run_stage(config, workdir, name, fold, prints[fold], label, stop_at_step, allow_config_change)
      results[name if fold < 0 else f"{name}_fold{fold}"] = out
      if out.get("stopped_early"):
        return {"stages": results, "stopped_early": True, "stage": label, "stop_reason": out["stop_reason"],
                "report": "\n\n".join(reports)}
      reports.append(f"== {label}{' (finished earlier)' if out.get('skipped') else ''} ==\n{out.get('report', '')}")
  return {"stages": results, "stopped_early": False, "report": "\n\n".join(r for r in reports if r)}


def _run_stage(config: ml_collections.ConfigDict, workdir: str, name: str, fold: int, fingerprint: str, label: str,
               stop_at_step: int | None, allow_config_change: bool) -> dict[str, Any]:
  """Run (or skip, if finished with this fingerprint) one stage variant; its results."""
  cfg, path = stages.stage_config(config, name, fold), stages.stage_dir(workdir, name, fold)
  if _stage_finished(path, fingerprint):
    logging.info("Stage %s: finished earlier (%s); skipping.", label, path)
    with fileio.open(os.path.join(path, DONE_FILE)) as f:
      return dict(json.load(f)["results"], skipped=True)
  logging.info("Stage %s -> %s", label, path)
  start = time.time()
  if "job" in cfg:
    out = systems.get_job(cfg.job)(config, workdir, name)
  else:
    out = trainer.train_and_evaluate(systems.create(cfg, path), stop_at_step=stop_at_step,
                                     allow_config_change=allow_config_change)
    out.pop("state", None)
    if out["stopped_early"]:
      return out
  out["seconds"] = time.time() - start
  if jax.process_index() == 0:
    with fileio.open(os.path.join(path, DONE_FILE), "w") as f:
      json.dump({"config": fingerprint, "results": out}, f, indent=2, sort_keys=True, default=float)
  return out


def evaluate_pipeline(config: ml_collections.ConfigDict, workdir: str, *, only: tuple[str, ...] = (),
                      splits: tuple[str, ...] | None = None, which: str = "latest") -> list[tuple[str, dict]]:
  """[(stage, evaluate_checkpoint results)] of the training stages (all, or `only`)."""
  out = []
  for name in config.pipeline:
    if (only and name not in only) or "job" in config.stages[name]:
      continue
    for fold in stages.stage_folds(config, name):
      task = systems.create(stages.stage_config(config, name, fold), stages.stage_dir(workdir, name, fold))
      out.append((name if fold < 0 else f"{name}_fold{fold}",
                  trainer.evaluate_checkpoint(task, splits=splits, which=which)))
  return out
