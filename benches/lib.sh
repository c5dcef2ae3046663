# Helpers shared by the benchmark scripts (load.sh, spool.sh, sweep.sh,
# inflight-memory.sh, spool-memory.sh): sourced, never run.
#
# A script sets BENCH_NAME (its name, for log lines) before sourcing it,
# and calls bench_tmpdir once before starting processes. Everything started
# with `start` is killed by its pid when the script exits, and the temporary
# directory is removed (kept, with every process's log, when BENCH_KEEP is
# set: its path is logged).
#
# The brokers and the load (load.sh, spool.sh) read the script's settings
# from these variables: ROOT (the repository), SINKS (bench_tools), TMP
# (bench_tmpdir), KAFKA_PARTITIONS (bridge_sink_args), and for wrk WRK
# (bench_tools), THREADS, CONNECTIONS, WARMUP, DURATION, BODY_BYTES (empty:
# the samples as they are), ROUND and ROUNDS (log lines and result rows).

log() { printf '[%s %(%H:%M:%S)T] %s\n' "${BENCH_NAME:-bench}" -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The --help text: the script's leading comment.
usage() { sed -n '2,/^set -euo/p' "$ROOT/benches/$BENCH_NAME" | sed '$d; s/^# \{0,1\}//'; }

# Prints the path of executable $1 from PATH or the usual places outside it
# (root's sbin for Debian's servers, cargo's bin).
find_tool() {
    local name=$1 dir
    for dir in ${PATH//:/ } /usr/sbin /usr/local/bin "$HOME/.cargo/bin"; do
        [[ -x $dir/$name ]] && { echo "$dir/$name"; return; }
    done
    return 1
}

# --- processes -----------------------------------------------------------------

PIDS=()
TMP=
# Makes $TMP (named after $1) and the exit trap that kills every started
# process (resuming it first, in case it was frozen with SIGSTOP) and
# removes $TMP.
bench_tmpdir() {
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}
bench_cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -CONT "$pid" 2>/dev/null || true
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do reap "$pid"; done
    [[ -n $TMP ]] || return 0
    if [[ -n ${BENCH_KEEP:-} ]]; then
        log "kept $TMP (BENCH_KEEP): the logs of every process"
    else
        rm -rf "$TMP"
    fi
}

# Waits until child $1, already sent SIGTERM, has exited; SIGKILL after
# STOP_SECONDS (20): a Kafka broker's shutdown hook can wait minutes for a
# controller.
STOP_SECONDS=20
reap() {
    local pid=$1 deadline=$((SECONDS + STOP_SECONDS)) state
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
        # An exited child stays a zombie (state Z) until waited for.
        state=$(awk '{ sub(/.*\) /, ""); print $1 }' "/proc/$pid/stat" 2>/dev/null) || break
        [[ $state == Z ]] && break
        sleep 0.1
    done
    if ((SECONDS >= deadline)); then
        log "process $pid still running ${STOP_SECONDS}s after SIGTERM: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# Starts "$@" in the background with its output in $TMP/$name.log; the pid
# is left in $STARTED.
STARTED=
start() {
    local name=$1
    shift
    "$@" >"$TMP/$name.log" 2>&1 &
    STARTED=$!
    PIDS+=("$STARTED")
}

# Stops child $1 with SIGTERM (or signal $2: INT, KILL), waits until it has
# exited (reap), and forgets it.
stop() {
    local pid=$1 kept=() p
    kill -"${2:-TERM}" "$pid" 2>/dev/null || true
    reap "$pid"
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || kept+=("$p"); done
    PIDS=("${kept[@]}")
}

# A loopback port nobody uses and this run has not handed out yet.
USED_PORTS=" "
free_port() {
    # Below the kernel's ephemeral range: a port in it can be taken by any
    # outgoing connection (wrk's, a client's to a broker) between this check
    # and the target's bind, which once stopped a 5-round run with Vector's
    # "Address already in use".
    local port low=10000 high
    read -r high _ </proc/sys/net/ipv4/ip_local_port_range
    while :; do
        port=$((low + RANDOM % (high - low)))
        [[ $USED_PORTS == *" $port "* ]] && continue
        if ! ss -Htan "( sport = :$port )" 2>/dev/null | grep -q .; then
            USED_PORTS+="$port "
            echo "$port"
            return
        fi
    done
}

# Polls "$@" every 50 ms until it succeeds; gives up after WAIT_SECONDS (60),
# or at once when process $2 has exited (its log, $3, is printed). $2 and
# $3 may be empty for a wait that no one process stands behind.
WAIT_SECONDS=60
wait_until() {
    local what=$1 pid=$2 log=$3
    shift 3
    local deadline=$((SECONDS + WAIT_SECONDS))
    until "$@" >/dev/null 2>&1; do
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            [[ -n $log ]] && { tail -n 30 "$log" >&2 || true; }
            die "$what exited before it was ready"
        fi
        if ((SECONDS >= deadline)); then
            [[ -n $log ]] && { tail -n 30 "$log" >&2 || true; }
            die "timed out waiting for $what"
        fi
        sleep 0.05
    done
}

# --- probes --------------------------------------------------------------------

tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
http_ok() { curl -sf -o /dev/null --max-time 2 "$1"; }

# The value of metric $2 (its whole name with labels, as exposed) at the
# Prometheus endpoint $1.
metric() {
    curl -sf --max-time 5 "$1" | awk -v m="$2" '$1 == m { print $2 }'
}

# VmRSS or VmHWM ($2) of process $1, in MiB.
memory_mib() {
    awk -v field="$2:" '$1 == field { printf "%.1f", $2 / 1024 }' "/proc/$1/status"
}

# --- statistics ----------------------------------------------------------------

# "2 cores (CPU model), 7.8 GiB": the machine, for a report.
machine_description() {
    local cpu_model mem_gib
    cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
    mem_gib=$(awk '$1 == "MemTotal:" { printf "%.1f", $2 / 1048576 }' /proc/meminfo)
    echo "$(nproc) cores ($cpu_model), ${mem_gib} GiB"
}

# median(list, n): the middle of n numbers (the mean of the two middle ones
# when n is even). Plain awk: Debian's default awk (mawk) has no asort.
# Prepend to an awk program: awk "$MEDIAN_AWK"'...'.
MEDIAN_AWK='
function median(list, n,    i, j, x, sorted) {
    for (i = 1; i <= n; i++) {
        x = list[i] + 0
        for (j = i - 1; j >= 1 && sorted[j] > x; j--) { sorted[j + 1] = sorted[j] }
        sorted[j + 1] = x
    }
    return n % 2 ? sorted[(n + 1) / 2] : (sorted[n / 2] + sorted[n / 2 + 1]) / 2
}
'

# --- tools ---------------------------------------------------------------------

# Finds wrk, nats-server and, when the sinks $1 include kafka, Apache
# Kafka's jars, and sets WRK, NATS_SERVER, KAFKA_LIBS, KAFKA_VERSION,
# KAFKA_JVM_OPTS and KAFKA_SETTINGS for start_broker.
bench_tools() {
    local sinks=$1
    WRK=$(find_tool wrk) || die "wrk not found: apt-get install wrk"
    # The pinned nats-server the tests run (2.15), installed without root under
    # target/tools/ by the same script the tests name; NATS_SERVER overrides it.
    NATS_SERVER=${NATS_SERVER:-$(bash "$ROOT/.ci/tools/nats-server.sh")} ||
        die "cannot install nats-server: bash .ci/tools/nats-server.sh (or set NATS_SERVER)"
    [[ -x $NATS_SERVER ]] || die "nats-server not found at $NATS_SERVER (bash .ci/tools/nats-server.sh installs it)"
    if [[ " $sinks " == *" kafka "* ]]; then
        # The jars of the pinned release, installed without root under
        # target/tools/ by the same script the tests use.
        KAFKA_LIBS=${KAFKA_LIBS:-$(bash "$ROOT/.ci/tools/kafka.sh" "${KAFKA_RELEASE:-current}")} ||
            die "cannot install Apache Kafka: bash .ci/tools/kafka.sh current (or set KAFKA_LIBS)"
        KAFKA_JAR=$(ls "$KAFKA_LIBS"/kafka_2.13-*.jar 2>/dev/null | head -n 1)
        [[ -n $KAFKA_JAR ]] || die "no kafka_2.13 jar in $KAFKA_LIBS (bash .ci/tools/kafka.sh current installs it)"
        KAFKA_VERSION=${KAFKA_JAR##*/kafka_2.13-}
        KAFKA_VERSION=${KAFKA_VERSION%.jar}
        # As kafka-server-start.sh and kafka-run-class.sh run the broker.
        export KAFKA_LIBS
        export KAFKA_JVM_OPTS=${KAFKA_JVM_OPTS:--Xmx1G -Xms1G -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true}
        # Kafka's defaults, which node.sh lowers for tests; then the caller's.
        # shellcheck disable=SC2206
        KAFKA_SETTINGS=(num.network.threads=3 num.io.threads=8 background.threads=10 ${BENCH_KAFKA_SETTINGS:-})
    fi
}

# One real webhook posted to $1, answered $2 (within 10 s); optional $3:
# the file of its body (a ticket, tests/samples/spec-ticket.json).
post_answered() {
    [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 10 \
        -H 'Content-Type: application/JSON' \
        --data-binary @"${3:-$ROOT/tests/samples/spec-ticket.json}" "$1") == "$2" ]]
}
# One real webhook, answered 200: the whole pipeline works.
post_ok() { post_answered "$1" 200; }

CLK_TCK=$(getconf CLK_TCK)
# CPU seconds (user + system, all threads) a process has used so far.
cpu_seconds() {
    # Fields after "pid (comm) ": state is 1, utime 12, stime 13.
    local stat
    stat=$(<"/proc/$1/stat")
    awk -v tck="$CLK_TCK" '{ printf "%.3f", ($12 + $13) / tck }' <<<"${stat##*) }"
}

# --- brokers -------------------------------------------------------------------

# Starts a fresh broker for sink $1, its log named after $2, and waits until
# it is ready; leaves its pid in $BROKER_PID and its address in $BROKER_URL.
BROKER_PID=
BROKER_URL=
# A broker's files, by pid, removed when it stops: large bodies fill gigabytes.
declare -A BROKER_STORE=()
# Its sink, port, second port (NATS: monitoring; Kafka: controller) and log
# name, by pid: what restart_broker needs to start the same broker again.
declare -A BROKER_SINK=() BROKER_PORT=() BROKER_AUX_PORT=() BROKER_LOG=()
start_broker() {
    local sink=$1 log=$2-broker port aux store
    port=$(free_port)
    aux=$(free_port)
    case $sink in
        nats) store=$(mktemp -d "$TMP/jetstream.XXXXXX") ;;
        kafka) store=$(mktemp -d "$TMP/kafka.XXXXXX") ;;
    esac
    run_broker "$sink" "$log" "$port" "$aux" "$store"
    wait_broker "$BROKER_PID"
}

