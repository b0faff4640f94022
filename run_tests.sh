#!/usr/bin/env bash
# Install what the tests need (into .venv), then run them. Arguments go to pytest.
set -euo pipefail
source "$(dirname "$0")/scripts/setup_env.sh"
python -m pytest "$@"
