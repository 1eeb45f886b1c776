#!/usr/bin/env python3
"""The checks of deploy/ that deploy/check.sh runs (see it for the order).

  check.py prometheusrule [--write]   deploy/kubernetes/prometheusrule.yaml == alerts.yml
  check.py manifests BIN              Kubernetes: schemas (offline), names, ports, probes, config
  check.py compose BIN                docker compose file: services, ports, mounted files, config
  check.py dashboard                  the dashboard JSON: ids, layout, targets, variables
  check.py queries PROM_URL           every dashboard query returns data through Prometheus
  check.py rules PROM_URL             every alert evaluates without error in Prometheus
  check.py render PROM_URL OUT.png    the dashboard drawn from Prometheus's data (matplotlib)

Each check prints `ok: ...` lines, or `FAIL: ...` lines and exits 1.
`manifests`, `compose` and `prometheusrule` need PyYAML and
kubernetes-validate (check.sh installs them in a venv); `queries` and `rules`
need only the standard library.
"""

import json
import math
import os
import re
import subprocess
import sys
import tomllib
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy")
DASHBOARD = os.path.join(DEPLOY, "grafana", "pqa-engine.json")
ALERTS = os.path.join(DEPLOY, "prometheus", "alerts.yml")
K8S = os.path.join(DEPLOY, "kubernetes")
PROMETHEUSRULE = os.path.join(K8S, "base", "prometheusrule.yaml")
COMPOSE = os.path.join(DEPLOY, "compose", "compose.yaml")
DOCKERFILE = os.path.join(DEPLOY, "docker", "Dockerfile")

# Dashboard queries that legitimately return no data from a short demo,
# keyed by (panel title, refId), with the reason. Anything not listed here
# must return at least one finite value.
NO_DATA_IN_DEMO = {
    ("Rule evaluation errors, per hour", "A"):
        "the shipped definition has no rule that fails to evaluate, so pqa_rule_errors_total has no series; "
        "tests/deploy.rs makes a rule fail and checks the metric and its labels",
    ("Time to restore a partition", "A"):
        "the demo's changelog starts empty, so no partition is restored from it and the histogram has no observation",
    ("Time to restore a partition", "B"):
        "the same: 0 restores, so the mean is 0/0",
}

# The values dashboard variables take when the queries are sent to Prometheus.
VARIABLES = {"$__rate_interval": "15s", "$job": "pqa-engine", "$instance": ".+"}

failures = []


def ok(msg):
    print(f"ok: {msg}")


def fail(msg):
    failures.append(msg)
    print(f"FAIL: {msg}")


def done():
    if failures:
        print(f"{len(failures)} problem(s)")
        sys.exit(1)


def yaml():
    import yaml as y  # in the venv of check.sh
    return y


# --------------------------------------------------------------- prometheusrule

def prometheusrule_text():
    y = yaml()
    with open(ALERTS) as f:
        rules = y.safe_load(f)
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "pqa-engine", "labels": {"app.kubernetes.io/name": "pqa-engine"}},
        "spec": rules,
    }
    head = ("# Generated from deploy/prometheus/alerts.yml by `python3 deploy/check.py prometheusrule --write`;\n"
            "# deploy/check.sh fails when the two differ. Edit alerts.yml, not this file.\n")
    class Dumper(y.SafeDumper):
        pass

    def text(dumper, s):  # multi-line expressions as literal blocks, as in alerts.yml
        return dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None)

    Dumper.add_representer(str, text)
    return head + y.dump(doc, Dumper=Dumper, sort_keys=False, width=200)


def check_prometheusrule(write):
    text = prometheusrule_text()
    if write:
        with open(PROMETHEUSRULE, "w") as f:
            f.write(text)
        ok(f"wrote {os.path.relpath(PROMETHEUSRULE, ROOT)}")
        return
    current = open(PROMETHEUSRULE).read() if os.path.exists(PROMETHEUSRULE) else ""
    if current != text:
        fail(f"{os.path.relpath(PROMETHEUSRULE, ROOT)} differs from alerts.yml: "
             "run `python3 deploy/check.py prometheusrule --write`")
    else:
        ok("prometheusrule.yaml holds exactly the rules of alerts.yml")


