#!/usr/bin/env bash
# The Python environment of the OpenAI-SDK contract suite (contract/): the pinned
# packages of contract/requirements.txt. Prints the path of its python.
exec "$(dirname "$0")/venv.sh" contract
