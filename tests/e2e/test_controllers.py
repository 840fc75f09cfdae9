"""Scheduler and controllers on simulated nodes, driven by kubectl (issue 3)."""

import datetime
import json
import os
import re
import subprocess
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from conftest import Kubectl, Server, free_port, skiff_bin


class Agent:
    """A `skiff agent --simulated-nodes` process."""

    def __init__(self, server: Server, nodes: int, prefix: str, log: Path):
        token = (server.data_dir / "server" / "token").read_text().strip()
        self.proc = subprocess.Popen(
            [skiff_bin(), "agent", "--simulated-nodes", str(nodes), "--node-name-prefix", prefix,
             "--server", f"https://127.0.0.1:{server.port}", "--token", token,
             # Renew every 2 s so the short node-monitor grace period below holds.
             "--node-lease-duration-seconds", "8"],
            stdout=open(log, "ab"), stderr=subprocess.STDOUT)

    def kill9(self):
        self.proc.kill()
        self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()


def wait_for(fn, timeout=60.0, interval=0.25, what="condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")


@pytest.fixture(scope="module")
def cluster():
    with tempfile.TemporaryDirectory(prefix="skiff-ctl-") as d:
        d = Path(d)
        s = Server(d / "data", free_port(), extra_args=[
            "--node-monitor-grace-period", "8s",
            "--default-not-ready-toleration-seconds", "5",
            "--default-unreachable-toleration-seconds", "5",
            "--hpa-downscale-stabilization", "5s",
            "--hpa-sync-period", "2s",
        ])
        s.start()
        home = d / "home"
        home.mkdir()
        env = dict(os.environ, HOME=str(home), KUBECONFIG=str(s.kubeconfig))
        kubectl = Kubectl(env)
        stable = Agent(s, 3, "stable", d / "agent-stable.log")
        doomed = Agent(s, 2, "doomed", d / "agent-doomed.log")
        wait_for(lambda: len(re.findall(r"\sReady\s", kubectl("get", "nodes"))) == 5, 30, what="5 ready nodes")
        try:
            yield {"server": s, "kubectl": kubectl, "env": env, "dir": d, "doomed": doomed, "stable": stable}
        finally:
            stable.stop()
            doomed.stop()
            s.stop()


def jget(kubectl, *args):
    return json.loads(kubectl("get", *args, "-o", "json"))


def test_deployment_rollout_history_undo_scale(cluster):
    k = cluster["kubectl"]
    k("create", "deployment", "web", "--image=busybox:1", "--replicas=10")
    k("rollout", "status", "deployment/web", "--timeout=60s")
    pods = jget(k, "pods", "-l", "app=web")["items"]
    assert len(pods) == 10
    assert all(p["status"]["phase"] == "Running" and p["spec"]["nodeName"] for p in pods)

    # Watch availability during the rollout: it may never drop below 10 - maxUnavailable (25% -> 2).
    low = []
    stop = threading.Event()

    def watcher():
        while not stop.is_set():
            d = jget(k, "deployment", "web")
            low.append(d["status"].get("availableReplicas", 0))
            time.sleep(0.1)

    t = threading.Thread(target=watcher)
    t.start()
    k("set", "image", "deployment/web", "busybox=busybox:2")
    k("rollout", "status", "deployment/web", "--timeout=90s")
    stop.set()
    t.join()
    assert min(low) >= 8, f"availability dropped to {min(low)}"
    history = k("rollout", "history", "deployment/web")
    assert re.search(r"^1\s", history, re.M) and re.search(r"^2\s", history, re.M), history
    k("rollout", "undo", "deployment/web")
    k("rollout", "status", "deployment/web", "--timeout=90s")
    d = jget(k, "deployment", "web")
    assert d["spec"]["template"]["spec"]["containers"][0]["image"] == "busybox:1"
    k("scale", "deployment/web", "--replicas=4")
    wait_for(lambda: jget(k, "deployment", "web")["status"].get("replicas") == 4, 30, what="scale to 4")
    k("rollout", "pause", "deployment/web")
    k("set", "image", "deployment/web", "busybox=busybox:3")
    time.sleep(2)
    assert all(c["image"] != "busybox:3" for p in jget(k, "pods", "-l", "app=web")["items"] for c in p["spec"]["containers"])
    k("rollout", "resume", "deployment/web")
    k("rollout", "status", "deployment/web", "--timeout=90s")
    k("rollout", "restart", "deployment/web")
    k("rollout", "status", "deployment/web", "--timeout=90s")


