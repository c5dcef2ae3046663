#!/usr/bin/env bash
# Sweeps of benches/load.sh (issue 17): one load.sh run per setting, each
# with every target side by side in the same rounds, then one TSV of the
# medians.
#
#   bash benches/sweep.sh linger [--lingers "0 1 2 5"] [--connections "32 128"]
#   bash benches/sweep.sh scaling [--connections "1 8 32 128 512"]
#                         [--body-sizes "200 4096 65536 262000"]
#   bash benches/sweep.sh [--rounds N] [--duration S] [--warmup S] [--sinks ...]
#                         [--vector PATH] [--out DIR] MODE
#
# linger: the bridge on Kafka (Apache Kafka) with --kafka-option linger.ms=N for
#   each N, at each number of connections; the pipelines keep the bridge's
#   default (linger.ms=0), so "bridge / contract" is the gain or loss of N.
#   Writes $OUT/linger.tsv: linger_ms, connections, bridge req/s, contract
#   pipeline req/s, their ratio, bridge p99 at full load and at half load.
#
# scaling: how throughput and p99 grow with the work, for every target
#   (the bridge, the contract pipeline, the minimal pipeline, Vector with
#   --vector) and sink: at each number of connections with the samples as
#   they are (about 200 bytes), then at 32 connections with each body size
#   (a "padding" field; 262000 rather than 262144, so that the variation of
#   the objectId's length never takes a body past --max-body-bytes). Full
#   load only. Writes $OUT/scaling.tsv (sink, dimension, value, target,
#   req/s, p99 ms, CPU µs per request, peak RSS MiB) and draws it with
#   benches/plot.py into $OUT/*.png (matplotlib, installed without root
#   into target/tools/plot by .ci/tools/venv.sh).
#
# Rounds default to 3 here (each setting is one load.sh run; 5 for the
# figures in docs/performance.md). Everything else is load.sh's: its
# options after MODE's own are passed through.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
BENCH_NAME=sweep.sh
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

MODE=
LINGERS="0 1 2 5"
CONNECTIONS_LIST=
BODY_SIZES="200 4096 65536 262000"
ROUNDS=${BENCH_ROUNDS:-3}
OUT=${BENCH_OUT:-$ROOT/target/bench/sweep}
PASS=()

while (($#)); do
    case $1 in
        linger | scaling) MODE=$1; shift ;;
        --body-sizes) BODY_SIZES=$2; shift 2 ;;
        --lingers) LINGERS=$2; shift 2 ;;
        --connections) CONNECTIONS_LIST=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        --no-build | --profile) PASS+=("$1"); shift ;;
        --*) PASS+=("$1" "$2"); shift 2 ;;
        *) echo "sweep.sh: unknown mode $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ -n $MODE ]] || { usage >&2; exit 2; }
if [[ -z $CONNECTIONS_LIST ]]; then
    case $MODE in
        linger) CONNECTIONS_LIST="32 128" ;;
        scaling) CONNECTIONS_LIST="1 8 32 128 512" ;;
    esac
fi

# The median of column $3 for target $2 in results.tsv $1.
median_of() {
    awk -F'\t' -v name="$2" -v c="$3" "$MEDIAN_AWK"'
        NR > 1 && $2 == name { v[++n] = $c }
        END { if (n == 0) print "-"; else print median(v, n) }' "$1"
}

# The median over rounds of target $2's req/s divided by target $3's.
ratio_of() {
    awk -F'\t' -v a="$2" -v b="$3" "$MEDIAN_AWK"'
        NR > 1 && $2 == a { x[$1] = $3 }
        NR > 1 && $2 == b { y[$1] = $3 }
        END {
            for (r in x) if (y[r] > 0) v[++n] = x[r] / y[r]
            if (n == 0) print "-"; else printf "%.3f\n", median(v, n)
        }' "$1"
}

