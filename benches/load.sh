#!/usr/bin/env bash
# Load benchmark of apizee-bridge, side by side with the least programs that
# could do its job and with the peer users would pick (Vector), in one run
# on one machine (issues 7 and 17).
#
#   bash benches/load.sh [--rounds N] [--duration S] [--warmup S]
#                        [--connections N] [--threads N] [--sinks "nats kafka"]
#                        [--kafka-warmup S]
#                        [--vector PATH] [--body-bytes N] [--no-half]
#                        [--profile] [--no-build] [--out DIR]
#
# Every option also reads an environment variable: BENCH_ROUNDS,
# BENCH_DURATION, BENCH_WARMUP, BENCH_CONNECTIONS, BENCH_THREADS, BENCH_SINKS,
# BENCH_VECTOR, BENCH_BODY_BYTES, BENCH_NO_HALF=1, BENCH_PROFILE=1,
# BENCH_OUT, BENCH_KAFKA_WARMUP. --body-bytes pads every webhook to about N bytes (a "padding"
# field); --no-half skips the half-load runs (for sweeps of full load). BENCH_BRIDGE_ARGS adds flags to
# the bridge only, for tuning experiments (BENCH_BRIDGE_ARGS='--kafka-option
# linger.ms=5'); the baselines keep the bridge's defaults, so say so next
# to such figures. BENCH_BRIDGE runs another bridge binary (a build to
# compare) in place of the one built. BENCH_CONTRACT_ARGS replaces the flags of the contract
# pipeline (default --headers): '--headers --no-message-id' for the header
# block without JetStream de-duplication, '--message-id-only' for the
# de-duplication without the header block (NATS only); the coalescing and
# window experiments of issue 17: '--headers --fast-batch' (NATS: JetStream
# fast batches, nats-server 2.14+) and '--headers --producers 4' (Kafka:
# idempotent producers sharded by key). BENCH_KAFKA_PARTITIONS (3, the
# bridge's default) sets the partitions of every Kafka topic, for every
# target.
#
# Kafka is Apache Kafka: the current release of .ci/tools/kafka/releases
# (4.4.0), its jars installed without root by .ci/tools/kafka.sh
# (KAFKA_RELEASE names another release; KAFKA_LIBS a folder of jars), one
# KRaft node per target run by .ci/tools/kafka/node.sh (broker and
# controller, Java 17). The JVM gets the flags of Kafka's own
# kafka-server-start.sh (KAFKA_JVM_OPTS replaces them), and the node Kafka's
# default thread counts (num.network.threads=3, num.io.threads=8,
# background.threads=10) in place of node.sh's test sizing;
# BENCH_KAFKA_SETTINGS adds KEY=VALUE broker settings. Topics are created
# by the bridge (--kafka-create-topics, replication factor 1) and by the
# pipelines; auto-creation is off. A fresh broker's JIT takes about 30 s of
# load to warm up: its CPU per webhook falls from several hundred µs to
# about 30 over that time, and a broker in production is warm. So each
# target on Kafka is first driven at full load for --kafka-warmup seconds
# (30) after it is ready, uncounted, on top of the usual warm-up.
#
# What it does:
#  1. builds the bridge and the baselines in release mode
#     (`cargo build --release --locked --bin apizee-bridge --examples`);
#  2. drives, with wrk and benches/load.lua (a mix of the envelopes in
#     tests/samples: 5 objects, 3 events, a fresh objectId per request,
#     `Content-Type: application/JSON`, keep-alive), one target at a time:
#       - the HTTP ceiling (examples/baseline_http.rs: read, parse, 200);
#       - per sink, side by side, each on its own fresh broker (nats-server
#         -js with its store in a temporary directory; a single-node Apache
#         Kafka with its log in a temporary directory) that has its stream
#         or topics before the target is probed ready, so no creation is
#         measured:
#           - the bridge;
#           - the contract pipeline, the reference (examples/baseline_<sink>.rs
#             --headers: the same server, plus the bridge's message headers
#             and Nats-Msg-Id, publish, and wait for the broker's ack): the
#             least program that does the whole contract;
#           - the minimal pipeline (the same without headers or
#             Nats-Msg-Id), what coalescing would have to beat;
#           - with --vector, Vector with benches/vector/<sink>.yaml, its
#             stream or topics made beforehand by the bridge itself;
#         then each at full load, one run right after the other, and the
#         bridge and the pipelines at half the bridge's measured rate for the
#         latency target;
#     every run right after a warm-up run of the same target that is not
#     counted, and after a sync: a target measured first in a round had
#     otherwise sat idle for minutes while the others warmed their
#     brokers, and ran while the kernel wrote their logs back (on Kafka the
#     bridge did 8,262, 9,547 and 12,328 requests/s in the rounds where it
#     came first, 11,774 and 11,932 where it came last, at 14caa87);
#  3. does all of step 2 --rounds times (5 by default), one round after the
#     other, with the sink's targets in the opposite order in even rounds:
#     on a shared 2-core machine the speed of the same program drifts by
#     10-40% over minutes, more than the differences being measured. Runs
#     compared in a ratio follow each other, and a drift during a round
#     favours the bridge in one round and the pipeline in the next;
#  4. prints, and writes to $OUT/results.md: per target, the median over the
#     rounds of requests/s, p50/p99/p99.9 latency, CPU seconds of the target
#     and of the broker during the measured run, and CPU µs per request of
#     the target and of its broker; the
#     errors of every round (non-2xx answers and socket errors); idle RSS
#     (after start-up and one request) and the highest peak RSS (VmHWM);
#     and the ratios (the median of each round's ratio, with every round's)
#     against the targets of issue 17: bridge / contract pipeline >= 0.95,
#     bridge / Vector >= 3, p99 at half load <= 1.1 x the contract
#     pipeline's at the same rate; and bridge / minimal pipeline, contract /
#     minimal pipeline, bridge / HTTP ceiling. Every round's rows are in
#     $OUT/results.tsv;
#  5. without --vector (or BENCH_VECTOR), everything but Vector's rows;
#  6. with --profile, builds with line tables (CARGO_PROFILE_RELEASE_DEBUG,
#     in target/bench-profile so the normal release build is untouched) and
#     adds, per sink in the last round, one more full-load run of the
#     bridge, of the contract pipeline and (with --vector) of Vector under
#     `perf record` with DWARF call graphs (change with
#     BENCH_PERF_FREQUENCY=499, BENCH_PERF_CALL_GRAPH=dwarf,16384). Reports:
#     $OUT/profile-{bridge,contract,vector}-<sink>.txt, with the CPU µs per
#     webhook of each thread of the target and of its broker (from /proc);
#     data for `perf report -i`: $OUT/perf-{bridge,contract,vector}-<sink>.data.
#     With BENCH_ASYNC_PROFILER=/path/to/libasyncProfiler.so (async-profiler,
#     e.g. from Maven Central's tools.profiler:async-profiler jar), the Kafka
#     broker's JVM is sampled during the same run (attached with jcmd
#     JVMTI.agent_load): its hottest Java frames go in the report, its
#     stacks in $OUT/broker-{bridge,contract,vector}-kafka.collapsed. The
#     table's figures come from the runs without perf.
#
# Load generator settings, for a 2-core machine where wrk, the broker and
# the target share the cores:
#  - wrk -t1: one wrk thread can use at most one core, so the target and
#    its broker always have the other; with -t2 wrk takes CPU from the
#    thing it measures. It also caps the HTTP ceiling: on 2 cores that
#    figure is as much wrk's as the server's (see the README).
#  - 32 connections: enough requests in flight for both brokers to batch
#    (JetStream acks are pipelined on one client connection; librdkafka
#    batches per partition) and for the runtime's two workers to stay busy,
#    far below --max-in-flight (1024), and in the range of concurrent
#    deliveries a webhook sender keeps. More connections mostly add
#    queueing latency on 2 cores.
#
# Every process it starts is killed by its pid on exit, ports are free
# loopback ports, and files go to a temporary directory.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
BENCH_NAME=load.sh
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