# Starts the broker of pid $1 again, after it was stopped or killed, on the
# same ports with the same files, its log named $2, without waiting for it
# (wait_broker, or broker_ready to poll); leaves the new pid in $BROKER_PID
# and forgets the old one.
restart_broker() {
    local old=$1 log=$2
    run_broker "${BROKER_SINK[$old]}" "$log" "${BROKER_PORT[$old]}" "${BROKER_AUX_PORT[$old]}" \
        "${BROKER_STORE[$old]}"
    [[ $old == "$BROKER_PID" ]] ||
        unset "BROKER_SINK[$old]" "BROKER_PORT[$old]" "BROKER_AUX_PORT[$old]" "BROKER_LOG[$old]" \
            "BROKER_STORE[$old]"
}

# Starts broker $1 (nats or kafka) with log name $2 on port $3, second port
# $4 and files in $5, without waiting for it.
run_broker() {
    local sink=$1 log=$2 port=$3 aux=$4 store=$5
    case $sink in
        nats)
            start "$log" "$NATS_SERVER" -a 127.0.0.1 -p "$port" -m "$aux" \
                -js -sd "$store"
            BROKER_URL=nats://127.0.0.1:$port
            ;;
        kafka)
            # One KRaft node, broker and controller; node.sh formats its
            # storage (on the first start only), then execs the JVM, so the
            # pid is the broker's.
            start "$log" bash "$ROOT/.ci/tools/kafka/node.sh" "$store" 1 "$port" "$aux" \
                "1@127.0.0.1:$aux" "${KAFKA_SETTINGS[@]}"
            BROKER_URL=127.0.0.1:$port
            ;;
    esac
    BROKER_PID=$STARTED
    BROKER_SINK[$BROKER_PID]=$sink
    BROKER_PORT[$BROKER_PID]=$port
    BROKER_AUX_PORT[$BROKER_PID]=$aux
    BROKER_STORE[$BROKER_PID]=$store
    BROKER_LOG[$BROKER_PID]=$log
}

