#!/usr/bin/env bash
# Local infrastructure for auditmesh: a real single-node Apache Cassandra 5.0 (jars from Maven
# Central, cached outside the repository) and Redis (Debian package). Idempotent.
#
#   deploy/local/infra.sh up       fetch what is missing, start what is not running, wait for readiness
#   deploy/local/infra.sh down     stop both (Cassandra drains first)
#   deploy/local/infra.sh status   one line per component, exit 1 if any is down
#   deploy/local/infra.sh stop-cassandra | start-cassandra | stop-redis | start-redis
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CASSANDRA_VERSION="${AUDITMESH_CASSANDRA_VERSION:-5.0.8}"
CACHE_DIR="${AUDITMESH_CACHE_DIR:-$HOME/.cache/auditmesh}"
RUN_DIR="${AUDITMESH_RUN_DIR:-$HOME/.local/state/auditmesh}"
CQL_PORT="${AUDITMESH_CASSANDRA_PORT:-9042}"
STORAGE_PORT="${AUDITMESH_CASSANDRA_STORAGE_PORT:-7000}"
HEAP="${AUDITMESH_CASSANDRA_HEAP:-3G}"
GC_OPTS="${AUDITMESH_CASSANDRA_GC_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=100}"
REDIS_PORT="${AUDITMESH_REDIS_PORT:-6379}"
READY_TIMEOUT="${AUDITMESH_READY_TIMEOUT:-240}"

LIB_DIR="$CACHE_DIR/cassandra-$CASSANDRA_VERSION/lib"
C_DIR="$RUN_DIR/cassandra"
C_PID="$C_DIR/cassandra.pid"
C_LOG="$C_DIR/logs/system.log"
C_OUT="$C_DIR/logs/stdout.log"
R_DIR="$RUN_DIR/redis"
R_PID="$R_DIR/redis.pid"
R_LOG="$R_DIR/redis.log"

