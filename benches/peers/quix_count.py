#!/usr/bin/env python3
"""The peer of benches/compare.sh: a Quix Streams app that does only a
per-account sliding-window count (28 days of event time) over the Segment
events that `pqa-engine simulate --topic` (or benches/peers/load_topic.py)
wrote, and stops after N messages. By default the count is emitted after
every event (`.current()`), as an app that acts on a threshold would write
it; `--emit final` emits only when a window closes.

Key = account id (as produced by the generator); event time = the Segment
`timestamp` field. It prints one JSON line with its rate on stdout.

    python benches/peers/quix_count.py --broker 127.0.0.1:19092 \
        --topic bench.events --group quix-1 --messages 1000000
"""

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from datetime import datetime, timedelta


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", required=True, help="bootstrap servers, host:port")
    ap.add_argument("--topic", required=True, help="input topic (preloaded)")
    ap.add_argument("--group", required=True, help="consumer group (use a fresh one per run)")
    ap.add_argument("--messages", type=int, required=True, help="stop after this many messages")
    ap.add_argument("--window-days", type=int, default=28, help="window length in days (default 28)")
    ap.add_argument(
        "--window",
        choices=["sliding", "hopping", "tumbling", "none"],
        default="sliding",
        help="sliding (default, exact to the ms), hopping (step --hop-hours), tumbling, or none (consume + parse only)",
    )
    ap.add_argument("--hop-hours", type=int, default=24, help="step of the hopping window (default 24)")
    ap.add_argument(
        "--emit",
        choices=["current", "final"],
        default="current",
        help="current (default: the count after every event, as an app that acts on it must) or final "
        "(only when a window closes)",
    )
    ap.add_argument("--state-dir", default=None, help="RocksDB state directory (default: a fresh temp dir)")
    ap.add_argument(
        "--no-changelog", action="store_true", help="disable Quix changelog topics (state only in local RocksDB)"
    )
    args = ap.parse_args()

    from quixstreams import Application

    logging.getLogger("quixstreams").setLevel(logging.WARNING)
    state_dir = args.state_dir or tempfile.mkdtemp(prefix="quix-state-")
    app = Application(
        broker_address=args.broker,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=state_dir,
        use_changelog_topics=not args.no_changelog,
        loglevel="WARNING",
    )

    def event_time(value, headers, timestamp, timestamp_type) -> int:
        # Segment `timestamp`: RFC 3339 UTC, e.g. "2026-01-01T09:12:33Z".
        ts = value.get("timestamp") if isinstance(value, dict) else None
        if not ts:
            return timestamp
        return int(datetime.fromisoformat(ts).timestamp() * 1000)

    topic = app.topic(
        args.topic,
        key_deserializer="str",
        value_deserializer="json",
        timestamp_extractor=event_time,
    )
    sdf = app.dataframe(topic)

    seen = {"n": 0, "first": None, "last": None}
    target = args.messages

    def count_message(_value):
        n = seen["n"] + 1
        seen["n"] = n
        now = time.perf_counter()
        if n == 1:
            seen["first"] = now
        if n >= target:
            seen["last"] = now
            app.stop()

    sdf = sdf.update(count_message)
    length = timedelta(days=args.window_days)
    def emit(windowed):
        return windowed.current() if args.emit == "current" else windowed.final()

    if args.window == "sliding":
        sdf = emit(sdf.sliding_window(duration_ms=length, grace_ms=0).count())
    elif args.window == "hopping":
        sdf = emit(sdf.hopping_window(duration_ms=length, step_ms=timedelta(hours=args.hop_hours), grace_ms=0).count())
    elif args.window == "tumbling":
        sdf = emit(sdf.tumbling_window(duration_ms=length, grace_ms=0).count())

    started = time.perf_counter()
    app.run()
    ended = time.perf_counter()

    n = seen["n"]
    if seen["last"] is None:
        print(f"quix_count: stopped after {n} of {target} messages", file=sys.stderr)
        return 1
    steady = (n - 1) / max(seen["last"] - seen["first"], 1e-9)
    wall = n / max(seen["last"] - started, 1e-9)
    print(
        json.dumps(
            {
                "peer": "quixstreams",
                "window": args.window,
                "emit": args.emit,
                "messages": n,
                "seconds_first_to_last": round(seen["last"] - seen["first"], 3),
                "seconds_from_start": round(seen["last"] - started, 3),
                "events_per_second": round(steady),
                "events_per_second_from_start": round(wall),
                "run_seconds": round(ended - started, 3),
                "state_dir": state_dir,
                "pid": os.getpid(),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