def test_jobs_complete_and_fail(cluster):
    k = cluster["kubectl"]
    job = textwrap.dedent("""\
        apiVersion: batch/v1
        kind: Job
        metadata: {name: five}
        spec:
          completions: 5
          parallelism: 2
          template:
            metadata:
              annotations: {skiff.dev/simulated-exit-code: "0", skiff.dev/simulated-duration: 1s}
            spec:
              restartPolicy: Never
              containers: [{name: c, image: busybox}]
        """)
    k("apply", "-f", "-", input=job)
    failing = job.replace("name: five", "name: failing").replace('"0"', '"1"').replace("completions: 5", "completions: 1\n  backoffLimit: 1")
    k("apply", "-f", "-", input=failing)
    k("wait", "--for=condition=complete", "job/five", "--timeout=90s")
    assert jget(k, "job", "five")["status"]["succeeded"] == 5
    k("wait", "--for=condition=failed", "job/failing", "--timeout=90s")
    cond = [c for c in jget(k, "job", "failing")["status"]["conditions"] if c["type"] == "Failed"][0]
    assert cond["reason"] == "BackoffLimitExceeded"


def owned_by(obj, uid):
    return any(o["uid"] == uid and o.get("controller") for o in obj["metadata"].get("ownerReferences", []))


def parse_time(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))


