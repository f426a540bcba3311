r"""The `xmodal` command line.

  xmodal train --config=configs/retrieval/vsepp_shapes.py --workdir=DIR [--config.FIELD=VALUE ...]
  xmodal eval  --config=configs/retrieval/vsepp_shapes.py --workdir=DIR [--split=test] [--checkpoint=best]
  xmodal prepare --source=folder:PATH|karpathy:JSON:IMAGE_ROOT --out=DIR [--image_size=256] [--skip_bad]
  xmodal classify --workdir=DIR IMAGE [IMAGE ...]      (a finished S1 pipeline run, e.g. configs/s1/shapes.py)

Multi-stage configs (S1: `pipeline` + `stages`) run their stages in order in WORKDIR/<stage>; finished stages
are skipped, so the same command resumes; `--stages=a,b` runs only those.

`train` in a workdir that has checkpoints resumes from the latest one (parameters, optimiser, step, RNG
and data position). Unknown config fields are an error. `--multihost` calls jax.distributed.initialize()
(Cloud TPU pod slices / multi-node GPU).
"""
from __future__ import annotations

import json
import logging as std_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

COMMANDS = ("train", "eval", "prepare", "classify")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:variant]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard logs and results.")
flags.DEFINE_list("split", None, "eval: only the evaluators of these splits (default: all of config.evals).")
flags.DEFINE_enum("checkpoint", "latest", ["latest", "best"], "eval: which checkpoint to restore.")
flags.DEFINE_integer("stop_at_step", None, "train: stop (after checkpointing) at this step, as a preemption would.")
flags.DEFINE_bool("multihost", False, "Initialise jax.distributed (one process per host).")
flags.DEFINE_string("source", None, "prepare: folder:PATH or karpathy:JSON_FILE:IMAGE_ROOT.")
flags.DEFINE_string("out", None, "prepare: output directory (default: the cache dir configs use).")
flags.DEFINE_integer("image_size", 256, "prepare: shorter side of the stored images (>= the training crop).")
flags.DEFINE_bool("skip_bad", False, "prepare: skip (and count) bad records instead of stopping at the first.")
flags.DEFINE_list("stages", None, "train/eval of a pipeline config: only these stages.")
flags.DEFINE_bool("json", False, "classify: print one JSON object per image instead of text.")
flags.DEFINE_bool("verbose_checkpointing", False, "Show orbax's INFO logs (hidden by default: very chatty).")


class _QuietLibraries(std_logging.Filter):
  """Drops INFO-and-below records from orbax (one checkpoint logs dozens of lines)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def main(argv: list[str]) -> None:
  if len(argv) < 2 or argv[1] not in COMMANDS or (len(argv) > 2 and argv[1] != "classify"):
    raise app.UsageError(f"usage: xmodal {{{'|'.join(COMMANDS)}}} --config=configs/X.py --workdir=DIR "
                         f"(got {' '.join(argv[1:]) or 'no command'})")
  if not FLAGS.verbose_checkpointing:
    logging.get_absl_handler().addFilter(_QuietLibraries())
  if argv[1] == "classify":
    _classify(argv[2:])
    return
  if argv[1] == "prepare":
    if not FLAGS.source:
      raise app.UsageError("prepare needs --source=folder:PATH or --source=karpathy:JSON_FILE:IMAGE_ROOT.")
    from xmodal_jax.data import prepared
    out = FLAGS.out or prepared.default_prepared_dir(FLAGS.source, FLAGS.image_size)
    summary = prepared.prepare(FLAGS.source, out, image_size=FLAGS.image_size, skip_bad=FLAGS.skip_bad)
    print(f"Prepared {FLAGS.source} -> {out}: {summary['examples']} images in {summary['seconds']}s"
          + (f"; skipped {summary['skipped']}" if summary["skipped"] else ""))
    return
  if FLAGS.config is None or FLAGS.workdir is None:
    raise app.UsageError("--config and --workdir are required.")
  import jax  # after absl parsed flags, so XLA/JAX flags from the environment apply
  if FLAGS.multihost:
    jax.distributed.initialize()
  logging.info("JAX %s: %d process(es), %d device(s): %s", jax.__version__, jax.process_count(),
               jax.device_count(), jax.devices()[0].device_kind)
  from xmodal_jax.train import stages
  if stages.is_pipeline(FLAGS.config):
    _run_pipeline(argv[1], FLAGS.config)
    return
  from xmodal_jax import tasks
  from xmodal_jax.train import trainer
  task = tasks.create(FLAGS.config, FLAGS.workdir)
  if argv[1] == "train":
    results = trainer.train_and_evaluate(task, stop_at_step=FLAGS.stop_at_step)
    if results["stopped_early"]:
      print(f"Stopped at step {results['step']}; rerun the same command to resume.")
    else:
      print(results["report"])
      print(f"Done: {results['step']} steps in {results['train_seconds']:.0f}s (+{results['eval_seconds']:.0f}s "
            f"eval). Results: {FLAGS.workdir}/results.json; TensorBoard: tensorboard --logdir {FLAGS.workdir}")
  else:
    results = trainer.evaluate_checkpoint(task, splits=tuple(FLAGS.split or ()) or None, which=FLAGS.checkpoint)
    print(results["report"])
    print("metrics: " + json.dumps({"step": results["step"], **results["metrics"]}, sort_keys=True))


def _run_pipeline(command: str, config) -> None:
  from xmodal_jax import pipeline
  only = tuple(FLAGS.stages or ())
  if command == "train":
    results = pipeline.run_pipeline(config, FLAGS.workdir, stop_at_step=FLAGS.stop_at_step, only=only)
    print(results["report"])
    if results["stopped_early"]:
      print(f"Stopped in stage {results['stage']}; rerun the same command to resume.")
    else:
      print(f"Done: stages in {FLAGS.workdir}/<stage>; TensorBoard: tensorboard --logdir {FLAGS.workdir}")
    return
  for name, results in pipeline.evaluate_pipeline(config, FLAGS.workdir, only=only,
                                                  splits=tuple(FLAGS.split or ()) or None, which=FLAGS.checkpoint):
    print(f"== {name} ==\n{results['report']}")
    print("metrics: " + json.dumps({"stage": name, "step": results["step"], **results["metrics"]}, sort_keys=True))


def _classify(paths: list[str]) -> None:
  if not FLAGS.workdir or not paths:
    raise app.UsageError("usage: xmodal classify --workdir=DIR IMAGE [IMAGE ...] (DIR: a finished S1 pipeline run)")
  from xmodal_jax.tasks.s1.classifier import MultimodalClassifier
  model = MultimodalClassifier.from_workdir(FLAGS.workdir, mesh_shape=(-1, 1))
  for path, result in zip(paths, model.classify(model.load_image_files(paths))):
    if FLAGS.json:
      print(json.dumps({"image": path, **result}))
      continue
    phrases = ", ".join(f"{p!r} ({s:.2f})" for p, s in result["phrases"])
    print(f"{path}: {result['label']} (p={result['probability']:.3f}); phrases: {phrases}")


def run() -> None:
  """Console entry point."""
  app.run(main, argv=sys.argv)


if __name__ == "__main__":
  run()
