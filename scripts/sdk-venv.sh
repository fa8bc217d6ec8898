#!/usr/bin/env bash
# The Python environment of the OpenAI-SDK contract suite (contract/): a virtual
# environment with the pinned packages of contract/requirements.txt, made once.
# Prints the path of its python.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=contract/.venv
STAMP=$VENV/.requirements
if [ ! -x "$VENV/bin/python" ] || ! cmp -s contract/requirements.txt "$STAMP"; then
  rm -rf "$VENV"
  python3 -m venv "$VENV" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r contract/requirements.txt >&2
  cp contract/requirements.txt "$STAMP"
fi
echo "$PWD/$VENV/bin/python"
