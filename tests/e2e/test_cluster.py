"""Cluster networking (issue 5) in a real 3-node `skiff cluster`: each node an agent in its own
network namespace on a host bridge, pods on real containers, Services through nftables, DNS
served by the agents, NetworkPolicy enforced, and a teardown that leaves the host as it was."""

import json
import os
import re
import subprocess
import tempfile
import textwrap
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from conftest import Kubectl, skiff_bin
from test_node import build_test_images, wait_for

NAME = f"e2e{os.getpid() % 100000}"
NODES = [f"{NAME}-{i}" for i in (1, 2, 3)]


def host_state():
    """What a cluster may change on this host, and must restore."""
    def run(*cmd):
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    links = sorted(line.split(":")[1].strip().split("@")[0]
                   for line in run("ip", "-o", "link").splitlines())
    cgroups = sorted(str(p) for p in Path("/sys/fs/cgroup").glob("*/skiff/**"))
    return {
        "netns": sorted(run("ip", "netns", "list").split()),
        "links": links,
        "routes": run("ip", "route", "show", "table", "all"),
        "nft": run("nft", "list", "ruleset"),
        "mounts": sorted(line.split()[4] for line in
                         Path("/proc/self/mountinfo").read_text().splitlines()),
        "cgroups": cgroups,
    }


def skiff_procs():
    """PIDs of every process running the skiff binary (servers, agents, shims)."""
    exe = os.path.realpath(skiff_bin())
    pids = set()
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if os.readlink(p / "exe") == exe:
                    pids.add(int(p.name))
            except OSError:
                pass
    return pids


def cluster(*args, check=True):
    p = subprocess.run([skiff_bin(), "cluster", *args], capture_output=True, text=True, timeout=180)
    if check and p.returncode != 0:
        raise AssertionError(f"skiff cluster {' '.join(args)} failed ({p.returncode}):\n"
                             f"{p.stdout}\n{p.stderr}")
    return p


@pytest.fixture(scope="module")
def kind():
    tar = build_test_images()
    with tempfile.TemporaryDirectory(prefix="skiff-cluster-") as d:
        d = Path(d)
        data = d / "cluster"
        before = host_state()
        procs_before = skiff_procs()
        cluster("up", "--name", NAME, "--nodes", "3", "--data-dir", str(data),
                "--server-arg=--node-monitor-grace-period=20s")
        # `load` imports into every node, as `kind load image-archive` does.
        cluster("load", "--name", NAME, "--data-dir", str(data), str(tar))
        home = d / "home"
        home.mkdir()
        env = dict(os.environ, HOME=str(home), KUBECONFIG=str(data / "kubeconfig.yaml"))
        k = Kubectl(env)
        state = json.loads((data / "cluster.json").read_text())
        ctx = {"kubectl": k, "data": data, "state": state, "before": before,
               "procs_before": procs_before, "down": False}
        try:
            yield ctx
        finally:
            if not ctx["down"]:
                cluster("down", "--name", NAME, "--data-dir", str(data), check=False)


def apply(k, manifest):
    k("apply", "-f", "-", input=textwrap.dedent(manifest))


def pods(k, selector):
    items = json.loads(k("get", "pods", "-l", selector, "-o", "json"))["items"]
    return {p["metadata"]["name"]: p for p in items}


def ready(p):
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in p["status"].get("conditions", []))


def wait_pods_ready(k, selector, n, timeout=60):
    def check():
        ps = pods(k, selector)
        live = {name: p for name, p in ps.items() if "deletionTimestamp" not in p["metadata"]}
        return len(live) == n and all(ready(p) for p in live.values()) and live
    return wait_for(check, timeout, what=f"{n} ready pods {selector}")


def run_pod(k, name, node, labels="app=probe"):
    k("run", name, f"--labels={labels}", "--image=busybox", "--image-pull-policy=Never",
      "--overrides", json.dumps({"spec": {"nodeName": node}}), "--", "sleep", "3600")
    wait_for(lambda: ready(json.loads(k("get", "pod", name, "-o", "json"))), 60,
             what=f"pod {name} ready")


WEB = """\
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web}
    spec:
      replicas: 3
      selector: {matchLabels: {app: web}}
      template:
        metadata: {labels: {app: web}}
        spec:
          terminationGracePeriodSeconds: 2
          topologySpreadConstraints:
          - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule,
             labelSelector: {matchLabels: {app: web}}}
          containers:
          - name: httpd
            image: busybox
            imagePullPolicy: Never
            command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www"]
            ports: [{containerPort: 80, name: http}]
            readinessProbe: {tcpSocket: {port: 80}, periodSeconds: 1}
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: web}
    spec:
      selector: {app: web}
      ports: [{name: http, port: 80, targetPort: http}]
    """