# --------------------------------------------------------------- manifests

def validate_config(bin_path, toml_path, where):
    r = subprocess.run([bin_path, "validate", "--config", toml_path], capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"{where}: `pqa-engine validate` rejects {os.path.relpath(toml_path, ROOT)}:\n{r.stdout}{r.stderr}")
    else:
        ok(f"{where}: {r.stdout.strip()}")


def http_port(addr):
    host, _, port = addr.rpartition(":")
    return host, int(port)


def render(kdir):
    r = subprocess.run(["kubectl", "kustomize", kdir], capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"kubectl kustomize {os.path.relpath(kdir, ROOT)}: {r.stderr.strip()}")
        return []
    return [d for d in yaml().safe_load_all(r.stdout) if d]


def check_manifests(bin_path):
    import kubernetes_validate

    cfg_path = os.path.join(K8S, "base", "pqa-engine.toml")
    validate_config(bin_path, cfg_path, "kubernetes ConfigMap")
    with open(cfg_path, "rb") as f:
        cfg = tomllib.load(f)
    host, port = http_port(cfg["http"]["addr"])
    if host != "0.0.0.0":
        fail(f"kubernetes: http.addr {cfg['http']['addr']} is not reachable from the kubelet and Prometheus")

    for kdir, extra_kinds in ((K8S, set()), (os.path.join(K8S, "keda"), {"ScaledObject"})):
        docs = render(kdir)
        name = os.path.relpath(kdir, ROOT)
        kinds = sorted(d["kind"] for d in docs)
        want = {"ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget", "ServiceMonitor", "PrometheusRule"} | extra_kinds
        if set(kinds) != want:
            fail(f"{name}: kinds {kinds}, expected {sorted(want)}")
        else:
            ok(f"{name} renders with kubectl kustomize: {', '.join(kinds)}")
        for d in docs:
            kind = d["kind"]
            if d["apiVersion"].startswith(("monitoring.coreos.com/", "keda.sh/")):
                continue  # custom resources: no schema offline; checked below
            for version in ("1.30.0", "1.37.0"):
                try:
                    kubernetes_validate.validate(d, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    fail(f"{name}: {kind}/{d['metadata']['name']} against Kubernetes {version}: {e.message} at {list(e.path)}")
                    break
            else:
                ok(f"{name}: {kind}/{d['metadata']['name']} is valid against the Kubernetes 1.30 and 1.37 schemas (strict)")
        by_kind = {d["kind"]: d for d in docs}
        cross_check(name, by_kind, cfg, port)


def cross_check(name, k, cfg, port):
    sts, svc, cm = k.get("StatefulSet"), k.get("Service"), k.get("ConfigMap")
    if not (sts and svc and cm):
        return
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    c = pod["containers"][0]
    checks = []

    def expect(cond, what):
        checks.append(what)
        if not cond:
            fail(f"{name}: {what}")

    expect(spec["serviceName"] == svc["metadata"]["name"], "StatefulSet serviceName is the headless Service")
    expect(svc["spec"].get("clusterIP") == "None", "the Service is headless")
    expect(spec["podManagementPolicy"] == "Parallel", "podManagementPolicy is Parallel")
    sel = spec["selector"]["matchLabels"]
    expect(all(labels.get(a) == b for a, b in sel.items()), "the StatefulSet selector matches its pods")
    expect(all(labels.get(a) == b for a, b in svc["spec"]["selector"].items()), "the Service selects the pods")
    pdb = k["PodDisruptionBudget"]
    expect(all(labels.get(a) == b for a, b in pdb["spec"]["selector"]["matchLabels"].items()), "the PodDisruptionBudget selects the pods")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    expect(ports.get("http") == port, f"container port `http` is {port}, the port of http.addr")
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    expect("http" in svc_ports and svc_ports["http"]["targetPort"] in ("http", port) and svc_ports["http"]["port"] == port,
           "the Service port `http` targets the container port")
    expect(c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}, "readiness probe is GET /readyz on `http`")
    expect(c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}, "liveness probe is GET /healthz on `http`")
    expect(c.get("startupProbe", {}).get("httpGet") == {"path": "/healthz", "port": "http"}, "startup probe is GET /healthz on `http`")
    expect(pod.get("terminationGracePeriodSeconds", 30) >= 90, "terminationGracePeriodSeconds covers the final commit (>= 90 s)")
    mem_req, mem_lim = c["resources"]["requests"]["memory"], c["resources"]["limits"]["memory"]
    expect(mem_req == "768Mi" and mem_lim == "1Gi", "memory request/limit are the measured 768Mi/1Gi")
    # The config file comes from the ConfigMap, at the path given to --config.
    args = c["args"]
    cfg_file = args[args.index("--config") + 1]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    cfg_vol = [n for n, v in vols.items() if v.get("configMap", {}).get("name") == cm["metadata"]["name"]]
    expect(len(cfg_vol) == 1 and os.path.dirname(cfg_file) == mounts.get(cfg_vol[0]),
           "--config names a file in the mounted ConfigMap")
    expect(os.path.basename(cfg_file) in cm["data"], "the ConfigMap holds the file --config names")
    # State on the pod's own volume.
    claims = [t["metadata"]["name"] for t in spec["volumeClaimTemplates"]]
    state_dir = cfg["state"]["dir"]
    expect(any(state_dir.startswith(mounts.get(n, "//") + "/") for n in claims),
           f"state.dir {state_dir} is on a volumeClaimTemplate")
    storage = spec["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    expect(storage == "10Gi", "the state volume is the 10Gi that PqaStateDiskNearlyFull assumes")
    expect(pod["securityContext"].get("runAsNonRoot") is True and pod["securityContext"].get("runAsUser") == 10001,
           "pods run as the image's non-root user 10001")
    # Monitoring.
    sm = k["ServiceMonitor"]
    expect(all(svc["metadata"]["labels"].get(a) == b for a, b in sm["spec"]["selector"]["matchLabels"].items()),
           "the ServiceMonitor selects the Service")
    expect(sm["spec"]["endpoints"][0]["port"] == "http" and sm["spec"]["endpoints"][0]["path"] == "/metrics",
           "the ServiceMonitor scrapes /metrics on `http`")
    expect(svc["metadata"]["name"] == "pqa-engine", "the Service is named pqa-engine, the job label alerts.yml selects")
    so = k.get("ScaledObject")
    if so:
        ref = so["spec"]["scaleTargetRef"]
        expect(ref["kind"] == "StatefulSet" and ref["name"] == sts["metadata"]["name"], "the ScaledObject scales the StatefulSet")
        t = so["spec"]["triggers"][0]
        expect(t["type"] == "kafka", "the ScaledObject scales on Kafka lag")
        m = t["metadata"]
        expect(m["consumerGroup"] == cfg["kafka"]["group_id"], "the ScaledObject watches kafka.group_id")
        expect(m["topic"] in cfg["kafka"]["input_topics"], "the ScaledObject watches an input topic")
        expect(m["bootstrapServers"] == cfg["kafka"]["bootstrap_servers"], "the ScaledObject uses kafka.bootstrap_servers")
    bad = [c for c in checks if any(f.startswith(f"{name}: {c}") for f in failures)]
    if not bad:
        ok(f"{name}: {len(checks)} cross-checks of names, ports, probes, volumes and config")


# --------------------------------------------------------------- compose

def check_compose(bin_path):
    y = yaml()
    with open(COMPOSE) as f:
        comp = y.safe_load(f)
    services = comp["services"]
    want = {"kafka", "kafka-init", "pqa-engine", "simulator", "prometheus", "grafana"}
    if set(services) != want:
        fail(f"compose: services {sorted(services)}, expected {sorted(want)}")
    else:
        ok(f"compose: services {', '.join(sorted(services))}")
    base = os.path.dirname(COMPOSE)
    for sname, s in services.items():
        for v in s.get("volumes", []):
            src = v.split(":")[0] if isinstance(v, str) else v.get("source")
            if src.startswith("."):
                p = os.path.normpath(os.path.join(base, src))
                if not os.path.exists(p):
                    fail(f"compose: {sname} mounts {src}, which does not exist")
        b = s.get("build")
        if b:
            ctx = os.path.normpath(os.path.join(base, b["context"]))
            df = os.path.join(ctx, b["dockerfile"])
            if not os.path.exists(df):
                fail(f"compose: {sname} builds {df}, which does not exist")
    eng = services["pqa-engine"]
    env = eng.get("environment", {})
    if env.get("PQA_HTTP__ADDR") != "0.0.0.0:9464" and "PQA_HTTP__ADDR" in env:
        fail("compose: pqa-engine must serve HTTP on 0.0.0.0:9464 inside its container")
    # The engine's config as compose sets it, checked by the engine itself.
    cfg = os.path.normpath(os.path.join(base, "pqa-engine.toml"))
    validate_config(bin_path, cfg, "compose")
    with open(cfg, "rb") as f:
        c = tomllib.load(f)
    boot = env.get("PQA_KAFKA__BOOTSTRAP_SERVERS", c["kafka"]["bootstrap_servers"])
    if not boot.startswith("kafka:"):
        fail(f"compose: the engine's bootstrap servers {boot} are not the kafka service")
    topic = c["kafka"]["input_topics"][0]
    init = " ".join(services["kafka-init"]["command"]) if isinstance(services["kafka-init"]["command"], list) else services["kafka-init"]["command"]
    for t in (topic, c["kafka"]["output_topic"], c["kafka"]["dlq_topic"]):
        if t not in init:
            fail(f"compose: kafka-init does not create topic {t}")
    sim = services["simulator"]["command"]
    sim = " ".join(sim) if isinstance(sim, list) else sim
    if f"--topic {topic}" not in sim:
        fail(f"compose: the simulator does not write to the input topic {topic}")
    with open(os.path.join(base, "prometheus.yml")) as f:
        prom = y.safe_load(f)
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    if "pqa-engine" not in jobs or jobs["pqa-engine"]["static_configs"][0]["targets"] != ["pqa-engine:9464"]:
        fail("compose: prometheus.yml must scrape job pqa-engine at pqa-engine:9464")
    if not failures:
        ok("compose: mounted files exist, config validates, topics, simulator and scrape job agree")


# --------------------------------------------------------------- prometheus

def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def query(prom, expr):
    return get(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))


