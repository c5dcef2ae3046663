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
ROOT=$PWD
BENCH_NAME=spool-memory.sh
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

N=${1:-2000}
[[ $N =~ ^[1-9][0-9]*$ ]] || { echo "spool-memory.sh: N must be a positive integer" >&2; exit 2; }
NATS_SERVER=${NATS_SERVER:-$(find_tool nats-server)} ||
    die "nats-server not found: apt-get install nats-server"

cargo build --release --locked --bin apizee-bridge >&2
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/apizee-bridge

bench_tmpdir apizee-spool
NATS_PORT=$(free_port)
HTTP_PORT=$(free_port)
METRICS_PORT=$(free_port)
metric_value() { metric "http://127.0.0.1:$METRICS_PORT/metrics" "$1"; }
memory() { echo "VmRSS $(memory_mib "$BRIDGE" VmRSS) MiB  VmHWM $(memory_mib "$BRIDGE" VmHWM) MiB  "; }

start bridge "$BIN" --sink nats --nats-url "nats://127.0.0.1:$NATS_PORT" --nats-jetstream --nats-stream APIZEE \
    --listen "127.0.0.1:$HTTP_PORT" --metrics-listen "127.0.0.1:$METRICS_PORT" \
    --spool-dir "$TMP/spool" --startup-timeout 0s --max-body-bytes 262144
BRIDGE=$STARTED
wait_until "the bridge" "$BRIDGE" "$TMP/bridge.log" http_ok "http://127.0.0.1:$HTTP_PORT/healthz"

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
echo "  spooled: $(metric_value apizee_bridge_spool_events) events, $(($(metric_value apizee_bridge_spool_bytes) / 1048576)) MiB"
echo "  bridge:  $(memory)"
echo "  on disk: $(du -sm "$TMP/spool" | cut -f1) MiB (redb file)"

start nats "$NATS_SERVER" -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$TMP/js"
started_at=$SECONDS
spool_empty() { [[ $(metric_value apizee_bridge_spool_events) == 0 ]]; }
WAIT_SECONDS=120 wait_until "the replay" "$BRIDGE" "$TMP/bridge.log" spool_empty
echo "replayed to nats-server in about $((SECONDS - started_at)) s:"
echo "  bridge:  $(memory)(VmHWM is the peak of the whole run)"
