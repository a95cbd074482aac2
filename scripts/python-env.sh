#!/usr/bin/env bash
# Creates target/pyenv with the third-party Python clients the interop test drives the node
# with, and prints the interpreter path to export as PRESENCE_PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
env=target/pyenv
if [ ! -x "$env/bin/python" ]; then
  python3 -m venv "$env" >&2 || {
    # Debian's python3 may lack ensurepip: install the venv module, then retry.
    if command -v apt-get >/dev/null; then
      (apt-get update -qq && apt-get install -y -qq python3-venv) >&2
    fi
    python3 -m venv "$env" >&2
  }
fi
"$env/bin/python" -m pip install --quiet --disable-pip-version-check \
  'websockets>=13' 'aioquic>=1.2' >&2
echo "$PWD/$env/bin/python"
