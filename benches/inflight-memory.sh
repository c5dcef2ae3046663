#!/usr/bin/env bash
# Peak memory of the bridge with --max-in-flight webhooks of
# --max-body-bytes held at once: the worst case the memory limit of the
# pods must hold (derived by the Helm chart, deploy/helm/apizee-bridge:
# templates/_helpers.tpl, "apizee-bridge.memoryLimit").
#
# Starts nats-server -js and the bridge (release build) with the JetStream
# sink and the deploy files' limits, freezes the server (SIGSTOP) so that
# no publish is acknowledged, opens --max-in-flight connections that each
# post one body of about --max-body-bytes, waits until the bridge holds all
# of them (apizee_bridge_requests_in_flight), reads its resident set size,
# thaws the server, waits until every webhook is answered 200, and prints
# the resident set size before, while holding them, and its peak (VmHWM).
#
#   bash benches/inflight-memory.sh [MAX_IN_FLIGHT [MAX_BODY_BYTES]]
#       # defaults: 256 and 262144, the chart's bridge.maxInFlight and maxBodyBytes
#
# Needs curl, python3 and nats-server (NATS_SERVER overrides the pinned one
# that .ci/tools/nats-server.sh installs); kills what it started when it
# exits. CARGO_TARGET_DIR is honoured.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BENCH_NAME=inflight-memory.sh
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

IN_FLIGHT=${1:-256}
BODY_BYTES=${2:-262144}
for n in "$IN_FLIGHT" "$BODY_BYTES"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "inflight-memory.sh: arguments must be positive integers" >&2; exit 2; }
done
NATS_SERVER=${NATS_SERVER:-$(bash "$ROOT/.ci/tools/nats-server.sh")}
command -v curl >/dev/null || die "curl not found"

cargo build --release --locked --bin apizee-bridge >&2
BRIDGE=${CARGO_TARGET_DIR:-$ROOT/target}/release/apizee-bridge

bench_tmpdir apizee-inflight

nats_port=$(free_port) monitor=$(free_port) listen=$(free_port) metrics=$(free_port)
start nats "$NATS_SERVER" -a 127.0.0.1 -p "$nats_port" -m "$monitor" -js -sd "$TMP/js"
NATS=$STARTED
wait_until nats-server "$NATS" "$TMP/nats.log" http_ok "http://127.0.0.1:$monitor/healthz"
start bridge "$BRIDGE" --listen "127.0.0.1:$listen" --metrics-listen "127.0.0.1:$metrics" --drain-delay 0s \
    --sink nats --nats-url "nats://127.0.0.1:$nats_port" --nats-jetstream --nats-stream BENCH \
    --max-in-flight "$IN_FLIGHT" --max-body-bytes "$BODY_BYTES" --publish-timeout 60s
BRIDGE_PID=$STARTED
wait_until "the bridge" "$BRIDGE_PID" "$TMP/bridge.log" http_ok "http://127.0.0.1:$listen/readyz"

# One body of about BODY_BYTES, a valid ticket with a "padding" field; each
# sender changes its objectId so no two are equal.
python3 - "$BODY_BYTES" "$TMP/body.json" <<'EOF'
import json, sys
size, path = int(sys.argv[1]), sys.argv[2]
envelope = {"event": "update", "time": 1575976413, "object": "ticket", "objectId": 100000000,
            "props": {"state": "OPEN"}, "padding": ""}
envelope["padding"] = "x" * (size - len(json.dumps(envelope, separators=(",", ":"))))
open(path, "w").write(json.dumps(envelope, separators=(",", ":")))
EOF
post() {
    sed "s/100000000/$((100000000 + $1))/" "$TMP/body.json" >"$TMP/body-$1.json"
    curl -s -o /dev/null -w '%{http_code}\n' --max-time 120 -H 'Content-Type: application/json' \
        --data-binary @"$TMP/body-$1.json" "http://127.0.0.1:$listen/webhooks" >"$TMP/status-$1"
}
in_flight() { metric "http://127.0.0.1:$metrics/metrics" apizee_bridge_requests_in_flight; }

# One webhook first: the stream exists and every code path has run once.
post 0
idle=$(memory_mib "$BRIDGE_PID" VmRSS)
log "idle RSS ${idle} MiB; freezing nats-server and posting $IN_FLIGHT webhooks of $(wc -c <"$TMP/body.json") bytes"
kill -STOP "$NATS"
senders=()
for ((i = 1; i <= IN_FLIGHT; i++)); do
    post "$i" &
    senders+=($!)
done
all_in_flight() { [[ $(in_flight) == "$IN_FLIGHT" ]]; }
WAIT_SECONDS=120 wait_until "$IN_FLIGHT webhooks in flight" "$BRIDGE_PID" "$TMP/bridge.log" all_in_flight
holding=$(memory_mib "$BRIDGE_PID" VmRSS)
log "holding $IN_FLIGHT webhooks: RSS ${holding} MiB; thawing nats-server"
kill -CONT "$NATS"
for pid in "${senders[@]}"; do wait "$pid"; done
answered=$(cat "$TMP"/status-* | sort | uniq -c | tr -s ' ' | tr '\n' ';')
peak=$(memory_mib "$BRIDGE_PID" VmHWM)
bodies=$(awk -v n="$IN_FLIGHT" -v b="$BODY_BYTES" 'BEGIN { printf "%.1f", n * b / 1048576 }')
echo "max-in-flight $IN_FLIGHT x max-body-bytes $BODY_BYTES = $bodies MiB of bodies: idle RSS $idle MiB, holding them $holding MiB, peak $peak MiB; answers:$answered"