ROUNDS=${BENCH_ROUNDS:-5}
DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-3}
CONNECTIONS=${BENCH_CONNECTIONS:-32}
THREADS=${BENCH_THREADS:-1}
SINKS=${BENCH_SINKS:-nats kafka}
PROFILE=${BENCH_PROFILE:-0}
VECTOR=${BENCH_VECTOR:-}
BODY_BYTES=${BENCH_BODY_BYTES:-}
NO_HALF=${BENCH_NO_HALF:-0}
KAFKA_WARMUP=${BENCH_KAFKA_WARMUP:-30}
OUT=${BENCH_OUT:-$ROOT/target/bench}
BRIDGE_ARGS=${BENCH_BRIDGE_ARGS:-}
CONTRACT_ARGS=${BENCH_CONTRACT_ARGS:---headers}
KAFKA_PARTITIONS=${BENCH_KAFKA_PARTITIONS:-3}
BUILD=1

while (($#)); do
    case $1 in
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --kafka-warmup) KAFKA_WARMUP=$2; shift 2 ;;
        --connections) CONNECTIONS=$2; shift 2 ;;
        --threads) THREADS=$2; shift 2 ;;
        --sinks) SINKS=${2//,/ }; shift 2 ;;
        --profile) PROFILE=1; shift ;;
        --vector) VECTOR=$2; shift 2 ;;
        --body-bytes) BODY_BYTES=$2; shift 2 ;;
        --no-half) NO_HALF=1; shift ;;
        --no-build) BUILD=0; shift ;;
        --out) OUT=$2; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "load.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "load.sh: --rounds must be a positive integer" >&2; exit 2; }
