#!/usr/bin/env bash
# Install the project and its dev dependencies into the virtual environment VENV (default .venv), as `make setup` does.
#
# uv installs the same packages as pip faster: it downloads, unpacks and byte-compiles in parallel (on the course's
# 2-core machine, a fresh clone with empty caches: 70 s, against 156 s for pip + compileall). It does not read pip's
# configuration, so the constraint files and find-links that pip would use (its config files or $PIP_CONSTRAINT,
# $PIP_FIND_LINKS; on the course machines they cap torch at the release kept on disk) are handed to it.
# Byte-compiling up front matters where PYTHONDONTWRITEBYTECODE is set (as on the course machines): every process
# would otherwise recompile torch's modules at import. If uv cannot be installed or fails, pip does the job.
set -euo pipefail
VENV="${1:-.venv}"
PY="$VENV/bin/python"
test -x "$PY" || "${PYTHON:-python3}" -m venv "$VENV"

pip_setting() {  # every value of pip setting $1 (e.g. constraint), from any config file or the environment
  "$PY" -m pip config list 2>/dev/null | sed -n "s/^[^=]*\.$1='\(.*\)'\$/\1/p" | tr ' ' '\n' | sort -u
}
args=()   # (expanded as ${args[@]+...}: an empty array is "unbound" to bash 3 under set -u)
for c in $(pip_setting constraint); do args+=(--constraint "$c"); done
for l in $(pip_setting find-links); do args+=(--find-links "$l"); done

if "$PY" -m pip install --progress-bar off -q uv &&
   "$VENV/bin/uv" pip install -q --python "$PY" --compile-bytecode ${args[@]+"${args[@]}"} -e ".[dev]"; then
  echo "installed with uv"
else
  echo "uv failed: installing with pip"
  "$PY" -m pip install --progress-bar off -q --no-compile -e ".[dev]"
  # pip byte-compiles one file at a time; compileall does it on every core (its status is ignored as pip ignores the
  # same errors: a few files in torch are for newer Pythons and do not compile)
  "$PY" -m compileall -q -j 0 "$("$PY" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" >/dev/null || true
fi
