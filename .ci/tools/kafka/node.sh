#!/usr/bin/env bash
# Runs one Apache Kafka node (broker and controller, KRaft) in the
# foreground, as the tests and benches/load.sh do:
#
#   KAFKA_LIBS=DIR KAFKA_CLUSTER_ID=ID bash .ci/tools/kafka/node.sh \
#       NODE_DIR NODE_ID BROKER_PORT CONTROLLER_PORT VOTERS [KEY=VALUE ...]
#
# KAFKA_LIBS is the folder .ci/tools/kafka.sh prints. VOTERS is the static
# quorum, `1@127.0.0.1:CONTROLLER_PORT` for one node; every node of a
# cluster gets the same VOTERS and KAFKA_CLUSTER_ID (22 characters of
# base64url; made up when unset, for a single node). KEY=VALUE settings are
# appended to the node's server.properties and win over the defaults there.
#
# The node's storage is formatted on the first run only, so running the
# same command again after a kill -9 restarts the same node with its data.
# The broker then replaces this shell (exec): the caller's process id is
# the broker's, to signal and to kill. Its log is NODE_DIR/logs/server.log.
# KAFKA_JVM_OPTS replaces the JVM flags below, which suit several brokers
# on 2 cores, not a benchmark (benches/load.sh sets Kafka's own).
set -euo pipefail

if [[ $# -lt 5 ]]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
fi
DIR=$1 NODE_ID=$2 BROKER_PORT=$3 CONTROLLER_PORT=$4 VOTERS=$5
shift 5
HERE=$(cd "$(dirname "$0")" && pwd)
: "${KAFKA_LIBS:?KAFKA_LIBS must name the folder bash .ci/tools/kafka.sh prints}"
[[ -f $(ls "$KAFKA_LIBS"/kafka_2.13-*.jar 2>/dev/null | head -1) ]] ||
    { echo "node.sh: no kafka_2.13 jar in $KAFKA_LIBS (bash .ci/tools/kafka.sh installs it)" >&2; exit 1; }
# The machine's Java 17: every Kafka from 3.9 to 4.4 supports it.
JAVA=${JAVA:-${JAVA_HOME:+$JAVA_HOME/bin/}java}
command -v "$JAVA" >/dev/null ||
    { echo "node.sh: java not found (Debian: apt-get install openjdk-17-jre-headless)" >&2; exit 1; }

mkdir -p "$DIR/logs"
DIR=$(cd "$DIR" && pwd)
sed -e "s|@NODE_ID@|$NODE_ID|; s|@VOTERS@|$VOTERS|; s|@BROKER_PORT@|$BROKER_PORT|g" \
    -e "s|@CONTROLLER_PORT@|$CONTROLLER_PORT|g; s|@DIR@|$DIR|" \
    "$HERE/server.properties" >"$DIR/server.properties"
for setting in "$@"; do
    [[ $setting == *=* ]] || { echo "node.sh: $setting is not KEY=VALUE" >&2; exit 2; }
    printf '%s\n' "$setting" >>"$DIR/server.properties"
done

LOGGING=(-Dlog4j2.configurationFile="$HERE/log4j2.properties" -Dkafka.logs.dir="$DIR/logs")
if [[ ! -f $DIR/data/meta.properties ]]; then
    # 16 random bytes in base64url without padding, as Kafka's own
    # Uuid.randomUuid() prints them; no '-', which a leading one would make
    # look like a flag.
    CLUSTER_ID=${KAFKA_CLUSTER_ID:-$(head -c 16 /dev/urandom | base64 | tr '+/' 'AB' | tr -d '=')}
    "$JAVA" -Xmx256m "${LOGGING[@]}" -cp "$KAFKA_LIBS/*" kafka.tools.StorageTool \
        format --cluster-id="$CLUSTER_ID" --config "$DIR/server.properties" >"$DIR/logs/format.log" 2>&1 ||
        { cat "$DIR/logs/format.log" >&2; exit 1; }
fi

# Serial GC and the C1 compiler only: a broker of a test needs little heap
# and no peak throughput, and several share 2 cores.
read -r -a JVM_OPTS <<<"${KAFKA_JVM_OPTS:--Xms128m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true}"
exec "$JAVA" "${JVM_OPTS[@]}" "${LOGGING[@]}" -cp "$KAFKA_LIBS/*" kafka.Kafka "$DIR/server.properties"
