#!/usr/bin/env bash
# The Python environment of the deployment tooling: a virtual environment with the
# pinned packages of deploy/requirements.txt (Helm's SDK for scripts/helm.py, hadolint),
# made once. Prints the path of its python.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=deploy/.venv
STAMP=$VENV/.requirements
if [ ! -x "$VENV/bin/python" ] || ! cmp -s deploy/requirements.txt "$STAMP"; then
  rm -rf "$VENV"
  python3 -m venv "$VENV" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r deploy/requirements.txt >&2
  cp deploy/requirements.txt "$STAMP"
fi
echo "$PWD/$VENV/bin/python"
