#!/usr/bin/env bash
# Install what the tests need (requirements.txt + requirements-test.txt into .venv), then run them.
# Arguments go to pytest. The test files are spread over one worker per core (pytest-xdist; a file's tests stay
# together, so its shared fixtures are built once): QAT_TEST_WORKERS=1 runs them in this process, one after another.
set -euo pipefail
QAT_TEST_REQUIREMENTS=1
source "$(dirname "$0")/scripts/setup_env.sh"
workers=${QAT_TEST_WORKERS:-$(nproc)}
if [ "$workers" -gt 1 ]; then
  python -m pytest -n "$workers" --dist loadfile "$@"
else
  python -m pytest "$@"
fi
