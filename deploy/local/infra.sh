#!/usr/bin/env bash
# Local infrastructure for auditmesh: real Apache Cassandra 5.0 (jars from Maven Central, cached
# outside the repository), one node or a local cluster of N nodes, and Redis (Debian package).
# Idempotent.
#
#   deploy/local/infra.sh up       fetch what is missing, start what is not running, wait for readiness
#   deploy/local/infra.sh down     stop Cassandra (every node; it drains first) and Redis
#   deploy/local/infra.sh status   one line per component (per node), exit 1 if any is down
#   deploy/local/infra.sh stop-cassandra | start-cassandra | stop-redis | start-redis
#   deploy/local/infra.sh node K start|stop|kill|status    one node of a cluster (K from 1)
#
# Cluster mode is one variable: AUDITMESH_CASSANDRA_NODES=3 runs three nodes, the way ccm runs
# local clusters: node K listens on the K-th loopback address from AUDITMESH_CASSANDRA_ADDRESS
# (127.0.0.1, 127.0.0.2, ...; the same CQL and storage ports on each), with its own state
# directory, JMX port (AUDITMESH_CASSANDRA_JMX_PORT + 100 * (K - 1)), evenly spaced token, every
# node a seed, hints on, and a small heap (AUDITMESH_CASSANDRA_HEAP, 512M in a cluster). Unset,
# everything is as before: one node on 127.0.0.1 with a 3G heap.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CASSANDRA_VERSION="${AUDITMESH_CASSANDRA_VERSION:-5.0.8}"
CACHE_DIR="${AUDITMESH_CACHE_DIR:-$HOME/.cache/auditmesh}"
RUN_DIR="${AUDITMESH_RUN_DIR:-$HOME/.local/state/auditmesh}"
NODES="${AUDITMESH_CASSANDRA_NODES:-1}"
FIRST_ADDRESS="${AUDITMESH_CASSANDRA_ADDRESS:-127.0.0.1}"
CQL_PORT="${AUDITMESH_CASSANDRA_PORT:-9042}"
STORAGE_PORT="${AUDITMESH_CASSANDRA_STORAGE_PORT:-7000}"
JMX_PORT="${AUDITMESH_CASSANDRA_JMX_PORT:-7100}"
COMMITLOG_SYNC="${AUDITMESH_CASSANDRA_COMMITLOG_SYNC:-periodic}"
COMMITLOG_GROUP_WINDOW="${AUDITMESH_CASSANDRA_COMMITLOG_GROUP_WINDOW:-15ms}"
if [ "$NODES" -gt 1 ]; then
  CLUSTER_NAME="${AUDITMESH_CASSANDRA_CLUSTER:-auditmesh-cluster}"
  HEAP="${AUDITMESH_CASSANDRA_HEAP:-512M}"
  MEMTABLE_HEAP="${AUDITMESH_CASSANDRA_MEMTABLE_HEAP:-64MiB}"
  MEMTABLE_OFFHEAP="${AUDITMESH_CASSANDRA_MEMTABLE_OFFHEAP:-128MiB}"
  HINTS=true
  CLUSTER_DIR="$RUN_DIR/$CLUSTER_NAME"
else
  CLUSTER_NAME="${AUDITMESH_CASSANDRA_CLUSTER:-auditmesh-local}"
  HEAP="${AUDITMESH_CASSANDRA_HEAP:-3G}"
  MEMTABLE_HEAP="${AUDITMESH_CASSANDRA_MEMTABLE_HEAP:-256MiB}"
  MEMTABLE_OFFHEAP="${AUDITMESH_CASSANDRA_MEMTABLE_OFFHEAP:-768MiB}"
  HINTS=false
  CLUSTER_DIR="$RUN_DIR"
fi
GC_OPTS="${AUDITMESH_CASSANDRA_GC_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=100}"
REDIS_PORT="${AUDITMESH_REDIS_PORT:-6379}"
READY_TIMEOUT="${AUDITMESH_READY_TIMEOUT:-240}"

LIB_DIR="$CACHE_DIR/cassandra-$CASSANDRA_VERSION/lib"
R_DIR="$RUN_DIR/redis"
R_PID="$R_DIR/redis.pid"
R_LOG="$R_DIR/redis.log"

