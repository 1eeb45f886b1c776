#!/usr/bin/env python3
"""Plots for the benchmarks, as PNG files under benches/plots/.

    benches/plot.sh latency RUN.csv [RUN2.csv ...] [--label NAME ...] [-o FILE]
        The latency distribution of benches/latency.rs runs (CSV columns
        send_s,latency_ms,...): a histogram, the CDF of every run given (log
        scale), and latency over the run with the engine's input lag (from
        RUN-lag.csv next to RUN.csv, when it is there).
        Default output: benches/plots/latency.png

    benches/plot.sh throughput DATA.csv [-o FILE]
        Throughput vs accounts from a CSV with columns accounts,events_per_s,rss_mib
        (one row per run; several rows per account count are drawn as points
        with their median joined). Default output: benches/plots/throughput_vs_accounts.png

benches/plot.sh runs this script in a venv with the pinned matplotlib
(benches/requirements-plot.txt); any Python with matplotlib works too.
"""

import argparse
import csv
import os
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PLOTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plots")


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def percentile(sorted_values, p):
    """Nearest rank, as benches/latency.rs computes it."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-p * len(sorted_values) // 100))
    return sorted_values[min(int(rank), len(sorted_values)) - 1]


def plot_latency(paths, labels, out, title):
    runs = []
    for i, path in enumerate(paths):
        rows = read_rows(path)
        lat = sorted(float(r["latency_ms"]) for r in rows)
        if not lat:
            sys.exit(f"plot.py: no latencies in {path}")
        label = labels[i] if i < len(labels) else os.path.basename(path).removesuffix(".csv")
        lag_path = path.removesuffix(".csv") + "-lag.csv"
        lag = read_rows(lag_path) if os.path.exists(lag_path) else None
        runs.append((label, rows, lat, lag))

    fig, axes = plt.subplots(1, 3, figsize=(18, 6.5))
    ax_hist, ax_cdf, ax_time = axes

    # Histogram of the first run, with its percentiles.
    label, rows, lat, _ = runs[0]
    ax_hist.hist(lat, bins=60, color="#4c72b0")
    for p, style in ((50, "--"), (99, ":")):
        v = percentile(lat, p)
        ax_hist.axvline(v, color="black", linestyle=style, label=f"p{p} {v:.0f} ms")
    ax_hist.set_xlabel("latency, event produced -> PQA read from the output topic (ms)")
    ax_hist.set_ylabel("output events")
    ax_hist.set_title(f"{label}: {len(lat)} output events")
    ax_hist.legend()

    # CDF of every run.
    for label, _, lat, _ in runs:
        n = len(lat)
        ax_cdf.plot(lat, [(i + 1) / n for i in range(n)], label=f"{label} (p50 {percentile(lat, 50):.0f}, p99 {percentile(lat, 99):.0f} ms)")
    ax_cdf.set_xscale("log")
    ax_cdf.set_xlabel("latency (ms, log scale)")
    ax_cdf.set_ylabel("fraction of output events")
    ax_cdf.axhline(0.99, color="grey", linewidth=0.5)
    ax_cdf.axvline(50, color="red", linewidth=0.8, linestyle="--", label="50 ms")
    ax_cdf.grid(True, which="both", linewidth=0.3)
    ax_cdf.set_title("CDF")
    ax_cdf.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15))

    # Latency over the run, and the engine's input lag.
    for label, rows, _, _ in runs:
        ax_time.scatter([float(r["send_s"]) for r in rows], [float(r["latency_ms"]) for r in rows], s=3, label=label)
    ax_time.set_yscale("log")
    ax_time.set_xlabel("time the triggering event was produced (s into the measured window)")
    ax_time.set_ylabel("latency (ms, log scale)")
    ax_time.set_title("over the run (dots: latency; lines: input lag; colours as in the CDF)")
    lags = [(label, lag) for label, _, _, lag in runs if lag]
    if lags:
        ax_lag = ax_time.twinx()
        for label, lag in lags:
            pts = [(float(r["t_s"]), float(r["lag"])) for r in lag if float(r["t_s"]) >= 0]
            ax_lag.plot([p[0] for p in pts], [p[1] for p in pts], linewidth=1, label=f"{label}: input lag")
        ax_lag.set_ylabel("input lag (events sent - processed)")
        ax_lag.set_ylim(bottom=0)

    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"plot.py: wrote {out}")


def plot_throughput(path, out, title):
    by_accounts = {}
    for r in read_rows(path):
        a = int(float(r["accounts"]))
        by_accounts.setdefault(a, []).append((float(r["events_per_s"]), float(r["rss_mib"])))
    if not by_accounts:
        sys.exit(f"plot.py: no rows in {path}")
    xs = sorted(by_accounts)
    fig, ax = plt.subplots(figsize=(8, 5))
    ax_rss = ax.twinx()
    for x in xs:
        ax.scatter([x] * len(by_accounts[x]), [v[0] for v in by_accounts[x]], color="#4c72b0", s=12, alpha=0.6)
        ax_rss.scatter([x] * len(by_accounts[x]), [v[1] for v in by_accounts[x]], color="#dd8452", s=12, alpha=0.6, marker="s")
    ax.plot(xs, [statistics.median(v[0] for v in by_accounts[x]) for x in xs], color="#4c72b0", label="events/s (median)")
    ax_rss.plot(xs, [statistics.median(v[1] for v in by_accounts[x]) for x in xs], color="#dd8452", label="RSS MiB (median)")
    ax.set_xscale("log")
    ax.set_xlabel("accounts (log scale)")
    ax.set_ylabel("events per second")
    ax_rss.set_ylabel("RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax_rss.set_ylim(bottom=0)
    ax.grid(True, which="both", linewidth=0.3)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax_rss.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="lower left")
    ax.set_title(title or "throughput and memory vs accounts")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"plot.py: wrote {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    lat = sub.add_parser("latency", help="latency distribution from benches/latency.rs CSVs")
    lat.add_argument("csv", nargs="+")
    lat.add_argument("--label", action="append", default=[], help="a name per CSV, in order")
    lat.add_argument("-o", "--output", default=os.path.join(PLOTS, "latency.png"))
    lat.add_argument("--title", default="")
    thr = sub.add_parser("throughput", help="throughput and RSS vs accounts")
    thr.add_argument("csv")
    thr.add_argument("-o", "--output", default=os.path.join(PLOTS, "throughput_vs_accounts.png"))
    thr.add_argument("--title", default="")
    args = ap.parse_args()
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    if args.what == "latency":
        plot_latency(args.csv, args.label, args.output, args.title)
    else:
        plot_throughput(args.csv, args.output, args.title)


if __name__ == "__main__":
    main()
