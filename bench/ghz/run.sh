#!/usr/bin/env bash
# Install a pinned ghz from the Go module proxy (once, cached) and run one load profile.
#   bench/ghz/run.sh install
#   bench/ghz/run.sh submit|stream TARGET DATA_JSON OUT_JSON [DURATION] [CONCURRENCY] [CONNECTIONS]
set -euo pipefail
GHZ_VERSION="v0.121.0"
BIN_DIR="${AUDITMESH_CACHE_DIR:-$HOME/.cache/auditmesh}/ghz-$GHZ_VERSION"
GHZ="$BIN_DIR/ghz"

install() {
  if [ -x "$GHZ" ]; then return; fi
  echo "ghz: installing github.com/bojand/ghz/cmd/ghz@$GHZ_VERSION into $BIN_DIR" >&2
  mkdir -p "$BIN_DIR"
  GOBIN="$BIN_DIR" GOFLAGS=-mod=mod go install "github.com/bojand/ghz/cmd/ghz@$GHZ_VERSION"
}

case "${1:-}" in
  install) install ;;
  submit|stream)
    install
    target="$2"; data="$3"; out="$4"; duration="${5:-20s}"; concurrency="${6:-16}"; connections="${7:-4}"
    method="Submit"; [ "$1" = stream ] && method="Stream"
    "$GHZ" --insecure --call "auditpb.v1.IngestService.$method" --data-file "$data" \
      --duration "$duration" --concurrency "$concurrency" --connections "$connections" \
      --max-recv-message-size 64MB --max-send-message-size 64MB --timeout 60s \
      --format json --output "$out" "$target" ;;
  *) echo "usage: $0 install | submit|stream TARGET DATA OUT [DURATION] [CONCURRENCY] [CONNECTIONS]" >&2; exit 2 ;;
esac