# Whether broker $1 (a pid) is ready: nats-server's /healthz (JetStream
# included); Kafka's broker port, which opens once the broker is ready to
# serve.
broker_ready() {
    local pid=$1
    case ${BROKER_SINK[$pid]} in
        nats) http_ok "http://127.0.0.1:${BROKER_AUX_PORT[$pid]}/healthz" ;;
        kafka) tcp_open "${BROKER_PORT[$pid]}" ;;
    esac
}

# Waits until broker $1 (a pid) is ready (Kafka: up to 120 s).
wait_broker() {
    local pid=$1 log=$TMP/${BROKER_LOG[$1]}.log
    case ${BROKER_SINK[$pid]} in
        nats) wait_until "nats-server" "$pid" "$log" broker_ready "$pid" ;;
        kafka) WAIT_SECONDS=120 wait_until "Apache Kafka (its log: ${BROKER_STORE[$pid]}/logs/server.log)" \
            "$pid" "$log" broker_ready "$pid" ;;
    esac
}

# Appends to the caller's args the bridge's flags for sink $1 on the
# current broker: JetStream with the stream BENCH, or Kafka with its topics
# made at start-up, as the pipelines have them.
bridge_sink_args() {
    case $1 in
        nats) args+=(--sink nats --nats-url "$BROKER_URL" --nats-jetstream --nats-stream BENCH) ;;
        kafka) args+=(--sink kafka --kafka-brokers "$BROKER_URL" --kafka-create-topics
            --kafka-partitions "$KAFKA_PARTITIONS" --kafka-replication-factor 1) ;;
    esac
}

