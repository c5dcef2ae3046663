#!/usr/bin/env bash
# Memory of the bridge while its spool fills and while it replays.
#
# Starts the bridge (release build) with the JetStream sink, --spool-dir, and
# no broker on its port, posts N webhooks of about 200 KiB each from 16
# concurrent senders (all answered 202: spooled), prints the resident set
# size, then starts nats-server -js on that port and waits until the spool is
# empty, and prints the resident set size and its peak again. The memory
# limit of the Kubernetes StatefulSet variant (deploy/kubernetes/components/
# spool) must hold the peak.
#
#   bash benches/spool-memory.sh [N]     # N defaults to 2000 (about 400 MB spooled)
#
# Needs curl, python3 and nats-server (NATS_SERVER=/path overrides); kills
# what it started when it exits.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${1:-2000}
[[ $N =~ ^[1-9][0-9]*$ ]] || { echo "spool-memory.sh: N must be a positive integer" >&2; exit 2; }
find_tool() {
    local name=$1 dir
    for dir in ${PATH//:/ } /usr/sbin /usr/local/bin; do
        [[ -x $dir/$name ]] && { echo "$dir/$name"; return; }
    done
    return 1
}
NATS_SERVER=${NATS_SERVER:-$(find_tool nats-server)} ||
    { echo "spool-memory.sh: nats-server not found: apt-get install nats-server" >&2; exit 1; }

cargo build --release --locked --bin apizee-bridge >&2
BIN=target/release/apizee-bridge

TMP=$(mktemp -d)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
NATS_PORT=$(free_port)
HTTP_PORT=$(free_port)
METRICS_PORT=$(free_port)
metric() {
    curl -sf "http://127.0.0.1:$METRICS_PORT/metrics" | awk -v m="$1" '$1 == m { print $2 }'
}
memory() {
    awk '/^VmRSS|^VmHWM/ { printf "%s %d MiB  ", $1, $2 / 1024 } END { print "" }' "/proc/$BRIDGE/status"
}
# Polls instead of sleeping a fixed time; fails after 120 s.
wait_for() {
    local what=$1 deadline=$((SECONDS + 120))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || { echo "spool-memory.sh: timed out waiting for $what" >&2; exit 1; }
        sleep 0.2
    done
}

"$BIN" --sink nats --nats-url "nats://127.0.0.1:$NATS_PORT" --nats-jetstream --nats-stream APIZEE \
    --listen "127.0.0.1:$HTTP_PORT" --metrics-listen "127.0.0.1:$METRICS_PORT" \
    --spool-dir "$TMP/spool" --startup-timeout 0s --max-body-bytes 262144 \
    >"$TMP/bridge.log" 2>&1 &
BRIDGE=$!
PIDS+=("$BRIDGE")
wait_for "the bridge" curl -sf "http://127.0.0.1:$HTTP_PORT/healthz" -o /dev/null

python3 - "$TMP/bodies" "$N" <<'PY'
import json, os, sys
out, n = sys.argv[1], int(sys.argv[2])
os.makedirs(out)
for i in range(1, n + 1):
    with open(f"{out}/{i}.json", "w") as f:
        json.dump({"event": "update", "time": 1575976413, "object": "ticket",
                   "objectId": i, "props": {"pad": "x" * 200000}}, f)
PY
echo "posting $N webhooks of about 200 KiB, broker down:"
seq "$N" | xargs -P 16 -I{} curl -s -o /dev/null -w '%{http_code}\n' \
    -H 'Content-Type: application/json' --data-binary "@$TMP/bodies/{}.json" \
    "http://127.0.0.1:$HTTP_PORT/webhooks" | sort | uniq -c | sed 's/^/  answers: /'
echo "  spooled: $(metric apizee_bridge_spool_events) events, $(($(metric apizee_bridge_spool_bytes) / 1048576)) MiB"
echo "  bridge:  $(memory)"
echo "  on disk: $(du -sm "$TMP/spool" | cut -f1) MiB (redb file)"

"$NATS_SERVER" -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$TMP/js" >"$TMP/nats.log" 2>&1 &
PIDS+=("$!")
start=$SECONDS
spool_empty() { [[ $(metric apizee_bridge_spool_events) == 0 ]]; }
wait_for "the replay" spool_empty
echo "replayed to nats-server in about $((SECONDS - start)) s:"
echo "  bridge:  $(memory)(VmHWM is the peak of the whole run)"