mkdir -p "$OUT"
built=0
run_load() {
    local dir=$1
    shift
    local build=()
    ((built)) && build=(--no-build)
    bash "$ROOT/benches/load.sh" "${build[@]}" --rounds "$ROUNDS" --out "$dir" "${PASS[@]}" "$@" >"$dir.log" 2>&1 ||
        { tail -n 20 "$dir.log" >&2; log "load.sh failed: $dir.log"; exit 1; }
    built=1
}

case $MODE in
    linger)
        table=$OUT/linger.tsv
        printf 'linger_ms\tconnections\tbridge_rps\tcontract_rps\tbridge_over_contract\tbridge_p99_ms\tbridge_p99_half_ms\tcontract_p99_half_ms\n' >"$table"
        for connections in $CONNECTIONS_LIST; do
            for linger in $LINGERS; do
                dir=$OUT/linger-$linger-c$connections
                log "linger.ms=$linger, $connections connections"
                BENCH_BRIDGE_ARGS="--kafka-option linger.ms=$linger" \
                    run_load "$dir" --sinks kafka --connections "$connections"
                results=$dir/results.tsv
                printf '%s\t%s\t%.0f\t%.0f\t%s\t%s\t%s\t%s\n' "$linger" "$connections" \
                    "$(median_of "$results" "kafka bridge" 3)" \
                    "$(median_of "$results" "kafka contract pipeline" 3)" \
                    "$(ratio_of "$results" "kafka bridge" "kafka contract pipeline")" \
                    "$(median_of "$results" "kafka bridge" 5)" \
                    "$(median_of "$results" "kafka bridge @ half" 5)" \
                    "$(median_of "$results" "kafka contract pipeline @ half" 5)" >>"$table"
            done
        done
        column -t -s $'\t' "$table"
        log "written to $table"
        ;;
    scaling)
        table=$OUT/scaling.tsv
        printf 'sink\tdimension\tvalue\ttarget\trps\tp99_ms\tcpu_us_per_req\tpeak_rss_mib\n' >"$table"
        # Appends the medians of every full-load target in $1's results
        # (the highest peak RSS), as rows of $table.
        collect() {
            awk -F'\t' -v OFS='\t' -v dimension="$2" -v value="$3" "$MEDIAN_AWK"'
                # The median of target name'"'"'s n values in a[name, 1..n].
                function median_in(a, name, n,    i, v) {
                    for (i = 1; i <= n; i++) v[i] = a[name, i]
                    return median(v, n)
                }
                NR > 1 && $2 !~ /@|ceiling/ {
                    n = ++count[$2]; rps[$2, n] = $3; p99[$2, n] = $5; cpu[$2, n] = $9
                    if ($12 + 0 > peak[$2] + 0) peak[$2] = $12
                }
                END {
                    for (name in count) {
                        sink = name; sub(/ .*/, "", sink)
                        target = name; sub(/^[^ ]+ /, "", target)
                        n = count[name]
                        printf "%s\t%s\t%s\t%s\t%.0f\t%.2f\t%.1f\t%s\n", sink, dimension, value, target,
                            median_in(rps, name, n), median_in(p99, name, n), median_in(cpu, name, n), peak[name]
                    }
                }' "$1/results.tsv" | sort >>"$table"
        }
        for connections in $CONNECTIONS_LIST; do
            dir=$OUT/connections-$connections
            log "$connections connections"
            run_load "$dir" --no-half --connections "$connections"
            collect "$dir" connections "$connections"
        done
        for size in $BODY_SIZES; do
            dir=$OUT/body-$size
            log "bodies of about $size bytes, 32 connections"
            run_load "$dir" --no-half --connections 32 --body-bytes "$size"
            collect "$dir" body_bytes "$size"
        done
        log "written to $table"
        PLOT=$(bash "$ROOT/.ci/tools/venv.sh" plot matplotlib==3.10.9)
        "$PLOT/bin/python" "$ROOT/benches/plot.py" "$table" "$OUT"
        ;;
esac
