#!/usr/bin/env bash
# Create or refresh the project's virtualenv (.venv) so that `dnanet` and the tests run on a fresh
# machine. Re-installs only when pyproject.toml changed since the last install.
# Arguments name optional extras to install as well (`scripts/bootstrap.sh llm`), each once per
# pyproject.toml; the default install has none.
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
for extra in "$@"; do
  case "$extra" in
    llm) ;;
    *) echo "bootstrap: unknown extra '$extra' (known: llm)" >&2; exit 2 ;;
  esac
  stamp="$venv/.dnanet-installed-$extra"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "==> installing the '$extra' extra into $venv (llama-cpp-python compiles from source:" \
         "several minutes, once)" >&2
    log="$venv/install-$extra.log"
    started=$(date +%s)
    # llama.cpp's multimodal library is not used: not building it saves a third of the time.
    if ! CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" \
         CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}" \
         nice -n "${DNANET_BUILD_NICE:-10}" "$venv/bin/python" -m pip install \
           --disable-pip-version-check -e "$root[dev,$extra]" >"$log" 2>&1; then
      tail -n 30 "$log" >&2
      echo "dnanet: installing the '$extra' extra failed; the full log is $log" >&2
      exit 1
    fi
    echo "==> the '$extra' extra installed in $(( $(date +%s) - started )) s" >&2
    echo "$want" > "$stamp"
  fi
done
