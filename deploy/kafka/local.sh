#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft) on 127.0.0.1, assembled from Maven Central.
#
#   deploy/kafka/local.sh up      assemble (first time), format (first time), start, wait, create topics
#   deploy/kafka/local.sh down    stop the broker that `up` started (pid file); other brokers are left alone
#   deploy/kafka/local.sh status  say whether it runs and answers
#   deploy/kafka/local.sh logs    print the end of the broker log
#
# Settings (environment):
#   BIOPRIV_KAFKA_DIR   where jars, config, data, pid and log live   (default: <repo>/.kafka)
#   BIOPRIV_KAFKA_PORT  client port; the controller uses PORT+1      (default: 9092)
#   BIOPRIV_KAFKA_HEAP  JVM heap                                     (default: 512m)
#   BIOPRIV_PYTHON      Python with biopriv installed, for topics    (default: <repo>/.venv/bin/python)
#   BIOPRIV_PARTITIONS  partitions of each project topic             (default: 6)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
dir=${BIOPRIV_KAFKA_DIR:-$repo/.kafka}
port=${BIOPRIV_KAFKA_PORT:-9092}
cport=$((port + 1))
heap=${BIOPRIV_KAFKA_HEAP:-512m}
py=${BIOPRIV_PYTHON:-$repo/.venv/bin/python}
[ -x "$py" ] || py=python3
partitions=${BIOPRIV_PARTITIONS:-6}
bootstrap="127.0.0.1:$port"
pidfile="$dir/broker.pid"
logfile="$dir/broker.log"

say() { echo "kafka: $*"; }
die() { echo "kafka: error: $*" >&2; exit 1; }

running() {
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

answers() {
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}

assemble() {
  # Jars are re-copied when the pom changes (a new pinned version).
  local stamp="$dir/libs/.pom.sha1" want
  want=$(sha1sum "$here/pom.xml" | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return; fi
  command -v mvn >/dev/null || die "Maven (mvn) is needed to assemble the broker from Maven Central"
  command -v java >/dev/null || die "Java 17+ is needed to run the broker"
  say "assembling the broker from Maven Central into $dir/libs"
  rm -rf "$dir/libs"; mkdir -p "$dir/libs"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
      -DoutputDirectory="$dir/libs" || die "mvn could not fetch the broker (see output above)"
  echo "$want" > "$stamp"
}

configure() {
  mkdir -p "$dir/data"
  cat > "$dir/server.properties" <<PROPS
# Written by deploy/kafka/local.sh: a single-node KRaft broker for development and tests.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
num.partitions=$partitions
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=168
log.segment.bytes=67108864
PROPS
  if [ ! -f "$dir/data/meta.properties" ]; then
    local cid
    cid=$(java -cp "$dir/libs/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
    java -cp "$dir/libs/*" -Dlog4j2.configurationFile="$here/log4j2.xml" \
      kafka.tools.StorageTool format -t "$cid" -c "$dir/server.properties" >"$dir/format.log" 2>&1 \
      || { cat "$dir/format.log" >&2; die "formatting the storage directory failed"; }
    say "formatted $dir/data (cluster $cid)"
  fi
}

up() {
  mkdir -p "$dir"
  if running; then
    say "already running (pid $(cat "$pidfile")) on $bootstrap"
  else
    answers && die "port $port is taken by another process; set BIOPRIV_KAFKA_PORT"
    assemble
    configure
    nohup java -Xms128m -Xmx"$heap" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$here/log4j2.xml" \
      -cp "$dir/libs/*" kafka.Kafka "$dir/server.properties" >"$logfile" 2>&1 &
    echo $! > "$pidfile"
    say "started pid $(cat "$pidfile"), log $logfile"
  fi
  # Wait until it answers (and create the project's topics).
  local deadline=$((SECONDS + 90))
  until answers; do
    running || { tail -n 30 "$logfile" >&2; rm -f "$pidfile"; die "the broker exited during start-up"; }
    [ $SECONDS -lt $deadline ] || die "the broker did not answer on $bootstrap within 90 s"
    sleep 0.3
  done
  "$py" - "$bootstrap" "$partitions" <<'PY' || die "could not create the topics"
import sys, time
from connectors.kafka import ensure_topics, project_topics
from pipeline.errors import BrokerError
deadline = time.monotonic() + 60
while True:
    try:
        created = ensure_topics(sys.argv[1], project_topics(int(sys.argv[2])))
        break
    except BrokerError as exc:
        if time.monotonic() > deadline:
            raise SystemExit(f"kafka: error: {exc}")
        time.sleep(0.5)
print("kafka: topics created: " + (", ".join(created) if created else "none needed"))
PY
  say "ready on $bootstrap"
}

down() {
  if ! [ -f "$pidfile" ]; then say "not started by this script ($pidfile absent)"; return 0; fi
  local pid; pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then say "pid $pid ignored SIGTERM for 20 s; killing"; kill -9 "$pid"; fi
    say "stopped pid $pid"
  else
    say "pid $pid was not running"
  fi
  rm -f "$pidfile"
}

status() {
  if running; then
    if answers; then say "running (pid $(cat "$pidfile")) and answering on $bootstrap"; return 0; fi
    say "running (pid $(cat "$pidfile")) but not answering on $bootstrap yet"; return 1
  fi
  if answers; then say "not started by this script, but something answers on $bootstrap"; return 0; fi
  say "not running"; return 3
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  logs) tail -n "${2:-50}" "$logfile" ;;
  *) echo "usage: $0 up|down|status|logs [N]" >&2; exit 2 ;;
esac
