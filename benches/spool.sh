#!/usr/bin/env bash
# Benchmark of the durable path, --spool-dir (issue 25, item 4): what the
# spool costs on a healthy broker, how fast it takes webhooks when the
# broker is down, how fast it replays a backlog, and how soon the bridge
# is back to 200s after an outage under load.
#
#   bash benches/spool.sh [--sinks "nats kafka"] [--rounds N]
#                         [--phases "healthy down replay outage"]
#                         [--duration S] [--warmup S] [--kafka-warmup S]
#                         [--connections N] [--threads N] [--backlog N]
#                         [--outage S] [--outage-at S] [--outage-load S]
#                         [--deadline S] [--no-build] [--out DIR]
#
# Every option also reads an environment variable: BENCH_SINKS,
# BENCH_ROUNDS, BENCH_PHASES, BENCH_DURATION, BENCH_WARMUP,
# BENCH_KAFKA_WARMUP, BENCH_CONNECTIONS, BENCH_THREADS, BENCH_BACKLOG,
# BENCH_OUTAGE, BENCH_OUTAGE_AT, BENCH_OUTAGE_LOAD, BENCH_DEADLINE,
# BENCH_OUT. BENCH_BRIDGE runs another bridge binary (a build to compare;
# nothing is built then); BENCH_BRIDGE_ARGS adds flags to every bridge
# (word-split). As in benches/load.sh, and with the same brokers: the
# pinned nats-server (.ci/tools/nats-server.sh; NATS_SERVER overrides it)
# with -js and its store in a temporary directory, and one single-node
# Apache Kafka (.ci/tools/kafka.sh and .ci/tools/kafka/node.sh; KAFKA_LIBS,
# KAFKA_RELEASE, KAFKA_JVM_OPTS, BENCH_KAFKA_SETTINGS and
# BENCH_KAFKA_PARTITIONS as there), with Kafka's own JVM flags and thread
# counts. The bridge publishes to the JetStream stream BENCH
# (--nats-stream) or makes its Kafka topics (--kafka-create-topics,
# replication factor 1). The broker's messages are counted with its
# monitoring endpoint (/jsz) or, for Kafka, with a few lines of Java on the
# broker's own client jars (javac and java: a JDK 17, which building the
# Kafka install needs anyway).
#
# A round (3 by default) is every phase on every sink, on fresh brokers;
# the figures are the medians over the rounds. A whole run of 3 rounds
# takes about an hour with the current bridge (its slow replay fills the
# deadlines); --rounds 1 or --phases for less.
#
# Load: wrk -t1 -c32 with benches/load.lua (a fresh objectId per request,
# so JetStream's de-duplication never makes a run look faster), as
# load.sh: every measured run right after a --warmup run of the same
# target, full load or, for "half load", about half the bridge's measured
# requests/s (measure_at_rate). Every bridge also gets --drain-delay 0s,
# which only shortens its stop. Per sink and round, on fresh brokers:
#
#  1. healthy: the bridge without the spool and the same bridge with
#     --spool-dir, each on its own fresh broker (Kafka: driven
#     --kafka-warmup s first, for the broker's JIT), at full load one right
#     after the other (in the opposite order in even rounds), then both at
#     half the first's requests/s. Figures: requests/s and p99 of both,
#     the share of webhooks the spooling bridge answered 202, and the
#     ratios. Targets: requests/s with the spool >= 0.95 x without; p99 at
#     full and at half load <= 1.05 x without.
#  2. down: a fresh bridge with --spool-dir on the broker of (1), which is
#     then killed (SIGKILL; its stream or topics exist); measured once the
#     bridge answers a webhook 202, at full load. Figure: 202s per second
#     (the bridge's own counter over the measured run). Target: >= half the
#     live path's 200s per second in (1).
#  3. replay: a fresh bridge with --spool-dir on that broker; the broker is
#     killed, the spool filled at full load until it holds --backlog events
#     (50,000), the load stopped; then the broker is started again (same
#     port, same files) and apizee_bridge_spool_events polled every 50 ms,
#     from the broker's readiness (NATS: /healthz; Kafka: its port open)
#     until 0, or for at most --deadline s (180). Figure: events/s (events
#     in the spool at readiness / time from the first event replayed to
#     empty); also printed: how long after the broker's readiness the
#     first event was replayed (the client's reconnection), and the rate
#     over both. Target: >= 20,000/s.
#     Check: the broker holds at least as many more messages as the
#     backlog (JetStream's stream count; Kafka's high watermarks).
#  4. outage: a fresh bridge with --spool-dir on that broker, driven at
#     half the live path's requests/s of (1) for --outage-load s (40), and
#     on until at least 20 s after the broker is back (a restarted Kafka
#     can take 20 s to be ready on a busy machine); the broker killed
#     (SIGKILL) --outage-at s (10) in and started again --outage (5) s
#     later. /metrics read every 100 ms (the timeline is kept in DIR).
#     From the broker's readiness: (a) until the bridge answers 200 again:
#     the first 100 ms in which the 200 counter rises after the last one in
#     which the 202 counter rose (apizee_bridge_http_requests_total,
#     handler="webhook"), provided the 200s then last >= 2 s to the end of
#     the load; (b) until apizee_bridge_spool_events is 0 for good, the
#     load stopped or not, within --deadline s. Targets: both <= 15 s.
#     Check: the broker has at least as many more messages as webhooks
#     answered 2xx over the phase.
#     A Kafka broker started again is a fresh JVM: its JIT is cold for the
#     first tens of seconds (see load.sh), which (3) and (4) include, as
#     an outage in production would.
#
# Phases run in the order healthy, outage, replay, down (each needs the
# broker up at its start, and down leaves it down); --phases picks some
# (down and outage then still measure the bridge without the spool at full
# load once, for their reference rate). A phase that misses its deadline
# is reported ("not empty after 180 s") and the run goes on.
#
# Prints, and writes to DIR (--out; target/bench/spool by default)
# results.md: per sink, the median over the rounds of each figure with
# every round's value, its target and whether it is met, and per phase
# the command that reproduces it; results.tsv: every figure of every
# round with that command; runs.tsv: every wrk run in load.sh's columns;
# outage-<sink>-<round>.tsv: the timelines of (4).
#
# Every process it starts is killed by its pid on exit, ports are free
# loopback ports, and files go to a temporary directory.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
BENCH_NAME=spool.sh
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

