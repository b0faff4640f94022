# Sourced by run_pipeline.sh and run_tests.sh: create .venv and install the requirements once
# (again only when the requirement files change). torch==2.13.0 is the CPU build; see requirements.txt.
# QAT_TEST_REQUIREMENTS=1 (run_tests.sh) also installs requirements-test.txt.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON_BIN=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $($PYTHON_BIN --version)"
  "$PYTHON_BIN" -m venv .venv
fi
req_files=(requirements.txt requirements-nodeps.txt)
stamp=.venv/.requirements.sha
if [ "${QAT_TEST_REQUIREMENTS:-0}" = 1 ]; then
  req_files+=(requirements-test.txt)
  stamp=.venv/.requirements-test.sha  # its own stamp: the pipeline's install does not cover the tests'
fi
want=$(cat "${req_files[@]}" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "installing ${req_files[*]} into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  pip_args=(-r requirements.txt)
  if [ "${QAT_TEST_REQUIREMENTS:-0}" = 1 ]; then pip_args+=(-r requirements-test.txt); fi
  .venv/bin/python -m pip install -q "${pip_args[@]}"
  .venv/bin/python -m pip install -q --no-deps -r requirements-nodeps.txt
  echo "$want" > "$stamp"
fi
# Java for pyspark (predict.py --engine spark, tests/test_spark.py): Debian's OpenJDK 17 (CI runs as root).
if ! command -v java >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Java 17 for Spark (openjdk-17-jre-headless)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null
  else
    echo "warning: no java: install Java 17 (e.g. openjdk-17-jre-headless) for the Spark engine and its tests" >&2
  fi
fi
export PATH="$PWD/.venv/bin:$PATH"
