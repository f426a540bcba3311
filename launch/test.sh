#!/usr/bin/env bash
# The test command: set up the environment (once), then run the test suite on CPU with 8 fake devices
# (tests/conftest.py sets XLA_FLAGS). Extra arguments go to pytest, e.g. `bash launch/test.sh -k retrieval`.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/env.sh
exec python -m pytest tests -q -p no:cacheprovider "$@"