DEFAULT_PHASES="healthy down replay outage"
ROUNDS=${BENCH_ROUNDS:-3}
DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-3}
KAFKA_WARMUP=${BENCH_KAFKA_WARMUP:-30}
CONNECTIONS=${BENCH_CONNECTIONS:-32}
THREADS=${BENCH_THREADS:-1}
SINKS=${BENCH_SINKS:-nats kafka}
PHASES=${BENCH_PHASES:-$DEFAULT_PHASES}
BACKLOG=${BENCH_BACKLOG:-50000}
OUTAGE=${BENCH_OUTAGE:-5}
OUTAGE_AT=${BENCH_OUTAGE_AT:-10}
OUTAGE_LOAD=${BENCH_OUTAGE_LOAD:-40}
DEADLINE=${BENCH_DEADLINE:-180}
OUT=${BENCH_OUT:-$ROOT/target/bench/spool}
BRIDGE_ARGS=${BENCH_BRIDGE_ARGS:-}
KAFKA_PARTITIONS=${BENCH_KAFKA_PARTITIONS:-3}
# The samples as they are (load.lua pads none).
BODY_BYTES=
BUILD=1
# The outage's load goes on at least this long after the broker is back:
# the 15 s target and 5 s more to see the 200s last.
AFTER_RETURN=20

while (($#)); do
    case $1 in
        --sinks) SINKS=${2//,/ }; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --phases) PHASES=${2//,/ }; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --kafka-warmup) KAFKA_WARMUP=$2; shift 2 ;;
        --connections) CONNECTIONS=$2; shift 2 ;;
        --threads) THREADS=$2; shift 2 ;;
        --backlog) BACKLOG=$2; shift 2 ;;
        --outage) OUTAGE=$2; shift 2 ;;
        --outage-at) OUTAGE_AT=$2; shift 2 ;;
        --outage-load) OUTAGE_LOAD=$2; shift 2 ;;
        --deadline) DEADLINE=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --out) OUT=$2; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "spool.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
for value in "$ROUNDS" "$DURATION" "$WARMUP" "$CONNECTIONS" "$THREADS" "$BACKLOG" "$OUTAGE" "$OUTAGE_AT" \
    "$OUTAGE_LOAD" "$DEADLINE"; do
    [[ $value =~ ^[1-9][0-9]*$ ]] ||
        { echo "spool.sh: $value: counts and seconds must be positive integers" >&2; exit 2; }
done
[[ $KAFKA_WARMUP =~ ^[0-9]+$ ]] || { echo "spool.sh: --kafka-warmup must be a whole number of seconds" >&2; exit 2; }
for sink in $SINKS; do
    case $sink in
        nats | kafka) ;;
        *) echo "spool.sh: unknown sink $sink (nats, kafka)" >&2; exit 2 ;;
    esac
done
for phase in $PHASES; do
    case " $DEFAULT_PHASES " in
        *" $phase "*) ;;
        *) echo "spool.sh: unknown phase $phase ($DEFAULT_PHASES)" >&2; exit 2 ;;
    esac
done
wants() { [[ " $PHASES " == *" $1 "* ]]; }

bench_tools "$SINKS"
command -v curl >/dev/null || die "curl not found"
command -v python3 >/dev/null || die "python3 not found (reads nats-server's /jsz)"
if [[ " $SINKS " == *" kafka "* ]]; then
    JAVA=${JAVA:-${JAVA_HOME:+$JAVA_HOME/bin/}java}
    JAVAC=${JAVAC:-${JAVA_HOME:+$JAVA_HOME/bin/}javac}
    command -v "$JAVAC" >/dev/null || die "javac not found (counts Kafka's messages): apt-get install openjdk-17-jdk-headless"
fi

if [[ -n ${BENCH_BRIDGE:-} ]]; then
    BRIDGE=$BENCH_BRIDGE
else
    TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
    if ((BUILD)); then
        log "building (release): the bridge"
        cargo build --release --locked --bin apizee-bridge
    fi
    BRIDGE=$TARGET_DIR/release/apizee-bridge
fi
[[ -x $BRIDGE ]] || die "$BRIDGE is missing (run without --no-build, or set BENCH_BRIDGE)"

mkdir -p "$OUT"
bench_tmpdir apizee-spool-bench
bench_measure_init "$OUT/runs.tsv"
FIGURES=$OUT/results.tsv
printf 'round\tsink\tphase\tfigure\tvalue\tunit\ttarget\tverdict\tnote\tcommand\n' >"$FIGURES"

# --- reproducing ---------------------------------------------------------------

# The command that measures phase $2 on sink $1 again: this run's settings
# that differ from the defaults.
phase_command() {
    local sink=$1 phase=$2 command=() env=() option value default
    [[ -n ${BENCH_BRIDGE:-} ]] && env+=("BENCH_BRIDGE=$BENCH_BRIDGE")
    [[ -n $BRIDGE_ARGS ]] && env+=("BENCH_BRIDGE_ARGS=$(printf '%q' "$BRIDGE_ARGS")")
    [[ -n ${BENCH_KAFKA_SETTINGS:-} && $sink == kafka ]] &&
        env+=("BENCH_KAFKA_SETTINGS=$(printf '%q' "$BENCH_KAFKA_SETTINGS")")
    [[ $KAFKA_PARTITIONS != 3 && $sink == kafka ]] && env+=("BENCH_KAFKA_PARTITIONS=$KAFKA_PARTITIONS")
    command=(bash benches/spool.sh --sinks "$sink" --phases "$phase")
    while read -r option value default; do
        [[ $value == "$default" || ($option == --kafka-warmup && $sink == nats) ]] ||
            command+=("$option" "$value")
    done <<EOF
--rounds $ROUNDS 3
--duration $DURATION 10
--warmup $WARMUP 3
--kafka-warmup $KAFKA_WARMUP 30
--connections $CONNECTIONS 32
--threads $THREADS 1
--backlog $BACKLOG 50000
--outage $OUTAGE 5
--outage-at $OUTAGE_AT 10
--outage-load $OUTAGE_LOAD 40
--deadline $DEADLINE 180
EOF
    echo "${env[*]}${env[*]:+ }${command[*]}" | sed 's/  */ /g'
}

