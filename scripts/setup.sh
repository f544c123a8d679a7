#!/usr/bin/env bash
# Installs what building and testing jobforge needs, where it is missing: the system packages
# (compiler, CMake, Ninja, SQLite and libpq headers, a PostgreSQL server for the tests,
# nlohmann/json, GoogleTest, Chromium) through apt-get, then a virtual environment in .venv with
# jobforge installed in editable mode and its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

# chromium: the dashboard's browser test drives Debian's headless Chromium with Playwright (never
# Playwright's own browser download).
packages=(g++ cmake ninja-build pkg-config libsqlite3-dev libpq-dev postgresql nlohmann-json3-dev
          libgtest-dev libgmock-dev libssl-dev libxxhash-dev chromium)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing system packages: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# The build requirements are installed into the venv so rebuilds need no isolated environment.
.venv/bin/python -m pip install -q "scikit-build-core>=0.9" "pybind11>=2.12" ninja cmake >/dev/null
.venv/bin/python -m pip install -q --no-build-isolation -e ".[test]"