def substitute(expr):
    for k in sorted(VARIABLES, key=len, reverse=True):
        expr = expr.replace(k, VARIABLES[k])
    return expr


def finite(result):
    for s in result:
        v = s.get("value", [None, "NaN"])[1]
        try:
            if math.isfinite(float(v)):
                return True
        except ValueError:
            pass
    return False


def panels(dash):
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])


def check_dashboard():
    with open(DASHBOARD) as f:
        dash = json.load(f)
    ps = list(panels(dash))
    ids = [p["id"] for p in ps]
    if len(set(ids)) != len(ids):
        fail("dashboard: panel ids are not unique")
    cells = {}
    for p in ps:
        g = p["gridPos"]
        if g["x"] < 0 or g["x"] + g["w"] > 24:
            fail(f"dashboard: panel `{p['title']}` is outside the 24 columns")
        for x in range(g["x"], g["x"] + g["w"]):
            for yy in range(g["y"], g["y"] + g["h"]):
                if (x, yy) in cells:
                    fail(f"dashboard: panels `{p['title']}` and `{cells[(x, yy)]}` overlap")
                    break
                cells[(x, yy)] = p["title"]
        if p["type"] in ("row", "text"):
            continue
        refs = [t["refId"] for t in p.get("targets", [])]
        if not refs or len(set(refs)) != len(refs):
            fail(f"dashboard: panel `{p['title']}` has no targets or repeats a refId")
        for t in p["targets"]:
            if t.get("datasource", {}).get("uid") != "${datasource}":
                fail(f"dashboard: panel `{p['title']}` ({t['refId']}) does not use the $datasource variable")
            if '$job' not in t["expr"] or '$instance' not in t["expr"]:
                fail(f"dashboard: panel `{p['title']}` ({t['refId']}) does not filter by $job and $instance")
    names = [v["name"] for v in dash["templating"]["list"]]
    if names != ["datasource", "job", "instance"]:
        fail(f"dashboard: variables {names}, expected datasource, job, instance")
    if not any("pqa_definition_info" in t["expr"] for p in ps for t in p.get("targets", [])):
        fail("dashboard: no panel shows the definitions running (pqa_definition_info)")
    if not failures:
        ok(f"dashboard: {len(ps)} panels, unique ids, no overlap, every query filtered by $job and $instance, "
           "variables datasource/job/instance")


