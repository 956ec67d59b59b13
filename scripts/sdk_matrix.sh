#!/usr/bin/env bash
# The SDK on every supported Python. For each version: a fresh venv holding the SDK alone
# (`pip install` of this repository, no server extra), a check that nothing of the server side
# came with it, then the SDK's tests (tests/sdk: log, flush, Search; fork; exit; logging)
# against a real mesh that the project's own venv runs (scripts/sdk_mesh.py).
#
#   scripts/sdk_matrix.sh                       (make sdk-matrix) Python 3.10 3.11 3.12 3.13
#   SDK_PYTHONS="3.12 3.13" scripts/sdk_matrix.sh
#
# SERVER_PY    the project's Python, which runs the mesh (default .venv/bin/python)
# SDK_PINS     constraints (default): grpcio and protobuf at constraints.txt's versions, so CI
#              is reproducible; none: the newest in the SDK's ranges, as a backend gets them
# SDK_VENV_DIR where the venvs go (default .venv-sdk/<version>, recreated every run)
# AUDITMESH_TEST_SLOT  the test slot whose ports, Redis database and keyspace the mesh uses
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SERVER_PY=${SERVER_PY:-$ROOT/.venv/bin/python}
PYTHONS=${SDK_PYTHONS:-3.10 3.11 3.12 3.13}
VENVS=${SDK_VENV_DIR:-$ROOT/.venv-sdk}
SERVER_SIDE='^(cassandra-driver|redis|hiredis|uvloop|opentelemetry-[a-z-]+|grpcio-(health-checking|reflection|status)|pysigma|pyjwt|cryptography|prometheus-client)=='

pins=(-c "$ROOT/constraints.txt")
case "${SDK_PINS:-constraints}" in
  constraints) ;;
  none) pins=() ;;
  *) echo "SDK_PINS must be constraints or none" >&2; exit 2 ;;
esac

find_python() {  # the newest pyenv CPython of a minor version, else pythonX.Y on PATH
  local root found
  root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
  found=$(ls -d "$root/versions/$1".*/bin/python 2>/dev/null | sort -V | tail -n 1)
  [ -n "$found" ] || found=$(command -v "python$1" || true)
  [ -n "$found" ] && echo "$found"
}

RUN_DIR=$(mktemp -d)
# pip builds the SDK from a copy of the working tree: setuptools' build/ directory keeps files
# that the tree no longer has, so an in-tree build could install what is not there.
SRC=$RUN_DIR/src
mkdir "$SRC"
tar -C "$ROOT" --exclude=./.git --exclude='./.venv*' --exclude=./build --exclude='*.egg-info' \
  --exclude=__pycache__ --exclude=.mypy_cache --exclude=.ruff_cache --exclude=.pytest_cache -cf - . | tar -C "$SRC" -xf -
stop_mesh() { (cd "$ROOT" && "$SERVER_PY" scripts/sdk_mesh.py down "$RUN_DIR") || true; rm -rf "$SRC"; }
trap stop_mesh EXIT
"$SERVER_PY" scripts/sdk_mesh.py up "$RUN_DIR"
set -a
. "$RUN_DIR/mesh.env"
set +a
export AUDITMESH_SDK_INSTALLED=1
echo "mesh: ingest $AUDITMESH_SDK_INGEST, query $AUDITMESH_SDK_QUERY (logs in $RUN_DIR/logs)"

failed=()
for version in $PYTHONS; do
  started=$SECONDS
  python=$(find_python "$version") || { echo "FAIL $version: no Python $version found"; failed+=("$version"); continue; }
  venv=$VENVS/$version
  echo "== SDK alone on $("$python" -V 2>&1) in $venv"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q "${pins[@]}" "$SRC"
  "$venv/bin/python" -m pip install -q -c "$ROOT/constraints.txt" pytest pytest-timeout
  installed=$("$venv/bin/python" -m pip list --format=freeze)
  echo "$installed" | grep -i -E '^(grpcio|protobuf)==' | tr '\n' ' '; echo
  if echo "$installed" | grep -q -i -E "$SERVER_SIDE"; then
    echo "FAIL $version: the SDK install brought server-side packages:" $(echo "$installed" | grep -i -E "$SERVER_SIDE")
    failed+=("$version")
    continue
  fi
  # The installed packages carry their type information (PEP 561).
  if ! (cd / && "$venv/bin/python" -c "import auditmesh, auditpb, pathlib, sys
missing = [p.__name__ for p in (auditmesh, auditpb) if not (pathlib.Path(p.__file__).parent / 'py.typed').is_file()]
sys.exit(f'no py.typed in {missing}' if missing else 0)"); then
    echo "FAIL $version: the installed SDK is not typed"
    failed+=("$version")
    continue
  fi
  if "$venv/bin/pytest" -p no:cacheprovider --confcutdir=tests/sdk tests/sdk; then
    echo "ok $version in $((SECONDS - started)) s"
  else
    echo "FAIL $version: tests/sdk failed"
    failed+=("$version")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "SDK matrix failed on: ${failed[*]}"
  exit 1
fi
echo "SDK matrix passed on: $PYTHONS"
