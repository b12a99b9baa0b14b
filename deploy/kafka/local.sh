#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft) on 127.0.0.1, assembled from Maven Central.
#
#   deploy/kafka/local.sh up      assemble (first time), format (first time), start, wait, create topics
#   deploy/kafka/local.sh down    stop the broker that `up` started (pid file); other brokers are left alone
#   deploy/kafka/local.sh status  say whether it runs and answers
#   deploy/kafka/local.sh logs    print the end of the broker log
#
# With --secure (or BIOPRIV_KAFKA_SECURE=1) after the action, the same jars run a second, secured
# profile in its own directory: one SASL_SSL listener (TLS with a CA and broker certificate made
# on the spot with openssl, SCRAM-SHA-512 logins), the StandardAuthorizer with no access unless
# an ACL allows it, and the ACLs of four principals (device, worker, analyst, admin; see
# connectors/acls.py and docs/operations.md). Client property files for each principal are
# written to <dir>/clients/<principal>.properties (pass one to `biopriv ... --client-config`).
#
# Settings (environment):
#   BIOPRIV_KAFKA_DIR   where jars, config, data, pid and log live   (default: <repo>/.kafka, secure: <repo>/.kafka-secure)
#   BIOPRIV_KAFKA_PORT  client port; the controller uses PORT+1      (default: 9092, secure: 9094)
#   BIOPRIV_KAFKA_HEAP  JVM heap                                     (default: 512m)
#   BIOPRIV_PYTHON      Python with biopriv installed, for topics    (default: <repo>/.venv/bin/python)
#   BIOPRIV_PARTITIONS  partitions of each project topic             (default: 6)
#   BIOPRIV_KAFKA_SECURE  1: the secured profile, as --secure        (default: 0)
# Topic replication, min ISR and retention: BIOPRIV_REPLICATION_FACTOR, BIOPRIV_MIN_INSYNC_REPLICAS,
# BIOPRIV_RAW_RETENTION_H, BIOPRIV_DEADLETTER_RETENTION_H (connectors/kafka.py, TopicSettings).
set -euo pipefail

action=${1:-}
secure=${BIOPRIV_KAFKA_SECURE:-0}
lines=50
for arg in "${@:2}"; do
  case "$arg" in
    --secure) secure=1 ;;
    [0-9]*) lines=$arg ;;  # `logs N`
    *) echo "kafka: error: unknown option $arg (allowed: --secure)" >&2; exit 2 ;;
  esac
done

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
if [ "$secure" = 1 ]; then
  dir=${BIOPRIV_KAFKA_DIR:-$repo/.kafka-secure}
  port=${BIOPRIV_KAFKA_PORT:-9094}
else
  dir=${BIOPRIV_KAFKA_DIR:-$repo/.kafka}
  port=${BIOPRIV_KAFKA_PORT:-9092}
fi
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

# -- the secured profile (--secure) -----------------------------------------------------------
#: SCRAM users of the secured broker: its own inter-broker login, then the four client principals.
principals="broker admin device worker analyst"

password() { sed -n "s/^$1=//p" "$dir/secrets/passwords"; }

secrets() {
  # One random password per principal, made once and kept: the SCRAM credentials are written
  # into the metadata when the storage is formatted.
  mkdir -p "$dir/secrets"; chmod 700 "$dir/secrets"
  [ -s "$dir/secrets/passwords" ] && return
  command -v openssl >/dev/null || die "openssl is needed for the secured broker (passwords, certificates)"
  (umask 077; for name in $principals; do echo "$name=$(openssl rand -hex 18)"; done > "$dir/secrets/passwords")
}

certificates() {
  # A CA made on the spot, and the broker's certificate for 127.0.0.1 and localhost signed by it.
  # Kafka reads PEM directly (ssl.keystore.type=PEM): key first, then the certificate chain.
  local t="$dir/tls"
  [ -s "$t/broker-keystore.pem" ] && return
  mkdir -p "$t"; chmod 700 "$t"
  (
    set -e; umask 077; cd "$t"
    openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=biopriv local CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout ca.key -out ca.pem
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout broker.key -out broker.csr
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=serverAuth,clientAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1" \
      "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid" > broker.ext
    openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
      -extfile broker.ext -out broker.crt
    cat broker.key broker.crt ca.pem > broker-keystore.pem
    chmod 644 ca.pem
  ) >"$dir/openssl.log" 2>&1 || { cat "$dir/openssl.log" >&2; die "making the TLS certificates failed"; }
  say "made a CA and a broker certificate in $t (clients trust $t/ca.pem)"
}

