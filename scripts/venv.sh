#!/usr/bin/env bash
# A virtual environment with the pinned packages of DIR/requirements.txt, made once in
# DIR/.venv (and again whenever the requirements change). Prints the path of its python.
#
#   scripts/venv.sh contract|deploy
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:?usage: scripts/venv.sh DIR (a folder with a requirements.txt)}
REQ=$DIR/requirements.txt
VENV=$DIR/.venv
STAMP=$VENV/.requirements
if [ ! -x "$VENV/bin/python" ] || ! cmp -s "$REQ" "$STAMP"; then
  rm -rf "$VENV"
  python3 -m venv "$VENV" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ" >&2
  cp "$REQ" "$STAMP"
fi
echo "$PWD/$VENV/bin/python"