# Node K (1..NODES): its address, state directory, pid file and logs.
node_address() { local base="${FIRST_ADDRESS%.*}" last="${FIRST_ADDRESS##*.}"; echo "$base.$((last + $1 - 1))"; }
node_dir() { if [ "$NODES" -gt 1 ]; then echo "$CLUSTER_DIR/node$1"; else echo "$RUN_DIR/cassandra"; fi; }
node_pid() { echo "$(node_dir "$1")/cassandra.pid"; }
node_log() { echo "$(node_dir "$1")/logs/system.log"; }
node_token() { python3 -c "print(-2**63 + ($1 - 1) * (2**64 // $NODES))"; }
seeds() { local k out=""; for k in $(seq 1 "$NODES"); do out="$out${out:+,}$(node_address "$k")"; done; echo "$out"; }
check_node() {
  case "$1" in ''|*[!0-9]*) echo "infra: node must be 1..$NODES" >&2; exit 2 ;; esac
  if [ "$1" -lt 1 ] || [ "$1" -gt "$NODES" ]; then echo "infra: node must be 1..$NODES" >&2; exit 2; fi
}

log() { printf 'infra: %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/$2/$1") 2>/dev/null; }  # port, address

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

start_node() {
  local k="$1" addr dir pid_file
  addr="$(node_address "$k")"; dir="$(node_dir "$k")"; pid_file="$(node_pid "$k")"
  if pid_alive "$pid_file" || port_open "$CQL_PORT" "$addr"; then log "cassandra node $k already running on $addr:$CQL_PORT"; return; fi
  fetch_cassandra
  mkdir -p "$dir"/{data,commitlog,saved_caches,hints,logs,conf}
  local sync_setting="commitlog_sync_period: 10000ms"
  if [ "$COMMITLOG_SYNC" = group ]; then sync_setting="commitlog_sync_group_window: $COMMITLOG_GROUP_WINDOW"; fi
  sed -e "s#@DIR@#$dir#g" -e "s#@CQL_PORT@#$CQL_PORT#g" -e "s#@STORAGE_PORT@#$STORAGE_PORT#g" \
    -e "s#@CLUSTER_NAME@#$CLUSTER_NAME#g" -e "s#@ADDRESS@#$addr#g" -e "s#@SEEDS@#$(seeds)#g" \
    -e "s#@TOKEN@#$(node_token "$k")#g" -e "s#@HINTS@#$HINTS#g" \
    -e "s#@MEMTABLE_HEAP@#$MEMTABLE_HEAP#g" -e "s#@MEMTABLE_OFFHEAP@#$MEMTABLE_OFFHEAP#g" \
    -e "s#@COMMITLOG_SYNC@#$COMMITLOG_SYNC#g" -e "s#@COMMITLOG_SYNC_SETTING@#$sync_setting#g" \
    "$HERE/cassandra.yaml.in" > "$dir/conf/cassandra.yaml"
  cp "$HERE/logback.xml" "$dir/conf/logback.xml"
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
  # One node keeps its JMX on a free port; nodes of a cluster get fixed ones (ccm style).
  local jmx=0 cluster_opts=()
  if [ "$NODES" -gt 1 ]; then
    jmx=$((JMX_PORT + 100 * (k - 1)))
    # A small fresh cluster with its tokens given: no ring delay or gossip settling to wait out.
    cluster_opts=(-Dcassandra.ring_delay_ms=1000 -Dcassandra.broadcast_interval_ms=1000)
  fi
  log "starting cassandra node $k on $addr (heap $HEAP, commit log $COMMITLOG_SYNC), log: $(node_log "$k")"
  # shellcheck disable=SC2086 # GC_OPTS is a list of options
  nohup java -Xms"$HEAP" -Xmx"$HEAP" -Xss256k $GC_OPTS -XX:+ExitOnOutOfMemoryError \
    -Xlog:gc,safepoint:file="$dir/logs/gc.log":time,uptime,level,tags:filecount=4,filesize=20M \
    -XX:ActiveProcessorCount=2 \
    -Djava.net.preferIPv4Stack=true -Djdk.attach.allowAttachSelf=true \
    -Dio.netty.tryReflectionSetAccessible=true "${opens[@]}" \
    -javaagent:"$jamm" \
    -Dcassandra-foreground=yes \
    -Dcassandra.config="file://$dir/conf/cassandra.yaml" \
    -Dlogback.configurationFile="$dir/conf/logback.xml" \
    -Dcassandra.storagedir="$dir" -Dcassandra.logdir="$dir/logs" \
    -Dcassandra.skip_wait_for_gossip_to_settle=0 -Dcassandra.load_ring_state=false \
    -Dcassandra.superuser_setup_delay_ms=0 -Dcassandra.ignore_kernel_bug_1057843_check=true \
    -Dcassandra.jmx.local.port="$jmx" "${cluster_opts[@]}" \
    -cp "$dir/conf:$LIB_DIR/*" org.apache.cassandra.service.CassandraDaemon \
    >"$dir/logs/stdout.log" 2>&1 < /dev/null &
  echo $! > "$pid_file"
}

wait_node() {
  local k="$1" addr pid_file deadline=$((SECONDS + READY_TIMEOUT))
  addr="$(node_address "$k")"; pid_file="$(node_pid "$k")"
  until port_open "$CQL_PORT" "$addr"; do
    if [ -f "$pid_file" ] && ! pid_alive "$pid_file"; then
      log "cassandra node $k exited during startup; see $(node_log "$k")"
      tail -n 20 "$(node_dir "$k")/logs/stdout.log" >&2 || true; exit 1; fi
    if [ $SECONDS -ge $deadline ]; then
      log "cassandra node $k not ready on $addr:$CQL_PORT after ${READY_TIMEOUT}s; see $(node_log "$k")"; exit 1; fi
    sleep 1
  done
  log "cassandra node $k ready on $addr:$CQL_PORT"
}

# The first node alone (it holds the cluster's first schema), then the others together.
start_cassandra() {
  local k
  start_node 1; wait_node 1
  for k in $(seq 2 "$NODES"); do start_node "$k"; done
  for k in $(seq 2 "$NODES"); do wait_node "$k"; done
}

# signal: TERM (drains, then KILL after 60 s) or KILL (a crash).
stop_node() {
  local k="$1" signal="${2:-TERM}" pid_file; pid_file="$(node_pid "$k")"
  if pid_alive "$pid_file"; then
    local pid; pid="$(cat "$pid_file")"
    kill "-$signal" "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -9 "$pid" 2>/dev/null || true
    log "cassandra node $k stopped ($signal)"
  fi
  rm -f "$pid_file"
}

stop_cassandra() { local k; for k in $(seq 1 "$NODES"); do stop_node "$k"; done; }

node_status() {
  local k="$1" addr; addr="$(node_address "$k")"
  if port_open "$CQL_PORT" "$addr"; then echo "cassandra$([ "$NODES" -gt 1 ] && echo " node $k")  up    $addr:$CQL_PORT"
  else echo "cassandra$([ "$NODES" -gt 1 ] && echo " node $k")  down  (log: $(node_log "$k"))"; return 1; fi
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
  if port_open "$REDIS_PORT" 127.0.0.1; then log "redis already running on :$REDIS_PORT"; return; fi
  install_redis
  mkdir -p "$R_DIR"
  "$(redis_bin)" --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize yes --pidfile "$R_PID" \
    --logfile "$R_LOG" --dir "$R_DIR" --save "" --appendonly no --maxmemory 512mb \
    --maxmemory-policy allkeys-lru --databases 64
  local deadline=$((SECONDS + 30))
  until port_open "$REDIS_PORT" 127.0.0.1; do
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
  local rc=0 k
  for k in $(seq 1 "$NODES"); do node_status "$k" || rc=1; done
  if port_open "$REDIS_PORT" 127.0.0.1; then echo "redis      up    127.0.0.1:$REDIS_PORT"; else echo "redis      down  (log: $R_LOG)"; rc=1; fi
  return $rc
}

node_command() {
  check_node "${1:-}"
  case "${2:-}" in
    start) start_node "$1"; wait_node "$1" ;;
    stop) stop_node "$1" TERM ;;
    kill) stop_node "$1" KILL ;;
    status) node_status "$1" ;;
    *) echo "usage: $0 node K start|stop|kill|status" >&2; exit 2 ;;
  esac
}

case "${1:-}" in
  up) start_redis; start_cassandra ;;
  down) stop_cassandra; stop_redis ;;
  status) status ;;
  start-cassandra) start_cassandra ;;
  stop-cassandra) stop_cassandra ;;
  start-redis) start_redis ;;
  stop-redis) stop_redis ;;
  node) node_command "${2:-}" "${3:-}" ;;
  fetch) fetch_cassandra ;;
  *) echo "usage: $0 up|down|status|start-cassandra|stop-cassandra|start-redis|stop-redis|node K start|stop|kill|status|fetch" >&2; exit 2 ;;
esac