@pytest.fixture(scope="module")
def web(kind):
    k = kind["kubectl"]
    apply(k, WEB)
    wait_pods_ready(k, "app=web", 3)
    run_pod(k, "client", NODES[0], labels="app=client")
    return kind


def test_nodes_have_pod_cidrs_and_pods_reach_each_other_across_nodes(web):
    k = web["kubectl"]
    nodes = json.loads(k("get", "nodes", "-o", "json"))["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == NODES
    cidrs = [n["spec"]["podCIDR"] for n in nodes]
    assert len(set(cidrs)) == 3 and all(re.fullmatch(r"10\.42\.\d+\.0/24", c) for c in cidrs)
    by_node = {p["spec"]["nodeName"]: p for p in pods(k, "app=web").values()}
    assert sorted(by_node) == NODES, "topology spread puts one web pod on every node"
    for node in NODES[1:]:
        p = by_node[node]
        assert p["status"]["podIP"] in ipaddress_range(
            next(n["spec"]["podCIDR"] for n in nodes if n["metadata"]["name"] == node))
        page = k("exec", "client", "--", "timeout", "3", "wget", "-qO-",
                 f"http://{p['status']['podIP']}/")
        assert page.strip() == p["metadata"]["name"]


def ipaddress_range(cidr):
    import ipaddress
    return [str(a) for a in ipaddress.ip_network(cidr)]


def test_service_spreads_load_follows_deletes_and_scale(web):
    k = web["kubectl"]
    out = k("exec", "client", "--", "sh", "-c",
            "for i in $(seq 300); do wget -qO- http://web/ || echo FAIL; done", timeout=120)
    counts = Counter(out.split())
    names = set(pods(k, "app=web"))
    assert "FAIL" not in counts, counts
    assert set(counts) == names, counts
    assert min(counts.values()) >= 60, f"each of 3 pods gets at least 20% of 300: {counts}"

    # Delete one pod while a client requests continuously (retrying a failed request once):
    # no request fails, and the deleted pod stops answering within 2 s.
    victim = sorted(names)[0]
    lines = []
    loop = ("end=$(( $(date +%s) + 8 )); while [ $(date +%s) -lt $end ]; do "
            "wget -qO- -T 2 http://web/ 2>/dev/null || wget -qO- http://web/ 2>/dev/null || echo FAIL; "
            "done")
    proc = subprocess.Popen(["kubectl", "exec", "client", "--", "sh", "-c", loop],
                            stdout=subprocess.PIPE, text=True, env=k.env)

    def read():
        for line in proc.stdout:
            lines.append((time.monotonic(), line.strip()))
    reader = threading.Thread(target=read)
    reader.start()
    wait_for(lambda: len(lines) > 20, 10, what="the client loop running")
    deleted_at = time.monotonic()
    k("delete", "pod", victim, "--wait=false")
    proc.wait(30)
    reader.join()
    assert not [l for _, l in lines if l == "FAIL"], "no request fails when it is retried once"
    late = [(round(t - deleted_at, 2), l) for t, l in lines if l == victim and t > deleted_at + 2]
    assert not late, f"{victim} still answered more than 2 s after its deletion: {late[:5]}"
    assert len([1 for t, _ in lines if t > deleted_at + 2]) > 20, "the loop ran on after the delete"

    # Scaling up adds the new pods to the rotation.
    k("scale", "deployment", "web", "--replicas=4")
    live = wait_pods_ready(k, "app=web", 4)
    out = k("exec", "client", "--", "sh", "-c",
            "for i in $(seq 200); do wget -qO- http://web/ || echo FAIL; done", timeout=120)
    assert set(out.split()) == set(live), Counter(out.split())
    k("scale", "deployment", "web", "--replicas=3")
    wait_pods_ready(k, "app=web", 3)


def test_dns_names_and_service_env(web):
    k = web["kubectl"]
    apply(k, """\
        apiVersion: v1
        kind: Service
        metadata: {name: db}
        spec:
          clusterIP: None
          selector: {app: db}
          ports: [{port: 80, name: http}]
        ---
        apiVersion: apps/v1
        kind: StatefulSet
        metadata: {name: db}
        spec:
          serviceName: db
          replicas: 2
          selector: {matchLabels: {app: db}}
          template:
            metadata: {labels: {app: db}}
            spec:
              containers:
              - {name: c, image: busybox, imagePullPolicy: Never, command: [sleep, "3600"]}
        """)
    dbs = wait_pods_ready(k, "app=db", 2)
    cluster_ip = k("get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}")

    def resolve(name):
        # busybox nslookup tries every search domain and exits 1 if any of them is NXDOMAIN;
        # the answer for the name that exists is in the output.
        p = k.run("exec", "client", "--", "nslookup", name, check=False)
        return re.findall(r"Name:\s+(\S+)\s+Address: (\S+)", p.stdout)

    assert ("web.default.svc.cluster.local", cluster_ip) in resolve("web.default.svc.cluster.local")
    assert ("web.default.svc.cluster.local", cluster_ip) in resolve("web")
    db0 = dbs["db-0"]["status"]["podIP"]
    assert ("db-0.db.default.svc.cluster.local", db0) in resolve("db-0.db.default.svc.cluster.local")
    resolv = k("exec", "client", "--", "cat", "/etc/resolv.conf")
    assert "nameserver 10.43.0.10" in resolv
    assert "search default.svc.cluster.local svc.cluster.local cluster.local" in resolv
    assert "options ndots:5" in resolv
    env = k("exec", "client", "--", "env")
    assert f"WEB_SERVICE_HOST={cluster_ip}" in env.split()
    assert "WEB_SERVICE_PORT=80" in env.split()


def test_node_port_and_load_balancer_answer_on_every_node(web):
    k = web["kubectl"]
    k("expose", "deployment", "web", "--name=web-np", "--type=NodePort", "--port=80",
      "--target-port=80")
    k("expose", "deployment", "web", "--name=web-lb", "--type=LoadBalancer", "--port=8080",
      "--target-port=80")
    node_port = int(k("get", "svc", "web-np", "-o", "jsonpath={.spec.ports[0].nodePort}"))
    assert 30000 <= node_port <= 32767
    addrs = [n["ip"] for n in web["state"]["nodes"]]
    lb = wait_for(lambda: k("get", "svc", "web-lb", "-o",
                            "jsonpath={.status.loadBalancer.ingress[*].ip}").split(), 20,
                  what="the LoadBalancer's ingress addresses")
    assert sorted(lb) == sorted(addrs)
    names = set(pods(k, "app=web"))
    for addr in addrs:
        for port in (node_port, 8080):
            # Straight to the node, whatever proxy the environment names.
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(f"http://{addr}:{port}/", timeout=3) as r:
                page = r.read().decode().strip()
            assert page in names, (addr, port, page)
    k("delete", "svc", "web-np", "web-lb")

    # hostPort: the pod's port on its node's address.
    apply(k, f"""\
        apiVersion: v1
        kind: Pod
        metadata: {{name: hostport, labels: {{app: hostport}}}}
        spec:
          nodeName: {NODES[1]}
          terminationGracePeriodSeconds: 1
          containers:
          - name: httpd
            image: busybox
            imagePullPolicy: Never
            command: ["sh", "-c", "mkdir -p /www && echo hostport > /www/index.html && exec httpd -f -p 80 -h /www"]
            ports: [{{containerPort: 80, hostPort: 8081}}]
            readinessProbe: {{tcpSocket: {{port: 80}}, periodSeconds: 1}}
        """)
    wait_pods_ready(k, "app=hostport", 1)
    node2 = next(n["ip"] for n in web["state"]["nodes"] if n["name"] == NODES[1])
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def fetch_hostport():
        try:
            with opener.open(f"http://{node2}:8081/", timeout=2) as r:
                return r.read().decode().strip()
        except OSError:
            return None
    assert wait_for(fetch_hostport, 10, what="the hostPort answering") == "hostport"
    k("delete", "pod", "hostport", "--wait=true", "--timeout=30s")


def test_network_policy_admits_only_the_selected_clients(web):
    k = web["kubectl"]
    run_pod(k, "intruder", NODES[1], labels="app=intruder")
    web_ip = next(iter(pods(k, "app=web").values()))["status"]["podIP"]

    def fetch(pod, target):
        return k.run("exec", pod, "--", "timeout", "2", "wget", "-qO-", f"http://{target}/",
                     check=False).returncode == 0

    assert fetch("intruder", "web") and fetch("client", "web")
    apply(k, """\
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: only-client}
        spec:
          podSelector: {matchLabels: {app: web}}
          policyTypes: [Ingress]
          ingress:
          - from: [{podSelector: {matchLabels: {app: client}}}]
            ports: [{port: 80}]
        """)
    wait_for(lambda: not fetch("intruder", "web"), 10, what="the policy blocking the intruder")
    for target in ("web", web_ip):
        assert not fetch("intruder", target)
        assert fetch("client", target)
    k("delete", "networkpolicy", "only-client")
    wait_for(lambda: fetch("intruder", "web"), 10, what="the intruder let in again")
    k("delete", "pod", "intruder", "--wait=false")


def test_stopping_a_node_and_cluster_down_leave_the_host_as_before(kind):
    """Runs last in this module: it takes the cluster down."""
    k, data, state = kind["kubectl"], kind["data"], kind["state"]
    node = state["nodes"][2]
    # Empty node 3, then stop its agent: none of its pods leaves anything on the host.
    k("cordon", node["name"])
    uids = [p["metadata"]["uid"]
            for p in json.loads(k("get", "pods", "-A", "-o", "json",
                                  f"--field-selector=spec.nodeName={node['name']}"))["items"]]
    assert uids, "node 3 ran pods"
    k("delete", "pods", "-A", f"--field-selector=spec.nodeName={node['name']}",
      "--wait=true", "--timeout=60s")
    os.kill(node["proc"]["pid"], 15)
    wait_for(lambda: not Path(f"/proc/{node['proc']['pid']}").exists()
             or Path(f"/proc/{node['proc']['pid']}/stat").read_text().split()[2] == "Z",
             15, what="node 3's agent gone")
    mountinfo = Path("/proc/self/mountinfo").read_text()
    for uid in uids:
        assert uid not in mountinfo
        assert not list(Path("/sys/fs/cgroup").glob(f"*/skiff/pod{uid}"))

    cluster("down", "--name", NAME, "--data-dir", str(data))
    kind["down"] = True
    after = host_state()
    for key, was in kind["before"].items():
        assert after[key] == was, f"{key} differs after cluster down"
    assert skiff_procs() <= kind["procs_before"], "no process of the cluster is left"
    assert not (data / "cluster.json").exists()
    # And again: down on a cluster that is gone says so and changes nothing (as `kind delete`).
    p = cluster("down", "--name", NAME, "--data-dir", str(data))
    assert "nothing to do" in p.stderr
    assert host_state() == kind["before"]


def test_vxlan_backend_carries_pods_across_nodes(tmp_path):
    """The same cluster with `--pod-network-backend vxlan`: pods on two nodes reach each other
    and a Service through the VXLAN devices; down leaves the host as before."""
    tar = build_test_images()
    before = host_state()
    name = f"vx{os.getpid() % 100000}"
    data = tmp_path / "cluster"
    cluster("up", "--name", name, "--nodes", "2", "--data-dir", str(data), "--image", str(tar),
            "--agent-arg=--pod-network-backend=vxlan")
    try:
        home = tmp_path / "home"
        home.mkdir()
        k = Kubectl(dict(os.environ, HOME=str(home), KUBECONFIG=str(data / "kubeconfig.yaml")))
        apply(k, f"""\
            apiVersion: v1
            kind: Pod
            metadata: {{name: server, labels: {{app: server}}}}
            spec:
              nodeName: {name}-2
              terminationGracePeriodSeconds: 1
              containers:
              - name: httpd
                image: busybox
                imagePullPolicy: Never
                command: ["sh", "-c", "mkdir -p /www && echo over-vxlan > /www/index.html && exec httpd -f -p 80 -h /www"]
                readinessProbe: {{tcpSocket: {{port: 80}}, periodSeconds: 1}}
            ---
            apiVersion: v1
            kind: Service
            metadata: {{name: server}}
            spec:
              selector: {{app: server}}
              ports: [{{port: 80}}]
            """)
        run_pod(k, "client", f"{name}-1", labels="app=client")
        server = wait_pods_ready(k, "app=server", 1)["server"]
        for target in (server["status"]["podIP"], "server"):
            page = wait_for(lambda: k.run("exec", "client", "--", "timeout", "3", "wget", "-qO-",
                                          f"http://{target}/", check=False).stdout.strip(),
                            15, what=f"a page from {target}")
            assert page == "over-vxlan"
        routes = subprocess.run(["ip", "netns", "exec", f"skiff-{name}-1", "ip", "route", "show",
                                 "proto", "83"], capture_output=True, text=True, check=True).stdout
        assert "dev skiff.vx onlink" in routes, routes
    finally:
        cluster("down", "--name", name, "--data-dir", str(data))
    assert host_state() == before