def check_queries(prom):
    with open(DASHBOARD) as f:
        dash = json.load(f)
    n = 0
    for p in panels(dash):
        for t in p.get("targets", []):
            n += 1
            key = (p["title"], t["refId"])
            expr = substitute(t["expr"])
            try:
                r = query(prom, expr)
            except Exception as e:  # an HTTP 400 is a query Prometheus rejects
                fail(f"panel `{p['title']}` ({t['refId']}): query error {e}: {expr}")
                continue
            result = r["data"]["result"]
            has = finite(result)
            if key in NO_DATA_IN_DEMO:
                note = "returns data now; the allow-list entry can go" if has else "no data, as allowed"
                print(f"ok: panel `{p['title']}` ({t['refId']}): {note}: {NO_DATA_IN_DEMO[key]}")
            elif has:
                ok(f"panel `{p['title']}` ({t['refId']}): {len(result)} series")
            else:
                fail(f"panel `{p['title']}` ({t['refId']}): no finite value ({len(result)} series): {expr}")
    stale = [k for k in NO_DATA_IN_DEMO if not any(p["title"] == k[0] for p in panels(dash))]
    for k in stale:
        fail(f"allow-list names a panel that no longer exists: {k}")
    # The template variables.
    for v in dash["templating"]["list"]:
        if v["type"] != "query":
            continue
        q = v["query"]["query"]
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q)
        sel = substitute(m.group(1))
        vals = get(f"{prom}/api/v1/label/{m.group(2)}/values?" + urllib.parse.urlencode({"match[]": sel}))["data"]
        if not vals:
            fail(f"variable `{v['name']}`: no values for {q}")
        else:
            ok(f"variable `{v['name']}`: {vals}")
    ok(f"{n} panel queries sent to Prometheus")