def test_cronjob_every_minute_creates_jobs(cluster):
    k = cluster["kubectl"]
    cj = json.loads(k("create", "cronjob", "tick", "--image=busybox", "--schedule=*/1 * * * *",
                      "--dry-run=client", "-o", "json"))
    cj["spec"]["jobTemplate"]["spec"]["template"].setdefault("metadata", {})["annotations"] = {
        "skiff.dev/simulated-exit-code": "0", "skiff.dev/simulated-duration": "1s"}
    k("create", "-f", "-", input=json.dumps(cj))
    cj = jget(k, "cronjob", "tick")
    uid = cj["metadata"]["uid"]
    created = parse_time(cj["metadata"]["creationTimestamp"])
    # The first activation is the first minute boundary strictly after creation.
    first = created.replace(second=0) + datetime.timedelta(minutes=1)
    wait = (first - datetime.datetime.now(datetime.timezone.utc)).total_seconds()

    def complete(j):
        return any(c["type"] == "Complete" and c["status"] == "True" for c in j.get("status", {}).get("conditions", []))

    def done_jobs():
        jobs = [j for j in jget(k, "jobs")["items"] if owned_by(j, uid)]
        return [j for j in jobs if complete(j)]

    jobs = wait_for(done_jobs, max(wait, 0) + 20, 0.5, what="a completed job of cronjob tick")
    job = min(jobs, key=lambda j: j["metadata"]["name"])
    scheduled = job["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]
    assert parse_time(scheduled) == first, (scheduled, first)
    assert job["metadata"]["name"] == f"tick-{int(first.timestamp()) // 60}"
    assert job["status"]["succeeded"] == 1
    pods = [p for p in jget(k, "pods", "-l", f"job-name={job['metadata']['name']}")["items"]]
    assert pods and all(p["status"]["phase"] == "Succeeded" for p in pods), [p["status"].get("phase") for p in pods]

    def status_caught_up():
        st = jget(k, "cronjob", "tick").get("status", {})
        return st if st.get("lastSuccessfulTime") and not st.get("active") else False

    st = wait_for(status_caught_up, 15, what="cronjob status with lastSuccessfulTime and no active job")
    # Like upstream: the last scheduled time (not when the Job was made), and the completion
    # time of the last successful Job. (Later Jobs may exist if a minute boundary passed.)
    jobs = [j for j in jget(k, "jobs")["items"] if owned_by(j, uid)]
    assert parse_time(st["lastScheduleTime"]) in {
        parse_time(j["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]) for j in jobs}, st
    assert parse_time(st["lastScheduleTime"]) >= first
    assert st["lastSuccessfulTime"] in {j["status"]["completionTime"] for j in jobs if complete(j)}, st
    assert parse_time(st["lastSuccessfulTime"]) >= parse_time(job["status"]["completionTime"])
    reasons = {e["reason"] for e in jget(k, "events", "--field-selector", "involvedObject.name=tick")["items"]}
    assert {"SuccessfulCreate", "SawCompletedJob"} <= reasons, reasons
    # NAME SCHEDULE TIMEZONE SUSPEND ACTIVE LAST-SCHEDULE AGE
    table = k("get", "cronjob", "tick")
    assert re.search(r"^tick\s+\*/1 \* \* \* \*\s+<none>\s+False\s+0\s+\d+s\s+\d+s", table, re.M), table

    # Deleting the CronJob deletes its Jobs and their pods (background cascade).
    k("delete", "cronjob", "tick")
    wait_for(lambda: not [j for j in jget(k, "jobs")["items"] if owned_by(j, uid)], 30, what="tick's jobs deleted")


def test_daemonset_one_pod_per_node_including_added_node(cluster):
    k = cluster["kubectl"]
    ds = textwrap.dedent("""\
        apiVersion: apps/v1
        kind: DaemonSet
        metadata: {name: logger}
        spec:
          selector: {matchLabels: {app: logger}}
          template:
            metadata: {labels: {app: logger}}
            spec: {containers: [{name: c, image: busybox}]}
        """)
    k("apply", "-f", "-", input=ds)

    def node_names():
        return sorted(n["metadata"]["name"] for n in jget(k, "nodes")["items"])

    def placement():
        pods = [p for p in jget(k, "pods", "-l", "app=logger")["items"] if not p["metadata"].get("deletionTimestamp")]
        return sorted(p["spec"].get("nodeName", "") for p in pods)

    def one_per_node():
        want = node_names()
        got = placement()
        return got if got == want else False

    wait_for(one_per_node, 30, what="one logger per node")
    assert len(placement()) == 5

    # A node that joins later gets its own daemon pod, and only that one.
    late = Agent(cluster["server"], 1, "late", cluster["dir"] / "agent-late.log")
    try:
        wait_for(lambda: "late-0" in node_names(), 30, what="node late-0 registered")
        got = wait_for(one_per_node, 60, what="a logger on late-0 too")
        assert len(got) == 6 and got.count("late-0") == 1, got
        wait_for(lambda: [p["status"].get("phase") for p in jget(k, "pods", "-l", "app=logger", "--field-selector",
                                                                  "spec.nodeName=late-0")["items"]] == ["Running"],
                 30, what="logger on late-0 running")

        def status_counts():
            st = jget(k, "daemonset", "logger").get("status", {})
            return [st.get(f) for f in ("desiredNumberScheduled", "currentNumberScheduled", "numberReady",
                                        "numberAvailable", "updatedNumberScheduled", "numberMisscheduled")]

        wait_for(lambda: status_counts() == [6, 6, 6, 6, 6, 0], 30, what="daemonset status 6/6 ready")
        time.sleep(1)
        assert placement() == node_names(), "no extra daemon pods appear"

        # Clean up while late-0's agent still runs, so it finalizes the deleted pods: deleting
        # the DaemonSet deletes its pods (garbage collector). Nothing else may be left there.
        k("delete", "daemonset", "logger")
        wait_for(lambda: not jget(k, "pods", "-l", "app=logger")["items"], 60, what="logger pods deleted")
        assert jget(k, "pods", "-A", "--field-selector", "spec.nodeName=late-0")["items"] == []
    finally:
        late.stop()
        k.run("delete", "node", "late-0", "--ignore-not-found", check=False)
    wait_for(lambda: node_names() == ["doomed-0", "doomed-1", "stable-0", "stable-1", "stable-2"], 30,
             what="late-0 gone")


def test_statefulset_ordered_pods(cluster):
    k = cluster["kubectl"]
    sts = textwrap.dedent("""\
        apiVersion: apps/v1
        kind: StatefulSet
        metadata: {name: web}
        spec:
          serviceName: web
          replicas: 3
          selector: {matchLabels: {app: sts}}
          template:
            metadata: {labels: {app: sts}}
            spec: {containers: [{name: c, image: busybox}]}
        """)
    k("apply", "-f", "-", input=sts)
    wait_for(lambda: jget(k, "statefulset", "web")["status"].get("readyReplicas") == 3, 60, what="3 ready sts pods")
    pods = sorted(jget(k, "pods", "-l", "app=sts")["items"], key=lambda p: p["metadata"]["creationTimestamp"])
    assert [p["metadata"]["name"] for p in pods] == ["web-0", "web-1", "web-2"]


def test_cascading_deletes(cluster):
    k = cluster["kubectl"]
    k("create", "namespace", "doomed-ns")
    k("create", "deployment", "gone", "--image=busybox", "--replicas=2", "-n", "doomed-ns")
    k("create", "deployment", "kept", "--image=busybox", "--replicas=2", "-n", "doomed-ns")
    wait_for(lambda: len(jget(k, "pods", "-n", "doomed-ns")["items"]) == 4, 60, what="4 pods")
    k("delete", "deployment", "gone", "-n", "doomed-ns")
    wait_for(lambda: not jget(k, "rs", "-n", "doomed-ns", "-l", "app=gone")["items"] and not jget(k, "pods", "-n", "doomed-ns", "-l", "app=gone")["items"], 60, what="gone's rs and pods removed")
    k("delete", "deployment", "kept", "-n", "doomed-ns", "--cascade=orphan")
    time.sleep(2)
    assert len(jget(k, "rs", "-n", "doomed-ns", "-l", "app=kept")["items"]) == 1
    assert len(jget(k, "pods", "-n", "doomed-ns", "-l", "app=kept")["items"]) == 2
    k("delete", "namespace", "doomed-ns", "--timeout=90s")
    assert k.run("get", "namespace", "doomed-ns", check=False).returncode != 0


# The fixture's --hpa-sync-period and --hpa-downscale-stabilization.
HPA_SYNC = 2.0
HPA_DOWN_WINDOW = 5.0


def test_hpa_scales_up_with_load_and_down_after_stabilization(cluster):
    k = cluster["kubectl"]
    ns = ("-n", "hpa")
    k("create", "namespace", "hpa")
    dep = textwrap.dedent("""\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: web, namespace: hpa}
        spec:
          replicas: 2
          selector: {matchLabels: {app: web}}
          template:
            metadata:
              labels: {app: web}
              annotations: {skiff.dev/simulated-cpu: 10m}
            spec:
              containers: [{name: c, image: busybox, resources: {requests: {cpu: 100m}}}]
        """)
    k("apply", "-f", "-", input=dep)
    k("rollout", "status", "deployment/web", *ns, "--timeout=60s")
    k("autoscale", "deployment", "web", "--min=2", "--max=10", "--cpu-percent=50", *ns)

    def hpa():
        return jget(k, "hpa", "web", *ns)

    def utilization(st):
        for m in st.get("currentMetrics") or []:
            if m.get("type") == "Resource" and m["resource"]["name"] == "cpu":
                return m["resource"]["current"].get("averageUtilization")
        return None

    def replicas():
        return jget(k, "deployment", "web", *ns)["spec"]["replicas"]

    def hpa_status_when(pred, timeout, what):
        return wait_for(lambda: (lambda st: st if pred(st) else False)(hpa().get("status", {})), timeout, what=what)

    # Low load (10m of 100m = 10%): the HPA measures it and keeps the minimum. New pods' CPU
    # counts once they have been ready for a metrics window (upstream's initialization rule).
    st = hpa_status_when(lambda st: utilization(st) is not None, 45, "HPA reporting cpu utilization")
    assert utilization(st) == 10, st
    assert st["currentReplicas"] == 2 and st["desiredReplicas"] == 2, st
    assert replicas() == 2

    # Load rises to 200m per pod (200% of the request, 4x the 50% target): scale up. Pods the
    # scale-up creates start from the template's 10m.
    k("annotate", "pods", "-l", "app=web", "skiff.dev/simulated-cpu=200m", "--overwrite", *ns)
    wait_for(lambda: replicas() > 2, 30, what="scale up")
    st = hpa_status_when(lambda st: st.get("desiredReplicas", 0) > 2, 10, "HPA status desiredReplicas > 2")
    # Upstream's default scale-up rate: at most max(4 pods, 100%) per 15 s -> 6 from 2.
    assert 2 < st["desiredReplicas"] <= 6, st
    assert st.get("lastScaleTime") and utilization(st) > 50, st
    table = k("get", "hpa", "web", *ns)
    assert re.search(r"^web\s+Deployment/web\s+cpu: \d+%/50%\s+2\s+10\s+\d+\s", table, re.M), table

    def rescale_events():
        evs = jget(k, "events", *ns, "--field-selector", "involvedObject.kind=HorizontalPodAutoscaler")["items"]
        return [e["message"] for e in evs if e["reason"] == "SuccessfulRescale"]

    ups = wait_for(rescale_events, 10, what="SuccessfulRescale event")
    assert any("above target" in m for m in ups), ups

    # Load drops: the HPA recommends the minimum at once but holds the replicas for the
    # downscale stabilization window (the highest recommendation of the last 5 s wins).
    dropped = time.time()
    k("annotate", "pods", "-l", "app=web", "skiff.dev/simulated-cpu=10m", "--overwrite", *ns)
    held = []

    def scaled_down():
        st = hpa().get("status", {})
        able = [c["reason"] for c in st.get("conditions", []) if c["type"] == "AbleToScale"]
        if "ScaleDownStabilized" in able and (utilization(st) or 100) < 50 and st.get("currentReplicas", 0) > 2:
            held.append(st)
        return replicas() == 2

    wait_for(scaled_down, 45, 0.2, what="scale back down to 2")
    elapsed = time.time() - dropped
    print(f"scale-down {elapsed:.1f}s after the load dropped (window {HPA_DOWN_WINDOW}s)")
    # The last high sample may predate the drop by up to one sync period.
    assert elapsed >= HPA_DOWN_WINDOW - HPA_SYNC - 0.5, f"scaled down after only {elapsed:.1f}s"
    # The HPA did see the low load and held the replicas meanwhile.
    assert held, "never saw AbleToScale=ScaleDownStabilized with low utilization before the scale-down"
    # Each rescale is its own event with its own message (not a repeat of the scale-up's).
    wait_for(lambda: "New size: 2; reason: All metrics below target" in rescale_events(), 10,
             what="scale-down event")
    st = hpa_status_when(lambda st: st.get("currentReplicas") == 2, 20, "HPA status currentReplicas 2")
    assert st["desiredReplicas"] == 2 and (utilization(st) or 0) < 50, st
    k("rollout", "status", "deployment/web", *ns, "--timeout=60s")
    k("delete", "namespace", "hpa", "--wait=false")


def test_unschedulable_message(cluster):
    k = cluster["kubectl"]
    k("run", "huge", "--image=busybox", "--overrides", json.dumps({"spec": {"containers": [{"name": "huge", "image": "busybox", "resources": {"requests": {"cpu": "1000"}}}]}}))

    def message():
        conds = jget(k, "pod", "huge")["status"].get("conditions", [])
        return next((c.get("message") for c in conds if c["type"] == "PodScheduled" and c["status"] == "False"), None)

    msg = wait_for(message, 30, what="PodScheduled=False")
    assert msg.startswith("0/5 nodes are available: 5 Insufficient cpu."), msg
    k("delete", "pod", "huge", "--wait=false")


def test_dead_agent_nodes_are_evacuated(cluster):
    k = cluster["kubectl"]
    k("create", "deployment", "spread", "--image=busybox", "--replicas=10")
    k("rollout", "status", "deployment/spread", "--timeout=60s")
    on_doomed = [p for p in jget(k, "pods", "-l", "app=spread")["items"] if p["spec"]["nodeName"].startswith("doomed")]
    cluster["doomed"].kill9()

    def evacuated():
        nodes = {n["metadata"]["name"]: n for n in jget(k, "nodes")["items"]}
        for name in ("doomed-0", "doomed-1"):
            ready = [c for c in nodes[name]["status"]["conditions"] if c["type"] == "Ready"][0]
            taints = [t["key"] for t in nodes[name]["spec"].get("taints", [])]
            if ready["status"] != "Unknown" or "node.kubernetes.io/unreachable" not in taints:
                return False
        pods = jget(k, "pods", "-l", "app=spread")["items"]
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        return len(live) == 10 and all(p["spec"]["nodeName"].startswith("stable") and p["status"].get("phase") == "Running" for p in live)

    wait_for(evacuated, 90, what="pods replaced on surviving nodes")
    d = jget(k, "deployment", "spread")
    assert d["status"]["availableReplicas"] == 10
    assert len(on_doomed) > 0
