# Helpers shared by the benchmark scripts (load.sh, sweep.sh,
# inflight-memory.sh, spool-memory.sh): sourced, never run.
#
# A script sets BENCH_NAME (its name, for log lines) before sourcing it,
# and calls bench_tmpdir once before starting processes. Everything started
# with `start` is killed by its pid when the script exits, and the temporary
# directory is removed.

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
    [[ -n $TMP ]] && rm -rf "$TMP"
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

stop() {
    local pid=$1 kept=() p
    kill "$pid" 2>/dev/null || true
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
