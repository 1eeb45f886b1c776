#!/usr/bin/env python3
"""One `pqa-engine run` under a stopwatch, for benches/restart.sh.

Starts the engine (the command after `--`), then polls its HTTP endpoints
every POLL seconds and records, from the moment just before the process was
spawned:

  http      the first answer of /healthz (any status)
  ready     the first `200` of /readyz
  first     the first scrape where pqa_events_total (all types) > 0
  done      the first scrape where the applied messages reach --until
            (pqa_batch_messages_sum >= N: valid events plus dead letters)

Then it stops the engine with --stop (term: SIGTERM and wait for a clean
exit; kill: SIGKILL) and prints one JSON object: the times, the counters
of the last scrape before the stop (events applied, messages in batches,
duplicates skipped, changelog records restored), the readiness reasons seen
while not ready, and the exit status. Standard library only.
"""

import argparse
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request


def get(url, timeout=0.5):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except Exception:
        return None, ""


def metric_sum(text, name):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


COUNTERS = {
    "events_applied": "pqa_events_total",
    "batch_messages": "pqa_batch_messages_sum",
    "dead_letters": "pqa_dead_letters_total",
    "duplicates_skipped": "pqa_duplicate_messages_skipped_total",
    "duplicate_events": "pqa_duplicate_events_total",
    "changelog_restored_records": "pqa_changelog_restored_records_total",
    "changelog_records_written": "pqa_changelog_records_total",
    "announcements": "pqa_announcements_total",
    "cache_accounts": "pqa_cache_accounts",
    "state_records_estimate": "pqa_state_records",
    "state_size_bytes_estimate": "pqa_state_size_bytes",
}


LOG_EVENTS = [
    "http listening",
    "pqa-engine starting",
    "changelog topic created",
    "state changelog on",
    "consuming",
    "state restored from the changelog",
    "partitions assigned",
    "shutting down",
    "stopped cleanly",
]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def log_marks(path, wall0):
    """Seconds from spawn to the first log line of each of LOG_EVENTS."""
    out = {}
    with open(path, errors="replace") as f:
        for line in f:
            line = ANSI.sub("", line)
            parts = line.split(None, 1)
            if len(parts) < 2:
                continue
            try:
                ts = datetime.datetime.fromisoformat(parts[0].replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
            for ev in LOG_EVENTS:
                if ev not in out and ev in line:
                    out[ev] = round(ts - wall0, 3)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--http", required=True, help="host:port of the engine's HTTP")
    ap.add_argument("--until", type=int, required=True, help="stop once this many messages are applied")
    ap.add_argument("--stop", choices=["term", "kill"], default="term")
    ap.add_argument("--poll", type=float, default=0.01)
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--log", required=True, help="engine stderr goes here")
    ap.add_argument("--metrics-out", help="save the last /metrics scrape here")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    base = f"http://{a.http}"
    t0 = time.monotonic()
    wall0 = time.time()
    with open(a.log, "w") as log:
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    marks = {}
    reasons = []
    last = ""
    counters = {}
    try:
        while True:
            if p.poll() is not None:
                print(json.dumps({"error": f"engine exited early with {p.returncode}", "log": a.log}))
                sys.exit(1)
            now = time.monotonic() - t0
            if now > a.timeout:
                print(json.dumps({"error": "timeout", "marks": marks}))
                p.kill()
                sys.exit(1)
            if "ready" not in marks:
                code, body = get(base + "/readyz", timeout=0.2)
                if code is not None:
                    marks.setdefault("http", now)
                if code == 200:
                    marks["ready"] = time.monotonic() - t0
                elif code is not None:
                    why = body.strip()
                    if not reasons or reasons[-1][1] != why:
                        reasons.append((round(now, 3), why))
            code, text = get(base + "/metrics", timeout=1.0)
            if code == 200:
                last = text
                t = time.monotonic() - t0
                counters = {k: metric_sum(text, m) for k, m in COUNTERS.items()}
                if counters["events_applied"] > 0:
                    marks.setdefault("first", t)
                if counters["batch_messages"] >= a.until and "ready" in marks:
                    marks["done"] = t
                    break
            # Faster polling until the first event, then relax.
            time.sleep(a.poll if "first" not in marks else max(a.poll, 0.1))
    finally:
        cpu = None
        try:
            with open(f"/proc/{p.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
                clk = os.sysconf("SC_CLK_TCK")
                cpu = (int(fields[11]) + int(fields[12])) / clk
        except OSError:
            pass
        if p.poll() is None:
            t_stop = time.monotonic()
            p.send_signal(signal.SIGTERM if a.stop == "term" else signal.SIGKILL)
            rc = p.wait()
            stop_s = time.monotonic() - t_stop
        else:
            rc, stop_s = p.returncode, 0.0
    if a.metrics_out:
        with open(a.metrics_out, "w") as f:
            f.write(last)
    print(
        json.dumps(
            {
                "started_unix": wall0,
                "marks_s": {k: round(v, 3) for k, v in marks.items()},
                "counters": counters,
                "not_ready_reasons": reasons,
                "stop": a.stop,
                "stop_seconds": round(stop_s, 3),
                "exit_status": rc,
                "log_marks_s": log_marks(a.log, wall0),
                "cpu_seconds_before_stop": cpu,
            }
        )
    )


if __name__ == "__main__":
    main()
