#!/usr/bin/env python3
"""Loads an NDJSON file of Segment events into a topic, as a product's
pipeline would: one record per line, key = the account (`context.groupId`,
else `groupId`, else the user id, else the anonymous id), the record
timestamp = now. Used by benches/compare.sh when INPUT is set (the long
tail of benches/longtail.py, a customer's export).

    python benches/peers/load_topic.py --broker 127.0.0.1:19092 \
        --topic bench.events --input /tmp/longtail.ndjson

Prints "produced N events over K keys" on stderr, like `pqa-engine simulate`.
"""

import argparse
import json
import sys

from confluent_kafka import Producer


def key_of(ev: dict) -> str:
    ctx = ev.get("context") or {}
    for k in (ctx.get("groupId"), ev.get("groupId"), ev.get("userId"), ev.get("anonymousId")):
        if k:
            return str(k)
    return ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--input", required=True, help="NDJSON file")
    ap.add_argument("--max-events", type=int, default=0, help="stop after this many lines (0: all)")
    args = ap.parse_args()

    p = Producer(
        {
            "bootstrap.servers": args.broker,
            "enable.idempotence": True,
            "linger.ms": 20,
            "batch.size": 1 << 20,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 500000,
        }
    )
    failed = []

    def report(err, _msg):
        if err is not None:
            failed.append(err)

    n = 0
    keys = set()
    with open(args.input, "rb") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                key = key_of(json.loads(line))
            except ValueError:
                key = ""
            keys.add(key)
            while True:
                try:
                    p.produce(args.topic, value=line, key=key.encode() or None, on_delivery=report)
                    break
                except BufferError:
                    p.poll(0.05)
            p.poll(0)
            n += 1
            if n % 200000 == 0:
                print(f"loaded {n} events", file=sys.stderr)
            if args.max_events and n >= args.max_events:
                break
    left = p.flush(120)
    if left or failed:
        print(f"load_topic: {left} not delivered, {len(failed)} failed ({failed[:3]})", file=sys.stderr)
        return 1
    print(f"produced {n} events over {len(keys)} keys", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