[[ $KAFKA_WARMUP =~ ^[0-9]+$ ]] || { echo "load.sh: --kafka-warmup must be a whole number of seconds" >&2; exit 2; }
for sink in $SINKS; do
    case $sink in
        nats | kafka) ;;
        *) echo "load.sh: unknown sink $sink (nats, kafka)" >&2; exit 2 ;;
    esac
done

bench_tools "$SINKS"
command -v curl >/dev/null || die "curl not found"
if [[ -n $VECTOR ]]; then
    [[ -x $VECTOR ]] || die "--vector $VECTOR is not an executable (docs/performance.md, 'Building Vector')"
    VECTOR_VERSION=$("$VECTOR" --version | head -n 1)
fi
if ((PROFILE)); then
    PERF=$(find_tool perf) || die "perf not found: apt-get install linux-perf"
    PERF_FREQUENCY=${BENCH_PERF_FREQUENCY:-499}
    PERF_CALL_GRAPH=${BENCH_PERF_CALL_GRAPH:-dwarf,16384}
    ASYNC_PROFILER=${BENCH_ASYNC_PROFILER:-}
    if [[ -n $ASYNC_PROFILER ]]; then
        [[ -f $ASYNC_PROFILER ]] || die "BENCH_ASYNC_PROFILER=$ASYNC_PROFILER is not a file (libasyncProfiler.so)"
        JCMD=$(find_tool jcmd) || die "jcmd not found (a JDK: apt-get install openjdk-17-jdk-headless)"
    fi
fi

# --- build -------------------------------------------------------------------

if ((PROFILE)); then
    # Line tables give perf file:line for inlined code; a separate target
    # directory keeps the normal release build as it is.
    export CARGO_PROFILE_RELEASE_DEBUG=line-tables-only
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/bench-profile}
fi
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if ((BUILD)); then
    log "building (release): the bridge and the baselines"
    cargo build --release --locked --bin apizee-bridge --examples
fi
# BENCH_BRIDGE: another bridge binary, for comparing two builds in turn
# against the same pipelines.
BRIDGE=${BENCH_BRIDGE:-$TARGET_DIR/release/apizee-bridge}
EXAMPLES=$TARGET_DIR/release/examples
for binary in "$BRIDGE" "$EXAMPLES"/baseline_{http,nats,kafka}; do
    [[ -x $binary ]] || die "$binary is missing (run without --no-build)"
done

# --- processes, brokers, measuring: benches/lib.sh ----------------------------

mkdir -p "$OUT"
bench_tmpdir apizee-bench
RESULTS=$OUT/results.tsv
bench_measure_init "$RESULTS"

# --- profiling -----------------------------------------------------------------