# Appends figure $3 (value $4, unit $5) of phase $2 on sink $1 to
# results.tsv; optional $6: its target (">= 0.95", "<= 15"), $7 a note.
# A value ">X" stands for "more than X" (a deadline passed).
figure() {
    local sink=$1 phase=$2 name=$3 value=$4 unit=$5 target=${6:-} note=${7:-} verdict=
    [[ -n $target ]] && verdict=$(verdict "$value" "$target")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$ROUND" "$sink" "$phase" "$name" "$value" "$unit" \
        "$target" "$verdict" "$note" "$(phase_command "$sink" "$phase")" >>"$FIGURES"
    log "round $ROUND/$ROUNDS, $sink $phase: $name $value${unit:+ $unit}${target:+ (target $target: $verdict)}${note:+; $note}"
}

# "met" or "NOT met": value $1 against target $2 (">= X" or "<= X").
verdict() {
    awk -v v="$1" -v t="$2" 'BEGIN {
        split(t, p, " "); more = (v ~ /^>/); x = (more ? substr(v, 2) : v) + 0
        if (p[1] == ">=") ok = !more && x >= p[2] + 0
        else ok = !more && x <= p[2] + 0
        print (ok ? "met" : "NOT met")
    }'
}

# --- the bridge and its broker ------------------------------------------------

# The bridges, by name ("nats spool"): pid, webhook URL, metrics URL.
declare -A BRIDGE_PID=() BRIDGE_URL=() BRIDGE_METRICS=()

