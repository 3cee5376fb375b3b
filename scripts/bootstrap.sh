#!/usr/bin/env bash
# Create or refresh the project's virtualenv (.venv) so that `dnanet` and the tests run on a fresh
# machine. Re-installs only when pyproject.toml changed since the last install.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
py=${PYTHON:-python3}
if ! "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  echo "dnanet needs Python >= 3.11 (found: $("$py" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
stamp="$venv/.dnanet-installed"
want=$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "==> installing dnanet and its dependencies into $venv (first run takes about a minute)" >&2
  log="$venv/install.log"
  if ! { "$venv/bin/python" -m pip install --disable-pip-version-check --upgrade pip &&
         "$venv/bin/python" -m pip install --disable-pip-version-check -e "$root[dev]"; } >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "dnanet: installing dependencies failed; the full log is $log" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