# CPU seconds of each thread of process $1 so far, summed by thread name
# with its digits replaced by N (the request handlers of a broker, the
# workers of a runtime): "name<TAB>seconds" lines.
thread_cpu() {
    awk -v tck="$CLK_TCK" '{
        # "tid (comm) state ...": comm may hold spaces and parentheses.
        line = $0
        close_at = 0
        for (i = length(line) - 1; i > 0; i--) if (substr(line, i, 2) == ") ") { close_at = i; break }
        name = substr(line, index(line, "(") + 1, close_at - index(line, "(") - 1)
        gsub(/[0-9]+/, "N", name)
        split(substr(line, close_at + 2), f, " ")
        cpu[name] += (f[12] + f[13]) / tck
    }
    END { for (n in cpu) printf "%s\t%.3f\n", n, cpu[n] }' /proc/"$1"/task/*/stat 2>/dev/null
}

# Prints, from thread_cpu snapshots $1 (before) and $2 (after) and $3
# requests, each thread name's CPU µs per request, the highest first, and
# the total.
thread_cpu_report() {
    awk -F'\t' -v requests="$3" '
        FNR == NR { before[$1] = $2; next }
        { d = $2 - before[$1]; if (d > 0) { used[$1] = d; total += d } }
        END {
            for (n in used) printf "%10.1f µs  %5.1f%%  %s\n", used[n] * 1e6 / requests, 100 * used[n] / total, n
            printf "%10.1f µs  100.0%%  (all threads)\n", total * 1e6 / requests
        }' "$1" "$2" | sort -rn
}

