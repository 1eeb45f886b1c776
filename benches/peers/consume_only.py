#!/usr/bin/env python3
"""How fast a consumer alone can read a topic from the benchmark broker: the
ceiling any `run` through that broker has. librdkafka (confluent-kafka),
batches of 10,000, no processing, with the fetch settings `pqa-engine run`
uses (`fetch.wait.max.ms=50`, `fetch.queue.backoff.ms=20`): with
librdkafka's own (500 ms, 1 s) this read a 2-partition topic at about
100 k events/s, which is librdkafka's backoff, not the broker
(BENCHMARKS.md, "`run` idle behind librdkafka's fetch backoff").

    python benches/peers/consume_only.py TOPIC EVENTS [librdkafka.property=value ...]
"""
import sys
import time
import uuid

from confluent_kafka import Consumer


def main() -> int:
    topic, n = sys.argv[1], int(sys.argv[2])
    extra = dict(kv.split("=", 1) for kv in sys.argv[3:])
    c = Consumer({
        "bootstrap.servers": "127.0.0.1:19092",
        "group.id": "consume-only-" + uuid.uuid4().hex,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "fetch.wait.max.ms": "50",
        "fetch.queue.backoff.ms": "20",
        **extra,
    })
    c.subscribe([topic])
    got, t0 = 0, None
    while got < n:
        batch = c.consume(num_messages=10000, timeout=1.0)
        if batch and t0 is None:
            t0 = time.time()
        got += sum(1 for m in batch if not m.error())
    dt = time.time() - t0
    print(f"{got} events in {dt:.2f} s = {got / dt:.0f} events/s")
    c.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
