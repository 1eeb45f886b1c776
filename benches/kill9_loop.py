#!/usr/bin/env python3
"""Effectively once across processes on a real broker, under kill -9.

Each run, on a fresh broker (benches/broker.sh, tansu, its storage chosen by
TANSU_STORAGE):

 1. preloads the input topic with `pqa-engine simulate --topic` (a long tail
    of small accounts and a few that qualify; an idempotent producer with
    ordinary batching, so a restart offset usually falls inside a record
    batch);
 2. starts `pqa-engine run` (the shipped config, plus the broker, topics,
    state dir and HTTP port) on one state dir and kills it with SIGKILL
    --kills times, each 1-5 s after it became ready, --pause s after each;
 3. runs it to the end (the consumer group's committed offsets reach the
    partition ends the broker acknowledged to the producer), then SIGTERM;
 4. compares the output topic with a clean `pqa-engine replay` of the same
    history: lost ids, unexpected ids, repeats (each must be byte-identical
    to its first copy), qualified (account, rule) pairs; and the state of
    sampled accounts (`pqa-engine inspect`) with the clean run's.

The engine logs of every process are kept; the lines where it found a range
the broker skipped ("skipped records after a seek") and the seeks back after
a record past the expected offset ("seeking back"; the probes after silence
log at debug level) are counted per run. One JSON line per run goes to OUT/runs.jsonl, and a table
to stdout. Exit status 0 only if every run passed.

    bash benches/kill9_loop.sh --runs 10            # the wrapper sets up a venv and the broker
"""

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition


def sh(*args, **kw):
    return subprocess.run(list(map(str, args)), check=True, **kw)


def broker(cmd, *args):
    sh("bash", "benches/broker.sh", cmd, *args, stdout=subprocess.DEVNULL)


def http_get(port, path, timeout=1.0):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return None, ""


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_topic(bootstrap, topic, partitions, idle_s=5.0, limit_s=300.0):
    """Every record of `topic` from the start, until nothing comes for idle_s."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"kill9-reader-{time.time()}",
                  "enable.auto.commit": False, "enable.partition.eof": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out, last, start = [], time.time(), time.time()
    while time.time() - last < idle_s and time.time() - start < limit_s:
        for m in c.consume(1000, 0.5):
            if m.error():
                continue
            out.append((m.partition(), m.offset(), m.value()))
            last = time.time()
    c.close()
    return out


def committed(bootstrap, group, topic, partitions):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        got = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in got}
    except Exception:  # noqa: BLE001 - the broker may be busy; ask again later
        return {}
    finally:
        c.close()


def metric(text, name):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def inspect(bin_, state, accounts):
    out = sh(bin_, "inspect", "--state-dir", state, *accounts, capture_output=True, text=True).stdout
    return {json.loads(l)["account_id"]: json.loads(l)["state"] for l in out.splitlines()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--accounts", type=int, default=100_000)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--pause", type=float, default=47.0, help="seconds after each kill (15 or more on tansu 0.6.0: see kill9_loop.sh)")
    ap.add_argument("--changelog", choices=["true", "false"], default="true")
    ap.add_argument("--sample", type=int, default=300, help="accounts whose state is compared")
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--catch-up-timeout", type=float, default=900.0)
    a = ap.parse_args()
    work, out = Path(a.work), Path(a.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    storage = os.environ.get("TANSU_STORAGE", "sqlite")
    sim_args = ["--accounts", a.accounts, "--days", a.days, "--max-events", a.events, "--seed", a.seed]

    # The reference: a clean replay of the same history (once).
    history, clean_out, clean_state = work / "history.ndjson", work / "clean.ndjson", work / "clean-state"
    if not clean_out.exists():
        sh(a.bin, "simulate", *sim_args, "--output", history)
        sh(a.bin, "replay", "--input", history, "--output", clean_out, "--state-dir", clean_state)
    clean = [json.loads(l) for l in clean_out.read_text().splitlines()]
    clean_ids = {e["id"] for e in clean}

    def pairs(events):
        return {(e["subject"], r) for e in events if e["type"] == "pqa.account.qualified" for r in e["data"]["rules"]}

    clean_pairs = pairs(clean)
    # Sampled accounts: every one announced, and an even spread of the rest.
    def account_of(line):
        e = json.loads(line)
        return (e.get("context") or {}).get("groupId") or e.get("groupId") or ""

    accounts = sorted({account_of(l) for l in history.open()} - {""})
    sample = sorted({e["subject"] for e in clean} | set(accounts[:: max(1, len(accounts) // a.sample)]))
    clean_view = inspect(a.bin, clean_state, sample)
    print(f"clean replay: {len(clean)} announcements, {len(clean_pairs)} (account, rule) pairs, "
          f"{len(accounts)} accounts with a groupId; comparing {len(sample)} accounts' state", flush=True)

    rng = random.Random(a.seed)
    results = []
    for run in range(1, a.runs + 1):
        t0 = time.time()
        broker("stop")
        broker("start")
        stamp = f"{int(time.time())}-{run}"
        topic, out_t, dlq = f"events-{stamp}", f"out-{stamp}", f"dlq-{stamp}"
        broker("create-topic", topic, a.partitions)
        broker("create-topic", out_t, 1)
        broker("create-topic", dlq, 1)
        pre = sh(a.bin, "simulate", *sim_args, "--topic", topic, "--bootstrap-servers", a.bootstrap,
                 capture_output=True, text=True).stderr
        ends = {int(p): int(o) for p, o in re.findall(r"(\d+):(\d+)", pre.split("partition ends:")[1])}
        assert sum(ends.values()) == a.events, (ends, pre)
        run_dir = work / f"run-{run}"
        state = run_dir / "state"
        run_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        group = f"pqa-kill9-{stamp}"
        cfg = run_dir / "pqa.toml"
        cfg.write_text(f"""