# Drives the target $2 (pid) at $3 (url), with broker pid $4, at full load
# for one more run, under perf, and writes $OUT/profile-$1.txt.
profile_run() {
    local name=$1 pid=$2 url=$3 broker=$4
    local data=$OUT/perf-$name.data jvm=""
    [[ -n $ASYNC_PROFILER && $name == *-kafka ]] && jvm=1
    # DWARF unwinding: Rust code has no frame pointers, so `-g` alone
    # would cut most stacks short and the callers of malloc would be lost.
    "$PERF" record -F "$PERF_FREQUENCY" --call-graph "$PERF_CALL_GRAPH" -o "$data" -p "$pid" \
        >"$TMP/perf-$name.log" 2>&1 &
    local perf_pid=$!
    PIDS+=("$perf_pid")
    # perf is attached once its output file exists.
    wait_until "perf record" "$perf_pid" "$TMP/perf-$name.log" test -s "$data"
    # The agent's options are quoted for jcmd, whose parser would split
    # them at '=' and ','; jcmd exits 0 even when the agent fails.
    if [[ -n $jvm ]]; then
        "$JCMD" "$broker" JVMTI.agent_load "$ASYNC_PROFILER" \
            "\"start,event=cpu,interval=$((1000000000 / PERF_FREQUENCY)),threads\"" >"$TMP/ap-$name.log" 2>&1
        grep -q 'return code: 0' "$TMP/ap-$name.log" ||
            die "async-profiler did not start in the broker: $(cat "$TMP/ap-$name.log")"
    fi
    thread_cpu "$pid" >"$TMP/threads-$name.0"
    thread_cpu "$broker" >"$TMP/broker-threads-$name.0"
    drive "$url" "$DURATION"
    thread_cpu "$pid" >"$TMP/threads-$name.1"
    thread_cpu "$broker" >"$TMP/broker-threads-$name.1"
    kill -INT "$perf_pid" 2>/dev/null || true
    wait "$perf_pid" 2>/dev/null || true
    stop "$perf_pid"
    if [[ -n $jvm ]]; then
        "$JCMD" "$broker" JVMTI.agent_load "$ASYNC_PROFILER" \
            "\"stop,collapsed,file=$OUT/broker-$name.collapsed\"" >>"$TMP/ap-$name.log" 2>&1
        [[ -s $OUT/broker-$name.collapsed ]] || log "async-profiler wrote no stacks: $(cat "$TMP/ap-$name.log")"
    fi
    local requests
    requests=$(field requests)
    # Reports are cut with sed, not head, which would kill perf with SIGPIPE.
    (
        set +e +o pipefail
        echo "# perf record -F $PERF_FREQUENCY --call-graph $PERF_CALL_GRAPH -p <$name>, ${DURATION}s at full load"
        echo "# $WRK_RESULT"
        echo
        echo "## Self time by symbol (>= 0.5%)"
        "$PERF" report -i "$data" --no-children --sort dso,symbol --percent-limit 0.5 --stdio -g none 2>/dev/null |
            grep -v -e '^#' -e '^$' | cut -c1-180 | sed -e 's/ *$//' -e '60q'
        echo
        echo "## Self time by thread"
        "$PERF" report -i "$data" --no-children --sort comm --stdio -g none 2>/dev/null |
            grep -v -e '^#' -e '^$' | sed -e 's/ *$//' -e '20q'
        echo
        echo "## Time including callees, by function (>= 1%; inlined frames left out)"
        "$PERF" report -i "$data" --children --sort symbol --percent-limit 1 --stdio -g none 2>/dev/null |
            grep -v -e '^#' -e '^$' -e '(inlined)' | cut -c1-180 | sed -e 's/ *$//' -e '120q'
        echo
        echo "## CPU per webhook by thread, from /proc ($requests requests)"
        thread_cpu_report "$TMP/threads-$name.0" "$TMP/threads-$name.1" "$requests"
        echo
        echo "## The broker's CPU per webhook by thread, from /proc"
        thread_cpu_report "$TMP/broker-threads-$name.0" "$TMP/broker-threads-$name.1" "$requests"
        if [[ -s $OUT/broker-$name.collapsed ]]; then
            echo
            echo "## The broker's JVM, async-profiler: samples by thread (digits as N)"
            awk '{ n = $NF; t = $0; sub(/;.*/, "", t); sub(/ tid=[0-9]+\]/, "]", t); gsub(/[0-9]+/, "N", t)
                    by[t] += n; total += n }
                END { for (t in by) if (by[t] >= total / 200) printf "%6.2f%%  %s\n", 100 * by[t] / total, t }' \
                "$OUT/broker-$name.collapsed" | sort -rn | sed '30q'
            echo
            echo "## The broker's JVM, async-profiler: self time by frame (>= 0.5%)"
            awk '{ n = $NF; $NF = ""; sub(/ $/, ""); k = split($0, f, ";"); self[f[k]] += n; total += n }
                END { for (s in self) if (self[s] >= total / 200) printf "%6.2f%%  %s\n", 100 * self[s] / total, s }' \
                "$OUT/broker-$name.collapsed" | sort -rn | sed -e 's/ *$//' -e '60q' | cut -c1-180
            echo
            echo "## The broker's JVM, async-profiler: time including callees, by frame (>= 2%)"
            awk '{ n = $NF; $NF = ""; sub(/ $/, ""); k = split($0, f, ";"); delete seen
                    for (i = 1; i <= k; i++) if (!(f[i] in seen)) { seen[f[i]] = 1; incl[f[i]] += n }
                    total += n }
                END { for (s in incl) if (incl[s] >= total / 50) printf "%6.2f%%  %s\n", 100 * incl[s] / total, s }' \
                "$OUT/broker-$name.collapsed" | sort -rn | sed -e 's/ *$//' -e '80q' | cut -c1-180
        fi
    ) >"$OUT/profile-$name.txt"
    log "profile of $name written to $OUT/profile-$name.txt"
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "load average before: $LOAD_BEFORE; wrk -t$THREADS -c$CONNECTIONS, ${WARMUP}s warm-up (Kafka: ${KAFKA_WARMUP}s more at start), ${DURATION}s measured"

# The targets of a sink, each on its own fresh broker, by name ("nats
# bridge"): pid, URL, and broker pid.
declare -A TARGET_PID=() TARGET_URL=() TARGET_BROKER=()

