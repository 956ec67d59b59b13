#!/usr/bin/env bash
# A local Jaeger (all in one, in memory) for auditmesh's traces: built once from the Go module
# proxy (github.com/jaegertracing/jaeger/cmd/jaeger, pinned; about 4 minutes on two cores) into
# the cache directory, then run on loopback. Idempotent.
#
#   deploy/local/jaeger.sh install   build the binary if it is missing
#   deploy/local/jaeger.sh up        install, start if not running, wait until the query API answers
#   deploy/local/jaeger.sh down      stop it (its traces are in memory: they go with it)
#   deploy/local/jaeger.sh status    exit 1 if it is not answering
#
# Ports: OTLP/gRPC 4317, OTLP/HTTP 4318, query API 16686 (/api/traces, /api/services). Built from
# the module, Jaeger serves a placeholder page instead of its web UI: `auditmesh trace` prints a
# trace in the terminal; docs/tracing.md says how to point the released Jaeger UI at the traces.
set -euo pipefail

JAEGER_VERSION="v1.76.0"
CACHE_DIR="${AUDITMESH_CACHE_DIR:-$HOME/.cache/auditmesh}"
RUN_DIR="${AUDITMESH_RUN_DIR:-$HOME/.local/state/auditmesh}"
BIN_DIR="$CACHE_DIR/jaeger-$JAEGER_VERSION"
BIN="$BIN_DIR/jaeger"
J_DIR="$RUN_DIR/jaeger"
PID="$J_DIR/jaeger.pid"
LOG="$J_DIR/jaeger.log"
QUERY_URL="http://127.0.0.1:16686"
READY_TIMEOUT="${AUDITMESH_READY_TIMEOUT:-120}"

log() { printf 'jaeger: %s\n' "$*" >&2; }

answering() { curl -fsS -o /dev/null --max-time 2 "$QUERY_URL/api/services"; }

install() {
  if [ -x "$BIN" ]; then return; fi
  log "building github.com/jaegertracing/jaeger/cmd/jaeger@$JAEGER_VERSION into $BIN_DIR (a few minutes, once)"
  mkdir -p "$BIN_DIR"
  # Jaeger's go.mod has replace directives, which `go install pkg@version` refuses: build it as
  # a tool of a throwaway module instead.
  local tmp; tmp="$(mktemp -d)"
  (cd "$tmp" && go mod init auditmesh.local/jaeger-build >/dev/null 2>&1 \
    && go get -tool "github.com/jaegertracing/jaeger/cmd/jaeger@$JAEGER_VERSION" \
    && go build -o "$BIN" github.com/jaegertracing/jaeger/cmd/jaeger) || { rm -rf "$tmp"; log "build failed"; exit 1; }
  rm -rf "$tmp"
}

up() {
  if answering; then log "already running: $QUERY_URL"; return; fi
  install
  mkdir -p "$J_DIR"
  log "starting, log: $LOG"
  nohup "$BIN" >"$LOG" 2>&1 &
  echo $! > "$PID"
  local waited=0
  until answering; do
    if ! kill -0 "$(cat "$PID")" 2>/dev/null; then log "exited; see $LOG"; tail -20 "$LOG" >&2; exit 1; fi
    if [ "$waited" -ge "$READY_TIMEOUT" ]; then log "not answering after ${READY_TIMEOUT}s; see $LOG"; exit 1; fi
    sleep 1; waited=$((waited + 1))
  done
  log "ready: OTLP on 127.0.0.1:4317, query API on $QUERY_URL"
}

down() {
  if [ -f "$PID" ] && kill -0 "$(cat "$PID")" 2>/dev/null; then
    kill "$(cat "$PID")"
    for _ in $(seq 1 30); do kill -0 "$(cat "$PID")" 2>/dev/null || break; sleep 0.5; done
  fi
  rm -f "$PID"
}

case "${1:-}" in
  install) install ;;
  up) up ;;
  down) down ;;
  status) if answering; then echo "jaeger: up ($QUERY_URL)"; else echo "jaeger: down"; exit 1; fi ;;
  *) echo "usage: $0 install|up|down|status" >&2; exit 2 ;;
esac
