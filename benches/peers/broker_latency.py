"""The broker's own floor: produce -> consume latency of a bare pipe (no
engine), at a paced rate, with the producer and consumer settings the
latency bench and the engine use. Run with the venv of benches/compare.sh:

    bash benches/broker.sh start
    ~/.cache/pqa-bench/venv/bin/python benches/peers/broker_latency.py 127.0.0.1:19092 20000 30

Prints p50/p90/p99/max of (consume time - send time) over the run."""
import sys
import threading
import time
import uuid

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
fetch_wait = sys.argv[4] if len(sys.argv) > 4 else "50"
topic = f"bench.pipe.{uuid.uuid4().hex[:8]}"
admin = AdminClient({"bootstrap.servers": bootstrap})
admin.create_topics([NewTopic(topic, 2, 1, config={"retention.ms": "-1", "retention.bytes": "-1"})])[topic].result()
time.sleep(1)

latencies = []
done = threading.Event()


def consume():
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": topic,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": fetch_wait,
    })
    c.subscribe([topic])
    while not done.is_set():
        m = c.poll(0.1)
        if m is None or m.error():
            continue
        latencies.append(time.monotonic() - float(m.value()))
    c.close()


t = threading.Thread(target=consume)
t.start()
time.sleep(3)
p = Producer({"bootstrap.servers": bootstrap, "linger.ms": "5", "enable.idempotence": "true",
              "acks": "all", "compression.type": "lz4"})
start = time.monotonic()
n = int(rate * seconds)
for i in range(n):
    due = start + i / rate
    now = time.monotonic()
    if due > now:
        time.sleep(due - now)
    p.produce(topic, key=str(i % 1000), value=repr(time.monotonic()))
    p.poll(0)
p.flush()
time.sleep(2)
done.set()
t.join()
lat = sorted(latencies)
q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] * 1000
print(f"bare pipe through {bootstrap}: {len(lat)} of {n} messages at {rate}/s, fetch.wait.max.ms={fetch_wait}: "
      f"p50 {q(0.5):.1f} ms, p90 {q(0.9):.1f} ms, p99 {q(0.99):.1f} ms, max {lat[-1] * 1000:.1f} ms")
