#!/usr/bin/env bash
# Create (if needed) a Python >= 3.12 virtual environment, install a requirements file into it and
# the lloglin package itself (editable, without dependencies: the requirements pin them), so that
# scripts, notebooks and tests import lloglin from anywhere.
# usage: make_venv.sh VENV_DIR REQUIREMENTS_FILE
set -euo pipefail
venv=$1
reqs=$2
repo=$(cd "$(dirname "$0")/.." && pwd)

find_python() {
  for cand in python3.12 python3.13 python3; do  # 3.12 first: the GPU machines run 3.12
    if command -v "$cand" >/dev/null 2>&1 &&
       "$cand" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; then
      command -v "$cand"; return 0
    fi
  done
  if command -v pyenv >/dev/null 2>&1; then
    for v in $(pyenv versions --bare | grep -E '^3\.(1[2-9])' | sort -V); do
      p="$(pyenv root)/versions/$v/bin/python3"
      [ -x "$p" ] && { echo "$p"; return 0; }
    done
  fi
  return 1
}

if [ ! -x "$venv/bin/python" ]; then
  py=$(find_python) || { echo "error: lloglin needs Python >= 3.12 (jax 0.11); none found on PATH or in pyenv" >&2; exit 1; }
  echo "creating $venv with $py ($("$py" --version))"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
fi
echo "installing $reqs into $venv"
"$venv/bin/python" -m pip install -q -r "$reqs"
if ! "$venv/bin/python" -c 'import importlib.metadata as m; m.distribution("lloglin")' 2>/dev/null; then
  echo "installing lloglin (editable) into $venv"
  "$venv/bin/python" -m pip install -q --no-deps -e "$repo"
fi