client_files() {
  # One client properties file per principal, for `biopriv ... --client-config FILE`.
  mkdir -p "$dir/clients"; chmod 700 "$dir/clients"
  local name
  for name in admin device worker analyst; do
    (umask 077; cat > "$dir/clients/$name.properties" <<CLIENT
# The $name principal of the secured local broker (written by deploy/kafka/local.sh up --secure).
bootstrap.servers=$bootstrap
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.username=$name
sasl.password=$(password "$name")
ssl.ca.location=$dir/tls/ca.pem
CLIENT
)
  done
}

secure_properties() {
  local bpw; bpw=$(password broker)
  (umask 077; cat > "$dir/server.properties" <<PROPS
# Written by deploy/kafka/local.sh --secure: a single-node KRaft broker with TLS, SCRAM and ACLs.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
# Clients: SASL_SSL only. The controller listener is loopback-only and needs the broker's own
# login (SASL PLAIN): it is never an anonymous way around the authorizer.
listeners=SASL_SSL://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=SASL_SSL://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_SSL
listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="broker" password="$bpw";
sasl.mechanism.controller.protocol=PLAIN
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="broker" password="$bpw" user_broker="$bpw";
ssl.keystore.type=PEM
ssl.keystore.location=$dir/tls/broker-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$dir/tls/ca.pem
ssl.client.auth=none
# Nothing is allowed unless an ACL says so; admin and the broker itself are super users.
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin;User:broker
allow.everyone.if.no.acl.found=false
log.dirs=$dir/data
num.partitions=$partitions
auto.create.topics.enable=false
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
)
}

# -- both profiles ------------------------------------------------------------------------------
configure() {
  mkdir -p "$dir/data"
  local scram=()
  if [ "$secure" = 1 ]; then
    secrets; certificates; client_files; secure_properties
    for name in $principals; do scram+=(--add-scram "SCRAM-SHA-512=[name=$name,password=$(password "$name")]"); done
    format "${scram[@]}"
    return
  fi
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
  format
}

format() {
  # First start only: a cluster id, and (secured profile) the SCRAM users given as arguments.
  if [ ! -f "$dir/data/meta.properties" ]; then
    local cid
    cid=$(java -cp "$dir/libs/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
    java -cp "$dir/libs/*" -Dlog4j2.configurationFile="$here/log4j2.xml" \
      kafka.tools.StorageTool format -t "$cid" -c "$dir/server.properties" "$@" >"$dir/format.log" 2>&1 \
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
  # Secured profile: as admin, and then the principals' ACLs on the project's topics.
  local admin_config=""
  [ "$secure" = 1 ] && admin_config="$dir/clients/admin.properties"
  "$py" - "$bootstrap" "$partitions" "$admin_config" <<'PY' || die "could not create the topics"
import sys, time
from connectors.kafka import ensure_topics, project_topics
from connectors.security import load_client_config
from pipeline.errors import BrokerError
security = load_client_config(sys.argv[3]).security if sys.argv[3] else None
deadline = time.monotonic() + 60
while True:
    try:
        created = ensure_topics(sys.argv[1], project_topics(int(sys.argv[2])), security=security)
        break
    except BrokerError as exc:
        if time.monotonic() > deadline:
            raise SystemExit(f"kafka: error: {exc}")
        time.sleep(0.5)
print("kafka: topics created: " + (", ".join(created) if created else "none needed"))
if security is not None:
    from connectors.acls import apply_acls
    from connectors.kafka import Topics
    print(f"kafka: ACLs: {apply_acls(sys.argv[1], Topics(), security=security)} bindings for device, worker, analyst")
PY
  [ "$secure" = 1 ] && say "client settings per principal: $dir/clients/{admin,device,worker,analyst}.properties"
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

case "$action" in
  up) up ;;
  down) down ;;
  status) status ;;
  logs) tail -n "$lines" "$logfile" ;;
  *) echo "usage: $0 up|down|status|logs [N] [--secure]" >&2; exit 2 ;;
esac
