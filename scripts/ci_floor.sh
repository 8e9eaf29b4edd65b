#!/usr/bin/env bash
# Test the provider on its declared floor, Airflow 3.1 (pyproject: apache-airflow>=3.1).
#
# The main venv tracks the newest Airflow; this one pins the oldest release we promise, so an
# import or behaviour that only exists in newer Airflow fails CI instead of a user's deployment.
#
#   scripts/ci_floor.sh [VENV_DIR]      (default: .venv-floor, relative to the repository root)
#
# Env: PYTHON (interpreter for the venv, default python3), FLOOR_AIRFLOW_VERSION (default 3.1.8),
#      FLOOR_CONSTRAINTS (optional pip constraints file), FLOOR_REUSE=1 to keep an existing venv.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

venv="${1:-.venv-floor}"
python_bin="${PYTHON:-python3}"
airflow_version="${FLOOR_AIRFLOW_VERSION:-3.1.8}"
# Optional: Airflow's constraints file for that release (a path or URL), to pin every transitive
# dependency to what Airflow tested. Off by default: CI reaches package registries only, and
# resolving today's dependencies is also what a user installing the floor release gets.
constraint_args=()
if [[ -n "${FLOOR_CONSTRAINTS:-}" ]]; then
  constraint_args=(--constraint "$FLOOR_CONSTRAINTS")
fi

started=$(date +%s)
if [[ "${FLOOR_REUSE:-0}" != "1" || ! -x "$venv/bin/python" ]]; then
  rm -rf "$venv"
  "$python_bin" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  # One resolve: the project with its test extras, Airflow pinned at the floor.
  "$venv/bin/python" -m pip install --quiet -e ".[test]" "apache-airflow==${airflow_version}" \
    ${constraint_args[@]+"${constraint_args[@]}"}
fi
installed=$(date +%s)
echo "ci_floor: Airflow $("$venv/bin/python" -c 'from importlib.metadata import version; print(version("apache-airflow-core"))')" \
  "in $venv, install $((installed - started)) s"

status=0
# The suites marked slow (several minutes each, nothing version-specific) run on the newest Airflow only.
"$venv/bin/python" -m pytest tests/unit tests/integration tests/e2e -m "not slow" -q -p no:cacheprovider || status=$?
echo "ci_floor: tests $(($(date +%s) - installed)) s, total $(($(date +%s) - started)) s, exit $status"
exit "$status"