# Starts target $1 for sink $2, of kind $3 (bridge or pipeline; further
# arguments go to the pipeline: --headers), on a fresh broker, and warms it
# up.
start_target() {
    local name=$1 sink=$2 kind=$3 log=${1//[^a-z]/-} port metrics_port url
    shift 3
    # A JVM broker still warming up, on 2 busy cores, can take more than a
    # minute to create topics and acknowledge the first webhook.
    local WAIT_SECONDS=$WAIT_SECONDS
    [[ $sink == kafka ]] && WAIT_SECONDS=120
    start_broker "$sink" "$log"
    port=$(free_port)
    url=http://127.0.0.1:$port/webhooks
    case $kind in
        bridge)
            metrics_port=$(free_port)
            local args=(--listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$metrics_port")
            bridge_sink_args "$sink"
            # Word-split on purpose: extra flags for experiments.
            # shellcheck disable=SC2206
            args+=($BRIDGE_ARGS)
            start "$log" "$BRIDGE" "${args[@]}"
            wait_until "the bridge (/readyz)" "$STARTED" "$TMP/$log.log" \
                http_ok "http://127.0.0.1:$port/readyz"
            ;;
        pipeline)
            case $sink in
                nats) start "$log" "$EXAMPLES/baseline_nats" --listen "127.0.0.1:$port" \
                    --nats-url "$BROKER_URL" --stream BENCH "$@" ;;
                kafka) start "$log" "$EXAMPLES/baseline_kafka" --listen "127.0.0.1:$port" \
                    --brokers "$BROKER_URL" --partitions "$KAFKA_PARTITIONS" "$@" ;;
            esac
            ;;
        vector)
            provision "$sink" "$log"
            mkdir -p "$TMP/$log-data"
            # The shipped file with this run's addresses: Vector 0.58 reads
            # no environment variables in its configuration by default.
            sed -e "s|/var/lib/vector|$TMP/$log-data|" -e "s|0.0.0.0:8080|127.0.0.1:$port|" \
                -e "s|nats://127.0.0.1:4222|$BROKER_URL|" -e "s|127.0.0.1:9092|$BROKER_URL|" \
                "$ROOT/benches/vector/$sink.yaml" >"$TMP/$log.yaml"
            start "$log" "$VECTOR" --config "$TMP/$log.yaml"
            ;;
    esac
    TARGET_PID[$name]=$STARTED
    TARGET_URL[$name]=$url
    TARGET_BROKER[$name]=$BROKER_PID
    local more=0
    [[ $sink == kafka ]] && more=$KAFKA_WARMUP
    ready_and_warm "$log" "$STARTED" "$url" "$more"
}