[kafka]
bootstrap_servers = "{a.bootstrap}"
group_id = "{group}"
input_topics = ["{topic}"]
output_topic = "{out_t}"
dlq_topic = "{dlq}"
changelog = {a.changelog}

[state]
dir = "{state}"

[http]
addr = "127.0.0.1:{port}"
""")
        logs = []

        def start(n):
            log = run_dir / f"engine-{n}.log"
            logs.append(log)
            f = log.open("w")
            p = subprocess.Popen([a.bin, "run", "--config", str(cfg)], stdout=f, stderr=subprocess.STDOUT,
                                 env={**os.environ, "RUST_LOG": "info", "NO_COLOR": "1"})
            deadline = time.time() + 180
            while http_get(port, "/readyz")[0] != 200:
                if p.poll() is not None:
                    raise SystemExit(f"engine exited ({p.returncode}), see {log}")
                if time.time() > deadline:
                    raise SystemExit(f"engine not ready in 180 s, see {log}")
                time.sleep(0.1)
            return p

        for k in range(a.kills):
            p = start(k)
            time.sleep(rng.uniform(1.0, 5.0))
            p.kill()
            p.wait()
            time.sleep(a.pause)

        p = start(a.kills)
        deadline = time.time() + a.catch_up_timeout
        caught = False
        while time.time() < deadline:
            c = committed(a.bootstrap, group, topic, a.partitions)
            if c and all(c.get(q, -1) >= e for q, e in ends.items()):
                caught = True
                break
            time.sleep(1.0)
        _, metrics = http_get(port, "/metrics")
        _, ready = http_get(port, "/readyz")
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=60)

        records = read_topic(a.bootstrap, out_t, 1)
        first, differing = {}, 0
        for _, _, v in records:
            eid = json.loads(v)["id"]
            if eid in first and first[eid] != v:
                differing += 1
            first.setdefault(eid, v)
        got = [json.loads(v) for v in first.values()]
        lost = sorted(clean_ids - set(first))
        unexpected = sorted(set(first) - clean_ids)
        view = inspect(a.bin, state, sample)
        state_diff = [acct for acct in sample if view.get(acct) != clean_view.get(acct)]
        text = "".join(l.read_text() for l in logs)
        r = {
            "run": run,
            "storage": storage,
            "changelog": a.changelog,
            "caught_up": caught,
            "sigterm_exit": rc,
            "announcements": len(records),
            "distinct": len(first),
            "clean": len(clean_ids),
            "lost": len(lost),
            "unexpected": len(unexpected),
            "repeats": len(records) - len(first),
            "differing_repeats": differing,
            "pairs_equal": pairs(got) == clean_pairs,
            "lost_pairs": sorted(map(list, clean_pairs - pairs(got)))[:10],
            "state_differs": len(state_diff),
            "state_differs_sample": state_diff[:5],
            "gaps_seen_in_logs": len(re.findall(r"skipped records after a seek", text)),
            "seek_backs_in_logs": len(re.findall(r"seeking back", text)),
            "lost_gaps_in_logs": len(re.findall(r"NOT APPLIED", text)),
            "final_run_gap_metrics": {m: metric(metrics, m) for m in
                                      ["pqa_input_gaps_total", "pqa_input_gap_records_total",
                                       "pqa_changelog_gaps_total", "pqa_changelog_gap_records_total"]},
            "readyz": ready.strip(),
            "seconds": round(time.time() - t0, 1),
        }
        r["passed"] = (caught and rc == 0 and not lost and not unexpected and not differing
                       and r["pairs_equal"] and not state_diff)
        results.append(r)
        with (out / "runs.jsonl").open("a") as f:
            f.write(json.dumps(r) + "\n")
        print(json.dumps(r), flush=True)
        if r["passed"] and os.environ.get("KEEP_STATE") != "1":
            sh("rm", "-rf", state)

    passed = sum(r["passed"] for r in results)
    print(f"\n{passed}/{len(results)} runs passed ({storage} storage, changelog {a.changelog}, "
          f"{a.events} events, {a.kills} kill -9 per run, {a.pause:.0f} s pause)")
    print("| run | lost | unexpected | repeats (differing) | pairs equal | state differs | gaps found in logs | seek-backs | passed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['run']} | {r['lost']} | {r['unexpected']} | {r['repeats']} ({r['differing_repeats']}) | "
              f"{r['pairs_equal']} | {r['state_differs']} | {r['gaps_seen_in_logs']} | {r['seek_backs_in_logs']} | "
              f"{r['passed']} |")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
