"""Scheduler and controllers on simulated nodes, driven by kubectl (issue 3)."""

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


def test_daemonset_and_statefulset(cluster):
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

    def per_node():
        pods = jget(k, "pods", "-l", "app=logger")["items"]
        return sorted(p["spec"].get("nodeName", "") for p in pods)

    wait_for(lambda: len(set(per_node())) == 5 and len(per_node()) == 5, 30, what="one logger per node")
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