def check_rules(prom):
    groups = get(f"{prom}/api/v1/rules")["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    with open(ALERTS) as f:
        names = re.findall(r"^\s*- alert:\s*(\S+)", f.read(), re.M)
    if sorted(r["name"] for r in rules) != sorted(names):
        fail(f"Prometheus loaded {sorted(r['name'] for r in rules)}, alerts.yml has {sorted(names)}")
    for r in rules:
        if r.get("health") != "ok":
            fail(f"alert {r['name']}: health {r.get('health')}: {r.get('lastError')}")
    firing = [r["name"] for r in rules if r.get("state") == "firing"]
    if not failures:
        ok(f"Prometheus evaluates all {len(rules)} alerts without error (firing now: {firing or 'none'})")


def render_png(prom, out, minutes=3):
    """Draws the dashboard's panels, laid out by their gridPos, from
    query_range over the last `minutes`: a picture of what Grafana would
    show, without Grafana."""
    import time

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(DASHBOARD) as f:
        dash = json.load(f)
    end = time.time()
    start = end - minutes * 60
    ps = list(panels(dash))
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in ps)
    unit_h = 0.36  # inches per grid row
    fig = plt.figure(figsize=(24, rows * unit_h))
    fig.patch.set_facecolor("#111217")

    def box(g, pad=0.004):
        # Room above for the title and below for the axis label.
        left, width = 0.03, 0.965  # room for the y tick labels of the first column
        x0 = left + g["x"] / 24 * width + pad
        w = g["w"] / 24 * width - 2 * pad
        top = 1 - (g["y"] + 0.7) / rows
        bottom = 1 - (g["y"] + g["h"] - 0.6) / rows
        return [x0, bottom, w, top - bottom]

    for p in ps:
        g = p["gridPos"]
        if p["type"] == "row":
            fig.text(0.005, 1 - (g["y"] + 0.7) / rows, p["title"], color="white", fontsize=13, weight="bold")
            continue
        ax = fig.add_axes(box(g))
        ax.set_facecolor("#181b1f")
        for sp in ax.spines.values():
            sp.set_color("#333")
        ax.tick_params(colors="#bbb", labelsize=7)
        ax.set_title(p["title"], color="white", fontsize=9, loc="left")
        if p["type"] == "text":
            ax.set_xticks([]); ax.set_yticks([])
            ax.text(0.02, 0.5, "Reserved: definition version and reloads\n(pqa_definition_info, pqa_definition_reloads_total,\n"
                    "pqa_definition_reload_failures_total: not exported yet)",
                    color="#bbb", fontsize=8, va="center", transform=ax.transAxes)
            continue
        if p["type"] == "stat":
            ax.set_xticks([]); ax.set_yticks([])
            texts = []
            for t in p["targets"]:
                r = query(prom, substitute(t["expr"]))["data"]["result"]
                for sres in r:
                    v = float(sres["value"][1])
                    unit = p["fieldConfig"]["defaults"].get("unit")
                    if p["title"].startswith("Ready"):
                        texts.append("ready" if v == 1 else "not ready")
                    elif unit == "percentunit":
                        texts.append(f"{v * 100:.2f}%")
                    else:
                        texts.append(f"{v:,.0f}")
            ax.text(0.5, 0.45, "  ".join(texts) or "no data", color="#73bf69", fontsize=20, ha="center", va="center",
                    transform=ax.transAxes, weight="bold")
            continue
        n = 0
        for t in p["targets"]:
            r = get(f"{prom}/api/v1/query_range?" + urllib.parse.urlencode(
                {"query": substitute(t["expr"]), "start": start, "end": end, "step": 2}))["data"]["result"]
            for sres in r:
                xs = [float(v[0]) - end for v in sres["values"]]
                ys = [float(v[1]) for v in sres["values"]]
                if all(not math.isfinite(y) or y == 0 for y in ys) and len(r) > 6:
                    continue  # like Grafana's "hide zero series" for the long label sets
                label = t.get("legendFormat", "")
                for k, v in sres["metric"].items():
                    label = label.replace("{{" + k + "}}", v)
                ax.plot(xs, ys, linewidth=1, label=label[:40])
                n += 1
        if n == 0:
            ax.text(0.5, 0.5, "no data", color="#888", ha="center", va="center", transform=ax.transAxes)
        elif n <= 8:
            ax.legend(fontsize=6, loc="upper left", facecolor="#181b1f", labelcolor="#ddd", framealpha=0.7)
        ax.set_xlabel("seconds before now", color="#888", fontsize=6)
    fig.suptitle(f"pqa-engine dashboard, rendered from Prometheus ({prom}) over the last {minutes} min of `pqa-engine demo`",
                 color="white", fontsize=11, y=0.999)
    fig.savefig(out, dpi=60, facecolor=fig.get_facecolor())
    ok(f"rendered the dashboard to {out}")


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        sys.exit(2)
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "prometheusrule":
        check_prometheusrule("--write" in args)
    elif cmd == "manifests":
        check_manifests(args[0])
    elif cmd == "compose":
        check_compose(args[0])
    elif cmd == "dashboard":
        check_dashboard()
    elif cmd == "queries":
        check_queries(args[0])
    elif cmd == "rules":
        check_rules(args[0])
    elif cmd == "render":
        render_png(args[0], args[1])
    else:
        print(__doc__)
        sys.exit(2)
    done()


if __name__ == "__main__":
    main()
