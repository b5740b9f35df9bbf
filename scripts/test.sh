#!/usr/bin/env bash
# The README's test command: set up (test extras, test servers), lint, then run the whole test suite.
# Arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"` for the fast tier only; with no arguments
# (as CI runs it) every test runs, slow ones included, and then the image check.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/ruff check datapool_pipeline datapool_pipeline_tests benchmarks
# pytest exits 5 when it collects nothing: treat that as a failure, never as success.
set +e
.venv/bin/python -m pytest "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
  echo "test: pytest collected no tests" >&2
  exit 1
fi
if [ "$code" -eq 0 ] && [ $# -eq 0 ]; then bash scripts/check_image.sh; fi  # whole suite passed: check the image (deploy/)
exit "$code"
