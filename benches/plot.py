"""Draws benches/sweep.sh's scaling.tsv as PNG plots (matplotlib).

    python benches/plot.py SCALING_TSV OUT_DIR

For each sink and each dimension of the sweep (connections, body size), one
PNG with two panels side by side: requests/s and p99 latency against the
dimension, one line per target. Written as OUT_DIR/<sink>-<dimension>.png.
"""

import csv
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # files only: no display on a build machine
import matplotlib.pyplot as plt  # noqa: E402

# The same target keeps its colour and marker in every plot.
STYLE = {
    "bridge": ("tab:blue", "o"),
    "contract pipeline": ("tab:green", "s"),
    "minimal pipeline": ("tab:gray", "^"),
    "vector": ("tab:red", "D"),
}
DIMENSIONS = {
    "connections": ("connections (wrk -c)", 2),
    "body_bytes": ("body size (bytes)", 10),
}
SINKS = {"nats": "NATS JetStream (nats-server)", "kafka": "Kafka (Apache Kafka)"}


def main() -> None:
    table, out = Path(sys.argv[1]), Path(sys.argv[2])
    series: dict = defaultdict(lambda: defaultdict(list))
    with table.open() as f:
        for row in csv.DictReader(f, delimiter="\t"):
            key = (row["sink"], row["dimension"])
            series[key][row["target"]].append(
                (float(row["value"]), float(row["rps"]), float(row["p99_ms"]))
            )
    out.mkdir(parents=True, exist_ok=True)
    for (sink, dimension), targets in sorted(series.items()):
        label, base = DIMENSIONS[dimension]
        fig, (rate, p99) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
        for target in sorted(targets, key=lambda t: list(STYLE).index(t) if t in STYLE else 99):
            points = sorted(targets[target])
            colour, marker = STYLE.get(target, ("black", "x"))
            xs = [p[0] for p in points]
            rate.plot(xs, [p[1] for p in points], marker=marker, color=colour, label=target)
            p99.plot(xs, [p[2] for p in points], marker=marker, color=colour, label=target)
        values = sorted({p[0] for points in targets.values() for p in points})
        for axis, title in ((rate, "requests/s"), (p99, "p99 latency (ms)")):
            axis.set_xscale("log", base=base)
            # The measured values themselves as ticks: 1, 8, 32, not 2^3.
            axis.set_xticks(values, [f"{v:g}" for v in values])
            axis.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            axis.set_xlabel(label)
            axis.set_title(title)
            axis.grid(True, which="both", alpha=0.3)
        p99.set_yscale("log")
        rate.set_ylim(bottom=0)
        rate.legend()
        fig.suptitle(f"{SINKS.get(sink, sink)}: {label}")
        path = out / f"{sink}-{dimension}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        print(path)


if __name__ == "__main__":
    main()
