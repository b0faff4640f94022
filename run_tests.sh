#!/usr/bin/env bash
# Install what the tests need (requirements.txt + requirements-test.txt into .venv), then run them.
# Arguments go to pytest.
set -euo pipefail
QAT_TEST_REQUIREMENTS=1
source "$(dirname "$0")/scripts/setup_env.sh"
python -m pytest "$@"
