#!/usr/bin/env bash
# The test command: set up the environment (once), then run the test suite on CPU with 8 fake devices
# (tests/conftest.py sets XLA_FLAGS). Extra arguments go to pytest, e.g. `bash launch/test.sh -k retrieval`.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/env.sh
# Test-only packages, installed once per venv (guarded by a stamp of this list): the reference implementation for
# the MiniLM parity test (tests/test_minilm.py; the library never imports torch; torch comes from a local CPU wheel
# via pip find-links) and pytest-xdist, which runs the tests on every core (XMODAL_TEST_WORKERS=N sets how many;
# 0 runs them in this process).
_xm_test_deps="torch==2.13.0 transformers==5.23.0 pytest-xdist==3.8.0"
_xm_test_stamp="$VIRTUAL_ENV/.xmodal-testdeps-$(echo "$_xm_test_deps" | sha1sum | cut -c1-12)"
if [ ! -f "$_xm_test_stamp" ]; then
  echo "[test] installing the test-only packages ($_xm_test_deps; one-off, about a minute)..." >&2
  _xm_t0=$(date +%s)
  # shellcheck disable=SC2086
  python -m pip install -q $_xm_test_deps || {
    echo "[test] pip install of the test-only packages ($_xm_test_deps) failed; see the messages above." >&2
    exit 1; }
  rm -f "$VIRTUAL_ENV"/.xmodal-testdeps-* && touch "$_xm_test_stamp"
  echo "[test] test-only packages installed in $(( $(date +%s) - _xm_t0 ))s." >&2
fi
# Tests that read a tiny run trained once per session run in one worker (tests/conftest.py schedules them), so
# each tiny run is still trained once.
# -rs: every skipped test is listed with its reason. --max-worker-restart=1: a worker that crashes is restarted once;
# a second crash stops rescheduling instead of re-running a crashing test until the CI time limit.
exec python -m pytest tests -q -rs -p no:cacheprovider --durations=15 -n "${XMODAL_TEST_WORKERS:-auto}" \
  --max-worker-restart=1 "$@"