# Has the bridge make the stream or the topics on the current broker, as
# it would in production, for a target that expects them (Vector): it
# serves until one webhook is published, then stops.
provision() {
    local sink=$1 log=$2-provision port metrics_port
    port=$(free_port)
    metrics_port=$(free_port)
    local args=(--listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$metrics_port")
    bridge_sink_args "$sink"
    start "$log" "$BRIDGE" "${args[@]}"
    wait_until "the bridge making the stream or topics" "$STARTED" "$TMP/$log.log" \
        post_ok "http://127.0.0.1:$port/webhooks"
    stop "$STARTED"
}

stop_target() {
    local broker=${TARGET_BROKER[$1]}
    stop "${TARGET_PID[$1]}"
    stop "$broker"
    [[ -n ${BROKER_STORE[$broker]:-} ]] && rm -rf "${BROKER_STORE[$broker]}"
    return 0
}

# Measures target $1 at full load, or with $2 at about that many requests/s.
measure_target() {
    local name=$1 pid=${TARGET_PID[$1]} url=${TARGET_URL[$1]} broker=${TARGET_BROKER[$1]}
    if (($# > 1)); then
        measure_at_rate "$name" "$pid" "$url" "$broker" "$2"
    else
        measure "$name" "$pid" "$url" "$broker"
    fi
}

for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
    # HTTP ceiling: no broker, shared by both sinks.
    port=$(free_port)
    start baseline_http "$EXAMPLES/baseline_http" --listen "127.0.0.1:$port"
    pid=$STARTED
    ready_and_warm baseline_http "$pid" "http://127.0.0.1:$port/webhooks"
    measure "http ceiling" "$pid" "http://127.0.0.1:$port/webhooks" ""
    stop "$pid"

    for sink in $SINKS; do
        # Side by side, each on its own broker (an idle one uses no CPU), in
        # the round's order: see steps 2 and 3 at the top.
        halved=("$sink bridge" "$sink contract pipeline" "$sink minimal pipeline")
        targets=("${halved[@]}")
        [[ -n $VECTOR ]] && targets+=("$sink vector")
        start_target "$sink bridge" "$sink" bridge
        # Word-split on purpose, as BRIDGE_ARGS.
        # shellcheck disable=SC2086
        start_target "$sink contract pipeline" "$sink" pipeline $CONTRACT_ARGS
        start_target "$sink minimal pipeline" "$sink" pipeline
        [[ -n $VECTOR ]] && start_target "$sink vector" "$sink" vector
        while read -r name; do
            measure_target "$name"
        done < <(in_round_order "${targets[@]}")
        # At half the bridge's rate: the latency target, and how much of
        # that latency the pipelines have too. Not Vector: it cannot reach
        # that rate.
        half=$(awk -v r="$(rps_of "$sink bridge")" 'BEGIN { printf "%.1f", r / 2 }')
        printf '%s\t%s\t%s\n' "$ROUND" "$sink" "$half" >>"$TMP/half-targets"
        if ! ((NO_HALF)); then
            while read -r name; do
                measure_target "$name" "$half"
            done < <(in_round_order "${halved[@]}")
        fi
        if ((PROFILE && ROUND == ROUNDS)); then
            for name in bridge "contract pipeline" ${VECTOR:+vector}; do
                profile_run "${name%% *}-$sink" "${TARGET_PID[$sink $name]}" "${TARGET_URL[$sink $name]}" \
                    "${TARGET_BROKER[$sink $name]}"
            done
        fi
        for name in "${targets[@]}"; do stop_target "$name"; done
    done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report --------------------------------------------------------------------


revision=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$ROOT" status --porcelain 2>/dev/null) ]]; then revision+=" + uncommitted changes"; fi
{
    echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC') on $(machine_description);"
    echo "revision $revision; load average before $LOAD_BEFORE, after $LOAD_AFTER."
    echo "wrk -t$THREADS -c$CONNECTIONS, ${WARMUP}s warm-up then ${DURATION}s per run${KAFKA_VERSION:+ (each Kafka target driven ${KAFKA_WARMUP}s more after it starts)}${BODY_BYTES:+, bodies padded to about $BODY_BYTES bytes}; brokers: nats-server $("$NATS_SERVER" --version | sed 's/.*v//') -js (file store), ${KAFKA_VERSION:+Apache Kafka $KAFKA_VERSION (one KRaft node, JVM flags: $KAFKA_JVM_OPTS; settings: ${KAFKA_SETTINGS[*]}; topics of $KAFKA_PARTITIONS partitions, replication factor 1)}${VECTOR:+; ${VECTOR_VERSION}}; contract pipeline flags: $CONTRACT_ARGS${BRIDGE_ARGS:+; bridge flags added: $BRIDGE_ARGS}."
    echo
    echo "Medians over $ROUNDS round(s); errors are the sum over the rounds; peak RSS is the highest."
    echo
    echo "| target | req/s | p50 ms | p99 ms | p99.9 ms | errors | CPU s | CPU µs/req | broker CPU s | broker µs/req | idle RSS MiB | peak RSS MiB | broker peak RSS MiB |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    awk -F'\t' "$MEDIAN_AWK"'
        NR > 1 {
            if (!($2 in rows)) { order[++targets] = $2 }
            n = ++rows[$2]
            for (c = 3; c <= 13; c++) { value[$2, c, n] = $c }
            errors[$2] += $7
            if ($12 > peak[$2]) { peak[$2] = $12 }
            if ($14 != "-" && $14 > bpeak[$2]) { bpeak[$2] = $14 }
        }
        END {
            for (t = 1; t <= targets; t++) {
                name = order[t]
                printf "| %s | %.0f | %.2f | %.2f | %.2f | %d | %.2f | %.1f | %s | %s | %.1f | %.1f | %s |\n",
                    name, column(name, 3), column(name, 4), column(name, 5), column(name, 6),
                    errors[name], column(name, 8), column(name, 9),
                    (value[name, 10, 1] == "-" ? "-" : sprintf("%.2f", column(name, 10))),
                    (value[name, 13, 1] == "-" ? "-" : sprintf("%.1f", column(name, 13))),
                    column(name, 11), peak[name],
                    (name in bpeak ? sprintf("%.1f", bpeak[name]) : "-")
            }
        }
        function column(name, c,    i, list) {
            for (i = 1; i <= rows[name]; i++) { list[i] = value[name, c, i] }
            return median(list, rows[name])
        }' "$RESULTS"
    echo
    for sink in $SINKS; do
        awk -F'\t' -v sink="$sink" -v rounds="$ROUNDS" "$MEDIAN_AWK"'
            FNR == 1 { file++ }
            # The half rates asked for, by round.
            file == 1 && $2 == sink { asked[$1] = $3; next }
            file == 1 || FNR == 1 { next }
            $2 == "http ceiling" { ceiling[$1] = $3 }
            $2 == sink " bridge" { bridge[$1] = $3; idle[$1] = $11; errors += $7; if ($12 > peak) peak = $12 }
            $2 == sink " bridge @ half" { hp99[$1] = $5; hrps[$1] = $3; errors += $7; if ($12 > peak) peak = $12 }
            $2 == sink " contract pipeline" { contract[$1] = $3 }
            $2 == sink " contract pipeline @ half" { cp99[$1] = $5 }
            $2 == sink " minimal pipeline" { minimal[$1] = $3 }
            $2 == sink " minimal pipeline @ half" { mp99[$1] = $5 }
            $2 == sink " vector" { vector[$1] = $3; verrors += $7 }
            function verdict(ok) { return ok ? "met" : "NOT met" }
            function of(array,    r, list) {
                for (r = 1; r <= rounds; r++) { list[r] = array[r] }
                return median(list, rounds)
            }
            # The median of the rounds'"'"' a[r] / b[r], and every round'"'"'s.
            function ratio(a, b,    r, list, each) {
                each = ""
                for (r = 1; r <= rounds; r++) {
                    list[r] = (b[r] > 0 ? a[r] / b[r] : 0)
                    each = each (r > 1 ? ", " : "") sprintf("%.2f", list[r])
                }
                EACH = each
                return median(list, rounds)
            }
            END {
                r = ratio(bridge, contract)
                printf "- %s: bridge / contract pipeline = %.2f (target >= 0.95: %s; rounds: %s)\n",
                    sink, r, verdict(r >= 0.95), EACH
                if (length(vector) > 0) {
                    r = ratio(bridge, vector)
                    printf "  bridge / Vector = %.2f (target >= 3: %s; rounds: %s); Vector errors %d\n",
                        r, verdict(r >= 3), EACH, verrors
                }
                r = ratio(bridge, minimal)
                printf "  bridge / minimal pipeline = %.2f (>= 1.0 would need coalescing; rounds: %s)\n", r, EACH
                r = ratio(contract, minimal)
                printf "  contract / minimal pipeline = %.2f (what the contract costs; rounds: %s)\n", r, EACH
                printf "  bridge / HTTP ceiling = %.2f\n", ratio(bridge, ceiling)
                if (length(hp99) == 0) {
                    print "  p99 at half load: not measured (--no-half)"
                } else {
                    p = of(hp99); c = of(cp99); q = ratio(hp99, cp99)
                    printf "  p99 at half load (%.0f req/s asked, %.0f got) = %.2f ms; contract pipeline at that rate %.2f ms, minimal %.2f ms; bridge / contract = %.2f (target <= 1.1: %s; rounds: %s)\n",
                        of(asked), of(hrps), p, c, of(mp99), q, verdict(q <= 1.1), EACH
                }
                printf "  errors %d (target 0: %s)\n", errors, verdict(errors == 0)
                i = of(idle)
                printf "  idle RSS %.1f MiB (target < 20: %s); peak RSS %.1f MiB (target < 64: %s)\n",
                    i, verdict(i < 20), peak, verdict(peak < 64)
            }' "$TMP/half-targets" "$RESULTS"
    done
} >"$OUT/results.md"
echo
cat "$OUT/results.md"
log "written to $OUT/results.md (raw: $RESULTS)"