log() { printf 'infra: %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

fetch_cassandra() {
  if [ -f "$LIB_DIR/cassandra-all-$CASSANDRA_VERSION.jar" ]; then return; fi
  log "fetching Apache Cassandra $CASSANDRA_VERSION from Maven Central into $LIB_DIR"
  local tmp; tmp="$(mktemp -d)"
  sed "s/5\.0\.8/$CASSANDRA_VERSION/" "$HERE/pom.xml" > "$tmp/pom.xml"
  mvn -q -B -f "$tmp/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$tmp/lib" -DincludeScope=runtime >"$tmp/mvn.log" 2>&1 || {
      cat "$tmp/mvn.log" >&2; log "maven could not resolve cassandra-all"; exit 1; }
  mkdir -p "$(dirname "$LIB_DIR")"
  rm -rf "$LIB_DIR"; mv "$tmp/lib" "$LIB_DIR"; rm -rf "$tmp"
}

start_cassandra() {
  if pid_alive "$C_PID" || port_open "$CQL_PORT"; then log "cassandra already running on :$CQL_PORT"; return; fi
  fetch_cassandra
  mkdir -p "$C_DIR"/{data,commitlog,saved_caches,hints,logs,conf}
  sed -e "s#@DIR@#$C_DIR#g" -e "s#@CQL_PORT@#$CQL_PORT#g" -e "s#@STORAGE_PORT@#$STORAGE_PORT#g" \
    "$HERE/cassandra.yaml.in" > "$C_DIR/conf/cassandra.yaml"
  cp "$HERE/logback.xml" "$C_DIR/conf/logback.xml"
  local jamm; jamm="$(ls "$LIB_DIR"/jamm-*.jar | head -1)"
  local opens=() m
  for m in java.lang.module jdk.internal.loader jdk.internal.ref jdk.internal.reflect jdk.internal.math \
           jdk.internal.module jdk.internal.util.jar sun.nio.ch java.io java.lang.reflect java.lang java.util java.nio; do
    opens+=("--add-opens=java.base/$m=ALL-UNNAMED"); done
  opens+=("--add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED"
          "--add-opens=jdk.compiler/com.sun.tools.javac=ALL-UNNAMED")
  for m in java.base/jdk.internal.misc java.management.rmi/com.sun.jmx.remote.internal.rmi \
           java.management/com.sun.jmx.remote.security java.rmi/sun.rmi.registry java.rmi/sun.rmi.server \
           java.sql/java.sql java.base/java.lang.ref jdk.unsupported/sun.misc \
           jdk.compiler/com.sun.tools.javac.file jdk.attach/sun.tools.attach; do
    opens+=("--add-exports=$m=ALL-UNNAMED"); done
  log "starting cassandra (heap $HEAP), log: $C_LOG"
  # shellcheck disable=SC2086 # GC_OPTS is a list of options
  nohup java -Xms"$HEAP" -Xmx"$HEAP" -Xss256k $GC_OPTS -XX:+ExitOnOutOfMemoryError \
    -Xlog:gc,safepoint:file="$C_DIR/logs/gc.log":time,uptime,level,tags:filecount=4,filesize=20M \
    -XX:ActiveProcessorCount=2 \
    -Djava.net.preferIPv4Stack=true -Djdk.attach.allowAttachSelf=true \
    -Dio.netty.tryReflectionSetAccessible=true "${opens[@]}" \
    -javaagent:"$jamm" \
    -Dcassandra-foreground=yes \
    -Dcassandra.config="file://$C_DIR/conf/cassandra.yaml" \
    -Dlogback.configurationFile="$C_DIR/conf/logback.xml" \
    -Dcassandra.storagedir="$C_DIR" -Dcassandra.logdir="$C_DIR/logs" \
    -Dcassandra.skip_wait_for_gossip_to_settle=0 -Dcassandra.load_ring_state=false \
    -Dcassandra.superuser_setup_delay_ms=0 -Dcassandra.ignore_kernel_bug_1057843_check=true \
    -Dcassandra.jmx.local.port=0 \
    -cp "$C_DIR/conf:$LIB_DIR/*" org.apache.cassandra.service.CassandraDaemon \
    >"$C_OUT" 2>&1 < /dev/null &
  echo $! > "$C_PID"
}

wait_cassandra() {
  local deadline=$((SECONDS + READY_TIMEOUT))
  until port_open "$CQL_PORT"; do
    if [ -f "$C_PID" ] && ! pid_alive "$C_PID"; then
      log "cassandra exited during startup; see $C_LOG and $C_OUT"; tail -n 20 "$C_OUT" >&2 || true; exit 1; fi
    if [ $SECONDS -ge $deadline ]; then
      log "cassandra not ready on :$CQL_PORT after ${READY_TIMEOUT}s; see $C_LOG"; exit 1; fi
    sleep 1
  done
  log "cassandra ready on :$CQL_PORT"
}

stop_cassandra() {
  if pid_alive "$C_PID"; then
    local pid; pid="$(cat "$C_PID")"
    kill "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -9 "$pid" 2>/dev/null || true
    log "cassandra stopped"
  fi
  rm -f "$C_PID"
}

redis_bin() { command -v redis-server || true; }

install_redis() {
  if [ -n "$(redis_bin)" ]; then return; fi
  log "installing redis-server from Debian packages"
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
}

start_redis() {
  if port_open "$REDIS_PORT"; then log "redis already running on :$REDIS_PORT"; return; fi
  install_redis
  mkdir -p "$R_DIR"
  "$(redis_bin)" --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize yes --pidfile "$R_PID" \
    --logfile "$R_LOG" --dir "$R_DIR" --save "" --appendonly no --maxmemory 512mb \
    --maxmemory-policy allkeys-lru --databases 64
  local deadline=$((SECONDS + 30))
  until port_open "$REDIS_PORT"; do
    if [ $SECONDS -ge $deadline ]; then log "redis not ready on :$REDIS_PORT; see $R_LOG"; exit 1; fi
    sleep 0.2
  done
  log "redis ready on :$REDIS_PORT"
}

stop_redis() {
  if pid_alive "$R_PID"; then
    local pid; pid="$(cat "$R_PID")"; kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    log "redis stopped"
  fi
  rm -f "$R_PID"
}

status() {
  local rc=0
  if port_open "$CQL_PORT"; then echo "cassandra  up    127.0.0.1:$CQL_PORT"; else echo "cassandra  down  (log: $C_LOG)"; rc=1; fi
  if port_open "$REDIS_PORT"; then echo "redis      up    127.0.0.1:$REDIS_PORT"; else echo "redis      down  (log: $R_LOG)"; rc=1; fi
  return $rc
}

case "${1:-}" in
  up) start_redis; start_cassandra; wait_cassandra ;;
  down) stop_cassandra; stop_redis ;;
  status) status ;;
  start-cassandra) start_cassandra; wait_cassandra ;;
  stop-cassandra) stop_cassandra ;;
  start-redis) start_redis ;;
  stop-redis) stop_redis ;;
  fetch) fetch_cassandra ;;
  *) echo "usage: $0 up|down|status|start-cassandra|stop-cassandra|start-redis|stop-redis|fetch" >&2; exit 2 ;;
esac