# Starts bridge $1 for sink $2 on the current broker ($BROKER_URL), with a
# fresh spool when $3 is "spool", and waits until it answers a webhook 200;
# then drives it $4 more seconds (a Kafka broker's JIT).
start_bridge() {
    local name=$1 sink=$2 spool=$3 more=${4:-0} log=${1// /-} port metrics_port
    port=$(free_port)
    metrics_port=$(free_port)
    local args=(--listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$metrics_port" --drain-delay 0s)
    bridge_sink_args "$sink"
    if [[ $spool == spool ]]; then args+=(--spool-dir "$(mktemp -d "$TMP/$log-spool.XXXXXX")"); fi
    # Word-split on purpose: extra flags for experiments.
    # shellcheck disable=SC2206
    args+=($BRIDGE_ARGS)
    start "$log" "$BRIDGE" "${args[@]}"
    BRIDGE_PID[$name]=$STARTED
    BRIDGE_URL[$name]=http://127.0.0.1:$port/webhooks
    BRIDGE_METRICS[$name]=http://127.0.0.1:$metrics_port/metrics
    # A JVM broker still warming up, on 2 busy cores, can take more than a
    # minute to create topics and acknowledge the first webhook.
    local WAIT_SECONDS=$WAIT_SECONDS
    [[ $sink == kafka ]] && WAIT_SECONDS=120
    ready_and_warm "$log" "$STARTED" "${BRIDGE_URL[$name]}" "$more"
    if [[ -z ${BRIDGE_REVISION:-} ]]; then
        BRIDGE_REVISION=$(curl -sf --max-time 5 "${BRIDGE_METRICS[$name]}" |
            sed -n 's/^apizee_bridge_build_info{.*revision="\([^"]*\)".*/\1/p') || BRIDGE_REVISION=
    fi
}

stop_bridge() { stop "${BRIDGE_PID[$1]}"; }

# One reading of the bridge's /metrics at $1: "answered_200 answered_202
# spool_events in_flight"; fails when it does not answer.
bridge_sample() {
    local page
    page=$(curl -sf --max-time 2 "$1") || return 1
    awk '
        /^apizee_bridge_http_requests_total\{/ && /handler="webhook"/ {
            if ($1 ~ /code="200"/) ok += $2; else if ($1 ~ /code="202"/) spooled += $2
        }
        $1 == "apizee_bridge_spool_events" { events = $2 }
        $1 == "apizee_bridge_requests_in_flight" { in_flight = $2 }
        END { printf "%d %d %d %d\n", ok, spooled, events, in_flight }' <<<"$page"
}
spool_events() { metric "$1" apizee_bridge_spool_events; }
spool_empty() { [[ $(spool_events "$1") == 0 ]]; }
# Fewer than $2 events in the spool of the bridge whose metrics are at $1.
fewer_than() {
    local events
    events=$(spool_events "$1")
    [[ $events =~ ^[0-9]+$ ]] && ((events < $2))
}
# The spool empty and no webhook in flight: nothing moves any more.
settled() {
    local sample
    sample=$(bridge_sample "$1") || return 1
    [[ ${sample#* * } == "0 0" ]]
}

# No webhook in flight at the bridge whose metrics are at $1.
idle() { [[ $(metric "$1" apizee_bridge_requests_in_flight) == 0 ]]; }
# At least $2 events in the spool of the bridge whose metrics are at $1.
holds() {
    local events
    events=$(spool_events "$1")
    [[ $events =~ ^[0-9]+$ ]] && ((events >= $2))
}

# Polls "$@" every 50 ms for at most $1 seconds, while process $2 (log $3)
# runs; fails when the time is up, dies when the process has exited.
within() {
    local seconds=$1 pid=$2 log=$3
    shift 3
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        kill -0 "$pid" 2>/dev/null || die "process $pid exited: $(tail -n 20 "$log")"
        ((SECONDS < deadline)) || return 1
        sleep 0.05
    done
}

# Kills the broker of pid $1 at once (SIGKILL: a crash, a lost node); bash's
# "Killed" line silenced.
kill_broker() { stop "$1" KILL 2>/dev/null; }

# Posts a webhook to $1 that must be answered $2 (202: spooled), with an
# objectId of its own (load.lua's start at 6,500,000,000): JetStream would
# drop a second copy of the same body (its event id, Nats-Msg-Id), and the
# broker's count would come out one short.
PROBES=0
post_probe() {
    PROBES=$((PROBES + 1))
    sed "s/\"objectId\": 100,/\"objectId\": $((900000000 + PROBES)),/" \
        "$ROOT/tests/samples/spec-ticket.json" >"$TMP/probe.json"
    grep -q "$((900000000 + PROBES))" "$TMP/probe.json" ||
        die "tests/samples/spec-ticket.json no longer reads \"objectId\": 100, (post_probe)"
    post_answered "$1" "$2" "$TMP/probe.json"
}

RESTARTS=0
# Starts the broker of pid $1 again (restart_broker), its log numbered.
restart() {
    RESTARTS=$((RESTARTS + 1))
    restart_broker "$1" "${BROKER_LOG[$1]%-broker*}-broker-$RESTARTS"
}

# The messages broker $1 (a pid) holds: every stream's (nats-server's
# /jsz), or the sum of every partition's high watermark minus its low one
# (Kafka); "?" when it cannot tell.
broker_messages() {
    local pid=$1 count
    case ${BROKER_SINK[$pid]} in
        nats)
            count=$(curl -sf --max-time 10 "http://127.0.0.1:${BROKER_AUX_PORT[$pid]}/jsz" |
                python3 -c 'import json, sys; print(json.load(sys.stdin)["messages"])') || count= ;;
        kafka)
            kafka_counter
            # The last line: log4j's default configuration logs errors on stdout.
            count=$("$JAVA" -cp "$TMP/java:$KAFKA_LIBS/*" CountMessages "127.0.0.1:${BROKER_PORT[$pid]}" \
                2>>"$TMP/count-messages.log" | tail -n 1) || count= ;;
    esac
    if [[ $count =~ ^[0-9]+$ ]]; then echo "$count"; else echo "?"; fi
}

# Compiles, once, the Kafka message counter: every topic's partitions, high
# watermark minus low, through the broker's own admin client.
kafka_counter() {
    [[ -f $TMP/java/CountMessages.class ]] && return 0
    mkdir -p "$TMP/java"
    cat >"$TMP/java/CountMessages.java" <<'EOF'
import java.util.HashMap;
import java.util.Map;
import java.util.Properties;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.common.TopicPartition;

public class CountMessages {
    public static void main(String[] args) throws Exception {
        Properties config = new Properties();
        config.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        config.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "60000");
        try (Admin admin = Admin.create(config)) {
            Map<TopicPartition, OffsetSpec> latest = new HashMap<>(), earliest = new HashMap<>();
            for (TopicDescription topic : admin.describeTopics(admin.listTopics().names().get())
                    .allTopicNames().get().values()) {
                topic.partitions().forEach(partition -> {
                    TopicPartition key = new TopicPartition(topic.name(), partition.partition());
                    latest.put(key, OffsetSpec.latest());
                    earliest.put(key, OffsetSpec.earliest());
                });
            }
            long count = 0;
            for (var offset : admin.listOffsets(latest).all().get().values()) count += offset.offset();
            for (var offset : admin.listOffsets(earliest).all().get().values()) count -= offset.offset();
            System.out.println(count);
        }
    }
}
EOF
    "$JAVAC" -cp "$KAFKA_LIBS/*" -d "$TMP/java" "$TMP/java/CountMessages.java" >"$TMP/javac.log" 2>&1 ||
        die "cannot compile the Kafka message counter: $(cat "$TMP/javac.log")"
}

# "met"/"NOT met" note on delivery: broker count $1 before, $2 after, for $3
# webhooks that must have arrived.
delivered() {
    local before=$1 after=$2 expected=$3
    if [[ $before == "?" || $after == "?" ]]; then
        echo "broker count unknown"
    elif ((after - before >= expected)); then
        echo "broker +$((after - before)) messages for $expected: all there"
    else
        echo "broker +$((after - before)) messages for $expected: $((expected - (after - before))) MISSING"
    fi
}

# Microseconds since the epoch, into NOW_US (no subshell).
now_us() { NOW_US=${EPOCHREALTIME//[.,]/}; }
seconds_since() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) / 1e6 }'; }

# Starts wrk in the background against $1 for an hour (stopped with
# SIGINT, it prints its results), optional $2: pause as for drive; its pid
# in $STARTED, its output in $TMP/$3.log.
start_load() {
    local url=$1 pause=${2:-} log=$3
    wrk_command "$url" 3600 "$pause"
    start "$log" "${WRK_COMMAND[@]}"
}
# Stops the load of pid $1 (log $2) and leaves its RESULT line in $WRK_RESULT.
stop_load() {
    stop "$1" INT
    WRK_RESULT=$(grep '^RESULT ' "$TMP/$2.log") || die "wrk printed no result: $(tail -n 5 "$TMP/$2.log")"
}

# --- phases ----------------------------------------------------------------------

# Per sink and round: the live path's requests/s and 200s/s at full load.
LIVE_RPS=
LIVE_OK_PER_S=

# Measures bridge $1 at full load, or at about $2 requests/s, as run $3;
# leaves the answers by status in MEASURED_ANSWERS.
measure_bridge() {
    local name=$1 rate=${2:-} run=$3 broker=${4:-}
    local MEASURE_METRICS=${BRIDGE_METRICS[$name]}
    if [[ -n $rate ]]; then
        measure_at_rate "$run" "${BRIDGE_PID[$name]}" "${BRIDGE_URL[$name]}" "$broker" "$rate"
    else
        measure "$run" "${BRIDGE_PID[$name]}" "${BRIDGE_URL[$name]}" "$broker"
    fi
}
# Answers per second of status $1 (200 or 202) in the last measured run.
answers_per_s() {
    local column=1
    [[ $1 == 202 ]] && column=2
    awk -v a="$MEASURED_ANSWERS" -v us="$(field duration_us)" -v c="$column" \
        'BEGIN { split(a, n, " "); printf "%.0f", n[c] / (us / 1e6) }'
}
# Share (%) of the last measured run's webhooks answered 202.
share_202() {
    awk -v a="$MEASURED_ANSWERS" 'BEGIN { split(a, n, " "); t = n[1] + n[2] + n[3]
        printf "%.1f", (t > 0 ? 100 * n[2] / t : 0) }'
}

# Phase 1 (and the reference of 2 and 4): the bridge without the spool on
# broker A, with it on broker B ($SPOOL_BROKER).
phase_healthy() {
    local sink=$1 more=0 live="$sink live" spooled="$sink spool" name
    [[ $sink == kafka ]] && more=$KAFKA_WARMUP
    start_broker "$sink" "$sink-live"
    local live_broker=$BROKER_PID
    start_bridge "$live" "$sink" "" "$more"
    if ! wants healthy; then
        log "$sink: the live path's capacity, for the reference of down and outage"
        measure_bridge "$live" "" "$sink bridge" "$live_broker"
        LIVE_RPS=$(field rps)
        LIVE_OK_PER_S=$(answers_per_s 200)
        stop_bridge "$live"
        stop "$live_broker"
        rm -rf "${BROKER_STORE[$live_broker]}"
        return
    fi
    log "$sink, phase healthy: $(phase_command "$sink" healthy)"
    BROKER_URL=$SPOOL_BROKER_URL
    start_bridge "$spooled" "$sink" spool "$more"
    SPOOL_BROKER_WARM=1
    declare -A rps=() p99=() half_p99=() share=() half_share=()
    while read -r name; do
        local broker=$live_broker run="$sink bridge"
        [[ $name == "$spooled" ]] && broker=$SPOOL_BROKER run="$sink bridge --spool-dir"
        measure_bridge "$name" "" "$run" "$broker"
        rps[$name]=$(field rps)
        p99[$name]=$(awk -v us="$(field p99_us)" 'BEGIN { printf "%.2f", us / 1000 }')
        share[$name]=$(share_202)
        if [[ $name == "$live" ]]; then LIVE_OK_PER_S=$(answers_per_s 200); fi
    done < <(in_round_order "$live" "$spooled")
    LIVE_RPS=${rps[$live]}
    local half
    half=$(awk -v r="$LIVE_RPS" 'BEGIN { printf "%.1f", r / 2 }')
    while read -r name; do
        local broker=$live_broker run="$sink bridge"
        [[ $name == "$spooled" ]] && broker=$SPOOL_BROKER run="$sink bridge --spool-dir"
        measure_bridge "$name" "$half" "$run" "$broker"
        half_p99[$name]=$(awk -v us="$(field p99_us)" 'BEGIN { printf "%.2f", us / 1000 }')
        half_share[$name]=$(share_202)
    done < <(in_round_order "$live" "$spooled")
    stop_bridge "$live"
    stop_bridge "$spooled"
    stop "$live_broker"
    rm -rf "${BROKER_STORE[$live_broker]}"

    local p=healthy
    figure "$sink" $p "req/s without the spool" "$(printf '%.0f' "${rps[$live]}")" req/s
    figure "$sink" $p "req/s with the spool" "$(printf '%.0f' "${rps[$spooled]}")" req/s
    figure "$sink" $p "req/s with / without" "$(awk -v a="${rps[$spooled]}" -v b="${rps[$live]}" \
        'BEGIN { printf "%.2f", a / b }')" "" ">= 0.95"
    figure "$sink" $p "p99 without the spool" "${p99[$live]}" ms
    figure "$sink" $p "p99 with the spool" "${p99[$spooled]}" ms
    figure "$sink" $p "p99 with / without" "$(awk -v a="${p99[$spooled]}" -v b="${p99[$live]}" \
        'BEGIN { printf "%.2f", a / b }')" "" "<= 1.05"
    figure "$sink" $p "answered 202 with the spool" "${share[$spooled]}" %
    figure "$sink" $p "p99 at half load without the spool" "${half_p99[$live]}" ms "" \
        "$(printf '%.0f' "$half") req/s asked"
    figure "$sink" $p "p99 at half load with the spool" "${half_p99[$spooled]}" ms
    figure "$sink" $p "p99 at half load with / without" "$(awk -v a="${half_p99[$spooled]}" \
        -v b="${half_p99[$live]}" 'BEGIN { printf "%.2f", a / b }')" "" "<= 1.05"
    figure "$sink" $p "answered 202 at half load with the spool" "${half_share[$spooled]}" %
}

# Phase 2: 202s per second with the broker down.
phase_down() {
    local sink=$1 name="$sink down" p=down
    log "$sink, phase down: $(phase_command "$sink" down)"
    start_bridge "$name" "$sink" spool
    kill_broker "$SPOOL_BROKER"
    # Ready for this phase once a webhook is spooled: until the bridge sees
    # the broker gone, a publish can wait --publish-timeout (Kafka).
    wait_until "the bridge spooling (202)" "${BRIDGE_PID[$name]}" "$TMP/${name// /-}.log" \
        post_probe "${BRIDGE_URL[$name]}" 202
    measure_bridge "$name" "" "$sink bridge --spool-dir, broker down" ""
    local spooled_per_s errors
    spooled_per_s=$(answers_per_s 202)
    errors=$(($(field err_connect) + $(field err_read) + $(field err_write) + $(field err_status) + $(field err_timeout)))
    stop_bridge "$name"
    figure "$sink" $p "202/s, broker down" "$spooled_per_s" "/s" "" \
        "wrk: $(printf '%.0f' "$(field rps)") req/s, $errors errors"
    figure "$sink" $p "202/s / the live path's 200/s" "$(awk -v a="$spooled_per_s" -v b="$LIVE_OK_PER_S" \
        'BEGIN { printf "%.2f", a / b }')" "" ">= 0.5" "live: $LIVE_OK_PER_S 200/s"
}

# Phase 3: replay of a backlog of $BACKLOG events, no load.
phase_replay() {
    local sink=$1 name="$sink replay" p=replay log="$sink-replay"
    log "$sink, phase replay: $(phase_command "$sink" replay)"
    start_bridge "$name" "$sink" spool
    local metrics=${BRIDGE_METRICS[$name]} pid=${BRIDGE_PID[$name]} before=?
    # Webhooks spooled while the bridge connected are replayed first.
    if within "$DEADLINE" "$pid" "$TMP/$log.log" settled "$metrics"; then
        before=$(broker_messages "$SPOOL_BROKER")
    else
        log "$sink: the bridge's spool not empty after ${DEADLINE}s: no count of the broker's messages"
    fi
    kill_broker "$SPOOL_BROKER"
    wait_until "the bridge spooling (202)" "$pid" "$TMP/$log.log" post_probe "${BRIDGE_URL[$name]}" 202
    log "$sink: filling the spool with $BACKLOG events, broker down"
    start_load "${BRIDGE_URL[$name]}" "" "$log-fill"
    local load=$STARTED filled=1
    within 600 "$pid" "$TMP/$log.log" holds "$metrics" "$BACKLOG" || filled=
    stop_load "$load" "$log-fill"
    wait_until "no webhook in flight" "$pid" "$TMP/$log.log" idle "$metrics"
    local backlog
    backlog=$(spool_events "$metrics")
    [[ -n $filled ]] || log "$sink: only $backlog events spooled in 600 s; replaying those"

    restart "$SPOOL_BROKER"
    SPOOL_BROKER=$BROKER_PID
    wait_broker "$SPOOL_BROKER"
    now_us
    local ready=$NOW_US left at_ready
    at_ready=$(spool_events "$metrics")
    log "$sink: broker ready; $at_ready of $backlog events still spooled"
    # Two clocks: from the broker's readiness (what a user waits), and from
    # the first event replayed (the replay itself, without the time the
    # bridge's client takes to reconnect).
    within "$DEADLINE" "$pid" "$TMP/$log.log" fewer_than "$metrics" "$at_ready" || true
    now_us
    local moving=$NOW_US
    within "$DEADLINE" "$pid" "$TMP/$log.log" spool_empty "$metrics" || true
    now_us
    left=$(spool_events "$metrics")
    local took rate after reconnect replaying
    took=$(seconds_since "$ready" "$NOW_US")
    reconnect=$(seconds_since "$ready" "$moving")
    replaying=$(seconds_since "$moving" "$NOW_US")
    if [[ $left == 0 ]]; then
        rate=$(awk -v n="$at_ready" -v s="$replaying" 'BEGIN { printf "%.0f", (s > 0 ? n / s : n) }')
        after=$(broker_messages "$SPOOL_BROKER")
        # The spool can gain a few events after the last answer: webhooks
        # whose sender wrk had hung up on are still spooled.
        local expected=$((at_ready > backlog ? at_ready : backlog))
        figure "$sink" $p "replay of a backlog" "$rate" "events/s" ">= 20000" \
            "$at_ready events in ${replaying} s from the first one replayed, which came ${reconnect} s after the broker was ready (empty ${took} s after it: $(awk -v n="$at_ready" -v s="$took" 'BEGIN { printf "%.0f", (s > 0 ? n / s : n) }') events/s); $(delivered "$before" "$after" "$expected")"
    else
        rate=$(awk -v n="$((at_ready - left))" -v s="$took" 'BEGIN { printf "%.0f", n / s }')
        figure "$sink" $p "replay of a backlog" "$rate" "events/s" ">= 20000" \
            "$at_ready events, not empty after ${took} s: $left left"
    fi
    stop_bridge "$name"
}

# Phase 4: a broker outage under steady load at half the live capacity.
phase_outage() {
    local sink=$1 name="$sink outage" p=outage log="$sink-outage" more=0
    log "$sink, phase outage: $(phase_command "$sink" outage)"
    [[ $sink == kafka && -z $SPOOL_BROKER_WARM ]] && more=$KAFKA_WARMUP
    start_bridge "$name" "$sink" spool "$more"
    SPOOL_BROKER_WARM=1
    local metrics=${BRIDGE_METRICS[$name]} pid=${BRIDGE_PID[$name]} url=${BRIDGE_URL[$name]}
    local rate
    rate=$(awk -v r="$LIVE_RPS" 'BEGIN { printf "%.1f", r / 2 }')
    pause_for_rate "$url" "$rate"
    local before=? first
    if within "$DEADLINE" "$pid" "$TMP/$log.log" settled "$metrics"; then
        before=$(broker_messages "$SPOOL_BROKER")
    else
        log "$sink: the bridge's spool not empty after ${DEADLINE}s: no count of the broker's messages"
    fi
    first=$(bridge_sample "$metrics") || die "the bridge's metrics do not answer"

    local timeline=$OUT/outage-$sink-$ROUND.tsv
    printf 't_s\tanswered_200\tanswered_202\tspool_events\tin_flight\tevent\n' >"$timeline"
    start_load "$url" "$RATE_PAUSE" "$log-load"
    local load=$STARTED broker=$SPOOL_BROKER sample event
    now_us
    local t0=$NOW_US t killed= restarted= ready= load_end= stop_at settled=
    while :; do
        now_us
        t=$(((NOW_US - t0) / 1000))
        local tick_end=$((NOW_US + 100000))
        sample=$(bridge_sample "$metrics") || sample=
        event=
        if [[ -z $killed ]] && ((t >= OUTAGE_AT * 1000)); then
            kill_broker "$broker"
            killed=$t event=killed
        elif [[ -n $killed && -z $restarted ]] && ((t >= killed + OUTAGE * 1000)); then
            restart "$broker"
            broker=$BROKER_PID restarted=$t event=started
        elif [[ -n $restarted && -z $ready ]]; then
            if broker_ready "$broker"; then
                ready=$t event=ready
            elif ! kill -0 "$broker" 2>/dev/null; then
                die "the broker exited after its restart: $(tail -n 20 "$TMP/${BROKER_LOG[$broker]}.log")"
            elif ((t > restarted + 120000)); then
                die "the broker is not ready 120 s after its restart"
            fi
        fi
        if [[ -n $ready && -z $load_end ]]; then
            stop_at=$((OUTAGE_LOAD * 1000))
            ((ready + AFTER_RETURN * 1000 > stop_at)) && stop_at=$((ready + AFTER_RETURN * 1000))
            if ((t >= stop_at)); then
                stop_load "$load" "$log-load"
                load_end=$t event=${event:+$event,}load-stopped
            fi
        fi
        if [[ -n $sample ]]; then
            printf '%d.%03d\t%s\t%s\n' $((t / 1000)) $((t % 1000)) "${sample// /$'\t'}" "$event" >>"$timeline"
        fi
        if [[ -z $load_end ]] && ! kill -0 "$load" 2>/dev/null; then
            die "wrk stopped early: $(tail -n 5 "$TMP/$log-load.log")"
        fi
        kill -0 "$pid" 2>/dev/null || die "the bridge exited during the outage: $(tail -n 20 "$TMP/$log.log")"
        # Done once the load is over and the bridge has nothing left.
        if [[ -n $load_end && -n $sample && ${sample#* * } == "0 0" ]]; then
            settled=1
            break
        fi
        if [[ -n $ready ]] && ((t >= ready + DEADLINE * 1000)); then
            if [[ -z $load_end ]]; then
                stop_load "$load" "$log-load"
                load_end=$t
            fi
            break
        fi
        now_us
        if ((tick_end > NOW_US)); then
            sleep "$(awk -v us="$((tick_end - NOW_US))" 'BEGIN { printf "%.3f", us / 1e6 }')"
        fi
    done
    SPOOL_BROKER=$broker
    local got last
    got=$(printf '%.0f' "$(field rps)")
    # Every webhook answered and replayed: the broker's count.
    local after=? answered=0
    if [[ -n $settled ]]; then
        last=$(bridge_sample "$metrics") || last=$first
        after=$(broker_messages "$SPOOL_BROKER")
        answered=$(awk -v a="$first" -v b="$last" 'BEGIN { split(a, x, " "); split(b, y, " ")
            print y[1] - x[1] + y[2] - x[2] }')
    fi
    stop_bridge "$name"

    # (a) and (b) from the timeline, in seconds from the broker's readiness.
    local recovered
    recovered=$(awk -F'\t' -v ready="$ready" -v end="$load_end" '
        NR == 1 { next }
        { n++; t[n] = $1 * 1000; ok[n] = $2; spooled[n] = $3; events[n] = $4 }
        END {
            # (a): the last reading, load running, at which the 202 counter
            # had risen; then the first reading after it and after the
            # broker was ready at which the 200 counter had risen, the 200s
            # lasting at least 2 s to the end of the load.
            last = 1
            for (i = 2; i <= n; i++) if (t[i] <= end && spooled[i] > spooled[i - 1]) last = i
            a = ""
            for (i = last + 1; i <= n && t[i] <= end; i++)
                if (t[i] >= ready && ok[i] > ok[i - 1]) { a = i; break }
            if (a != "" && end - t[a] >= 2000) a = sprintf("%.1f", (t[a] - ready) / 1000)
            else a = ">" sprintf("%.1f", (end - ready) / 1000)
            # (b): the first reading of an empty spool that stays empty.
            b = ""
            for (i = n; i >= 1 && events[i] == 0; i--) b = i
            if (b == "") b = ">" sprintf("%.1f", (t[n] - ready) / 1000)
            else b = sprintf("%.1f", (t[b] > ready ? t[b] - ready : 0) / 1000)
            peak = 0
            for (i = 1; i <= n; i++) if (events[i] > peak) peak = events[i]
            print a, b, events[n], peak
        }' "$timeline")
    local a b left peak
    read -r a b left peak <<<"$recovered"
    local outage_s load_s
    outage_s=$(awk -v k="$killed" -v r="$ready" 'BEGIN { printf "%.1f", (r - k) / 1000 }')
    load_s=$(awk -v e="$load_end" 'BEGIN { printf "%.0f", e / 1000 }')
    figure "$sink" $p "load" "$got" "req/s" "" \
        "$(printf '%.0f' "$rate") asked, for ${load_s} s; broker killed at $((killed / 1000)) s, ready $outage_s s later; peak spool $peak events"
    if [[ $a == ">"* ]]; then
        figure "$sink" $p "(a) 200s again after the broker's return" "$a" s "<= 15" \
            "no lasting 200s (>= 2 s) before the load stopped"
    else
        figure "$sink" $p "(a) 200s again after the broker's return" "$a" s "<= 15"
    fi
    if [[ $b == ">"* ]]; then
        figure "$sink" $p "(b) spool empty after the broker's return" "$b" s "<= 15" \
            "not empty after ${b#>} s: $left left"
    else
        figure "$sink" $p "(b) spool empty after the broker's return" "$b" s "<= 15" \
            "$(delivered "$before" "$after" "$answered")"
    fi
}

# --- the run -------------------------------------------------------------------------

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED_AT=$SECONDS
log "load average before: $LOAD_BEFORE; phases: $PHASES; wrk -t$THREADS -c$CONNECTIONS, ${WARMUP}s warm-up, ${DURATION}s measured"
SPOOL_BROKER=
SPOOL_BROKER_URL=
SPOOL_BROKER_WARM=
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
    for sink in $SINKS; do
        # Broker B, for every bridge with the spool in this round.
        start_broker "$sink" "$sink-spool"
        SPOOL_BROKER=$BROKER_PID SPOOL_BROKER_URL=$BROKER_URL SPOOL_BROKER_WARM=
        if wants healthy || wants down || wants outage; then phase_healthy "$sink"; fi
        BROKER_URL=$SPOOL_BROKER_URL
        if wants outage; then phase_outage "$sink"; fi
        if wants replay; then phase_replay "$sink"; fi
        if wants down; then phase_down "$sink"; fi
        store=${BROKER_STORE[$SPOOL_BROKER]}
        stop "$SPOOL_BROKER"
        rm -rf "$store"
    done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report ----------------------------------------------------------------------------

{
    echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC') on $(machine_description); the bridge at revision ${BRIDGE_REVISION:-unknown} ($BRIDGE);"
    echo "load average before $LOAD_BEFORE, after $LOAD_AFTER; the run took $(((SECONDS - STARTED_AT) / 60)) min $(((SECONDS - STARTED_AT) % 60)) s."
    echo "wrk -t$THREADS -c$CONNECTIONS, ${WARMUP}s warm-up then ${DURATION}s per run; brokers: nats-server $("$NATS_SERVER" --version | sed 's/.*v//') -js (file store)${KAFKA_VERSION:+, Apache Kafka $KAFKA_VERSION (one KRaft node, JVM flags: $KAFKA_JVM_OPTS; settings: ${KAFKA_SETTINGS[*]}; topics of $KAFKA_PARTITIONS partitions, replication factor 1; each broker driven ${KAFKA_WARMUP}s more after it starts)}${BRIDGE_ARGS:+; bridge flags added: $BRIDGE_ARGS}."
    wants replay && echo "Replay: a backlog of $BACKLOG events, deadline ${DEADLINE}s."
    wants outage && echo "Outage: the broker killed ${OUTAGE_AT}s into a load of ${OUTAGE_LOAD}s (and at least ${AFTER_RETURN}s after its return), started ${OUTAGE}s later; deadline ${DEADLINE}s after its return."
    echo
    for sink in $SINKS; do
        echo "### $sink"
        echo
        awk -F'\t' -v sink="$sink" -v rounds="$ROUNDS" '
            function number(v) { return (v ~ /^>/) ? 1e12 + substr(v, 2) : v + 0 }
            # The median; of two middle values, their mean, or the larger
            # when one is a deadline passed (">X").
            function middle(list, n,    i, j, x, sorted) {
                for (i = 1; i <= n; i++) {
                    x = list[i]
                    for (j = i - 1; j >= 1 && number(sorted[j]) > number(x); j--) sorted[j + 1] = sorted[j]
                    sorted[j + 1] = x
                }
                if (n % 2) return sorted[(n + 1) / 2]
                x = sorted[n / 2]; i = sorted[n / 2 + 1]
                if (x ~ /^>/ || i ~ /^>/) return i
                return (x + i) / 2
            }
            function verdict(v, t,    p, more, x) {
                split(t, p, " "); more = (v ~ /^>/); x = (more ? substr(v, 2) : v) + 0
                if (p[1] == ">=") return (!more && x >= p[2] + 0) ? "met" : "NOT met"
                return (!more && x <= p[2] + 0) ? "met" : "NOT met"
            }
            function shown(v, unit) {
                if (v ~ /^>/) return v
                if (unit == "req/s" || unit == "/s" || unit == "events/s") return sprintf("%.0f", v)
                if (unit == "%" || unit == "s") return sprintf("%.1f", v)
                return sprintf("%.2f", v)
            }
            NR == 1 || $2 != sink { next }
            {
                key = $3 SUBSEP $4
                if (!(key in count)) { order[++figures] = key; phase[key] = $3; name[key] = $4; unit[key] = $6; target[key] = $7 }
                count[key]++
                values[key, count[key]] = $5
                each[key] = each[key] (count[key] > 1 ? ", " : "") $5
                if ($9 != "") notes[key] = notes[key] (notes[key] != "" ? "; " : "") (rounds > 1 ? "round " $1 ": " : "") $9
                command[$3] = $10
            }
            END {
                print "| phase | figure | value | target | verdict | rounds | notes |"
                print "| --- | --- | ---: | --- | --- | --- | --- |"
                # In the order of issue 25: healthy, down, replay, outage.
                split("healthy down replay outage", phases, " ")
                for (k = 1; k <= 4; k++) for (f = 1; f <= figures; f++) {
                    key = order[f]
                    if (phase[key] != phases[k]) continue
                    delete list
                    for (i = 1; i <= count[key]; i++) list[i] = values[key, i]
                    m = middle(list, count[key])
                    printf "| %s | %s | %s%s | %s | %s | %s | %s |\n", phase[key], name[key], shown(m, unit[key]),
                        (unit[key] != "" ? " " unit[key] : ""), target[key],
                        (target[key] != "" ? verdict(m, target[key]) : ""), each[key], notes[key]
                }
                print ""
                for (k = 1; k <= 4; k++) if (phases[k] in command) printf "- %s: `%s`\n", phases[k], command[phases[k]]
            }' "$FIGURES"
        echo
    done
} >"$OUT/results.md"
echo
cat "$OUT/results.md"
log "written to $OUT/results.md (every figure: $FIGURES; every wrk run: $RESULTS)"