# --- load ----------------------------------------------------------------------

# Lists the samples for benches/load.lua, starts the run counter, and writes
# the header of $1, the file measure appends its rows to ($RESULTS).
RUN=0
RESULTS=
bench_measure_init() {
    ls "$ROOT"/tests/samples/valid/*.json "$ROOT"/tests/samples/spec-*.json >"$TMP/samples.list"
    RUN=0
    RESULTS=$1
    printf 'round\ttarget\trps\tp50_ms\tp99_ms\tp999_ms\terrors\tcpu_s\tcpu_us_per_req\tbroker_cpu_s\tidle_rss_mib\tpeak_rss_mib\tbroker_cpu_us_per_req\tbroker_peak_rss_mib\n' >"$RESULTS"
}

# Sets WRK_COMMAND to the wrk command that drives $1 for $2 seconds
# (optional $3: mean pause per request per connection, in ms), its objectIds
# fresh: every command gets the next run number.
WRK_COMMAND=()
wrk_command() {
    local url=$1 seconds=$2 pause=${3:-}
    RUN=$((RUN + 1))
    local args=("$TMP/samples.list" "$RUN" "${pause:--}")
    [[ -n $BODY_BYTES ]] && args+=("$BODY_BYTES")
    WRK_COMMAND=("$WRK" -t"$THREADS" -c"$CONNECTIONS" -d"${seconds}s" --timeout 10s
        -s "$ROOT/benches/load.lua" "$url" -- "${args[@]}")
}

# Runs wrk against $1 for $2 seconds (optional $3: mean pause per request per
# connection, in ms) and leaves its RESULT line in $WRK_RESULT.
WRK_RESULT=
drive() {
    wrk_command "$@"
    WRK_RESULT=$("${WRK_COMMAND[@]}" | grep '^RESULT ') ||
        die "wrk produced no result against $1"
}
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" $WRK_RESULT"; }

# With MEASURE_METRICS set to a bridge's /metrics URL, measure leaves in
# MEASURED_ANSWERS the webhooks it answered during the measured run, by
# status: "200 202 other".
MEASURE_METRICS=
MEASURED_ANSWERS=
# The webhooks the bridge at metrics URL $1 has answered so far: "200 202
# other".
webhook_answers() {
    local page
    page=$(curl -sf --max-time 5 "$1") || die "cannot read the bridge's metrics at $1"
    awk '
        /^apizee_bridge_http_requests_total\{/ && /handler="webhook"/ {
            if ($1 ~ /code="200"/) ok += $2; else if ($1 ~ /code="202"/) spooled += $2; else other += $2
        }
        END { printf "%d %d %d\n", ok, spooled, other }' <<<"$page"
}

# Measures the target $2 (pid) at $3 (url), with broker pid $4 (or empty),
# and appends a row named $1. Optional $5: pause per request, as for drive.
measure() {
    local name=$1 pid=$2 url=$3 broker=$4 pause=${5:-}
    local cpu0 cpu1 bcpu0=0 bcpu1=0 answers0=
    sync
    drive "$url" "$WARMUP" "$pause"
    cpu0=$(cpu_seconds "$pid")
    [[ -n $broker ]] && bcpu0=$(cpu_seconds "$broker")
    [[ -n $MEASURE_METRICS ]] && answers0=$(webhook_answers "$MEASURE_METRICS")
    drive "$url" "$DURATION" "$pause"
    cpu1=$(cpu_seconds "$pid")
    [[ -n $broker ]] && bcpu1=$(cpu_seconds "$broker")
    if [[ -n $MEASURE_METRICS ]]; then
        MEASURED_ANSWERS=$(awk -v a="$answers0" -v b="$(webhook_answers "$MEASURE_METRICS")" \
            'BEGIN { split(a, x, " "); split(b, y, " "); print y[1] - x[1], y[2] - x[2], y[3] - x[3] }')
    fi
    local requests errors
    requests=$(field requests)
    errors=$(($(field err_connect) + $(field err_read) + $(field err_write) + $(field err_status) + $(field err_timeout)))
    awk -v OFS='\t' -v round="$ROUND" -v name="$name" -v rps="$(field rps)" -v p50="$(field p50_us)" \
        -v p99="$(field p99_us)" -v p999="$(field p999_us)" -v errors="$errors" \
        -v cpu="$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.2f", b - a }')" \
        -v bcpu="$(awk -v a="$bcpu0" -v b="$bcpu1" 'BEGIN { printf "%.2f", b - a }')" \
        -v requests="$requests" -v idle="${IDLE_RSS[$pid]}" -v peak="$(memory_mib "$pid" VmHWM)" \
        -v bpeak="${broker:+$(memory_mib "$broker" VmHWM)}" -v has_broker="${broker:+1}" 'BEGIN {
            print round, name, rps, p50 / 1000, p99 / 1000, p999 / 1000, errors, cpu,
                (requests > 0 ? sprintf("%.1f", cpu * 1e6 / requests) : "-"),
                (has_broker ? bcpu : "-"), idle, peak,
                (has_broker && requests > 0 ? sprintf("%.1f", bcpu * 1e6 / requests) : "-"),
                (has_broker ? bpeak : "-")
        }' >>"$RESULTS"
    log "round $ROUND/$ROUNDS, $name: $(field rps) req/s, p99 $(($(field p99_us) / 1000)) ms, $errors errors"
}

# Idle RSS (MiB) by pid.
declare -A IDLE_RSS=()
# Waits until the target answers a real webhook, notes its idle RSS, and
# drives it for $4 seconds (a Kafka broker's JIT; measure warms up every
# run itself).
ready_and_warm() {
    local name=$1 pid=$2 url=$3 more=${4:-0}
    wait_until "$name" "$pid" "$TMP/$name.log" post_ok "$url"
    IDLE_RSS[$pid]=$(memory_mib "$pid" VmRSS)
    ((more > 0)) && drive "$url" "$more"
    return 0
}

# Requests/s of target $1 in the current round.
rps_of() { awk -F'\t' -v round="$ROUND" -v name="$1" '$1 == round && $2 == name { print $3 }' "$RESULTS"; }

# Sets RATE_PAUSE to the pause per request per connection (ms) that drives
# $1 at about $2 requests/s: C connections each pausing C/rate between
# requests. The pause comes on top of each request's own time, so a
# warm-up run at the nominal pause measures that overhead, and the pause
# subtracts it.
RATE_PAUSE=
pause_for_rate() {
    local url=$1 rate=$2 pause
    pause=$(awk -v c="$CONNECTIONS" -v r="$rate" 'BEGIN { printf "%.3f", c / r * 1000 }')
    drive "$url" "$WARMUP" "$pause"
    RATE_PAUSE=$(awk -v c="$CONNECTIONS" -v r="$rate" -v got="$(field rps)" -v p="$pause" \
        'BEGIN { d = c / r * 1000 - (c / got * 1000 - p); printf "%.3f", (d > 0 ? d : 0) }')
}

# Measures "$1 @ half" at about $5 requests/s (pause_for_rate).
measure_at_rate() {
    local name=$1 pid=$2 url=$3 broker=$4 rate=$5
    pause_for_rate "$url" "$rate"
    measure "$name @ half" "$pid" "$url" "$broker" "$RATE_PAUSE"
}

# Prints its arguments one per line, reversed in even rounds (ROUND): runs
# compared in a ratio follow each other, and a drift of the machine's speed
# during a round favours one side in one round and the other in the next.
in_round_order() {
    if ((ROUND % 2)); then printf '%s\n' "$@"; else printf '%s\n' "$@" | tac; fi
}
