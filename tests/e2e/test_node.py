"""Real containers on a real node (issue 4): a `skiff server` and a `skiff agent` process running
busybox pods as Linux containers, driven by the real kubectl."""

import json
import os
import re
import signal
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from conftest import ROOT, Kubectl, Server, free_port, skiff_bin


def wait_for(fn, timeout=60.0, interval=0.2, what="condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")


def build_test_images() -> Path:
    out = Path(os.environ.get("SKIFF_TEST_IMAGES", ROOT / "target" / "test-images"))
    tar = out / "busybox.tar"
    subprocess.run([str(ROOT / "scripts" / "build-test-images"), str(out)], check=True,
                   capture_output=True)
    return tar


# Unique per run, so that runs on one machine do not share a netns directory.
NODE = f"node-{os.getpid()}"


class Agent:
    """A real `skiff agent` process: this machine as node `name`, on its own bridge and CIDR."""

    def __init__(self, server: Server, data_dir: Path, name: str, bridge: str, cidr: str):
        self.server = server
        self.data_dir = data_dir
        self.args = [
            skiff_bin(), "agent", "--server", f"https://127.0.0.1:{server.port}",
            "--token", (server.data_dir / "server" / "token").read_text().strip(),
            "--data-dir", str(data_dir), "--node-name", name, "--node-ip", "127.0.0.1",
            "--kubelet-port", str(free_port()), "--bridge-name", bridge, "--pod-cidr", cidr,
            "--node-lease-duration-seconds", "8",
            # The tests are about containers: a nearly full disk on the test machine must not
            # taint the node.
            "--eviction-hard", "memory.available<10Mi,nodefs.available<1%",
        ]
        self.log = data_dir / "agent.log"
        self.proc = None

    def start(self):
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.args, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)

    def kill9(self):
        self.proc.kill()
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill9()


@pytest.fixture(scope="module")
def node():
    tar = build_test_images()
    tag = f"{os.getpid() % 10000}"
    with tempfile.TemporaryDirectory(prefix="skiff-node-") as d:
        d = Path(d)
        s = Server(d / "server", free_port(), extra_args=[
            "--node-monitor-grace-period", "20s",
            # test_hpa_on_real_cpu: evaluate often, scale in soon after the load stops.
            "--hpa-sync-period", "3s", "--hpa-downscale-stabilization", "15s",
        ])
        s.start()
        agent_dir = d / "agent"
        subprocess.run([skiff_bin(), "image", "import", "--data-dir", str(agent_dir), str(tar)],
                       check=True, capture_output=True)
        octet = 100 + os.getpid() % 100
        bridge = f"skt{tag}"
        a = Agent(s, agent_dir, NODE, bridge, f"10.250.{octet}.0/24")
        a.start()
        home = d / "home"
        home.mkdir()
        env = dict(os.environ, HOME=str(home), KUBECONFIG=str(s.kubeconfig))
        kubectl = Kubectl(env)
        wait_for(lambda: re.search(NODE + r"\s+Ready", kubectl("get", "nodes")), 30, what="the node Ready")
        try:
            yield {"server": s, "agent": a, "kubectl": kubectl, "env": env, "dir": d}
        finally:
            kubectl.run("delete", "pods", "--all", "--wait=true", "--timeout=60s", check=False)
            a.stop()
            s.stop()
            # Containers outlive the agent by design; with every pod deleted, what remains of
            # the node on this host is its bridge and its network namespace directory.
            subprocess.run(["ip", "link", "del", bridge], capture_output=True)
            # The agent runs in this host's own namespace here: its guard, service proxy and
            # NetworkPolicy tables are left in place on stop (as kube-proxy's are); drop them.
            for table in (f"ip skiff-node-{bridge}", "ip skiff-proxy", "inet skiff-netpol"):
                subprocess.run(["nft", "delete", "table", *table.split()], capture_output=True)
            netns = Path("/run/skiff") / NODE / "netns"
            subprocess.run(["umount", str(netns)], capture_output=True)
            subprocess.run(["rm", "-rf", str(netns.parent)])


def pod_json(kubectl, name):
    return json.loads(kubectl("get", "pod", name, "-o", "json"))


def wait_phase(kubectl, name, phase="Running", timeout=30):
    return wait_for(lambda: (p := pod_json(kubectl, name))["status"].get("phase") == phase and p,
                    timeout, what=f"pod {name} {phase}")


def wait_ready(kubectl, name, timeout=30):
    def ready():
        p = pod_json(kubectl, name)
        cs = p["status"].get("containerStatuses") or []
        return cs and all(c.get("ready") for c in cs) and p
    return wait_for(ready, timeout, what=f"pod {name} ready")


def apply(kubectl, manifest):
    kubectl("apply", "-f", "-", input=textwrap.dedent(manifest))


def test_run_logs_exec_port_forward_cp(node):
    k = node["kubectl"]
    k("run", "web", "--image=busybox", "--image-pull-policy=IfNotPresent", "--",
      "httpd", "-f", "-p", "8080", "-h", "/var/www")
    p = wait_ready(k, "web")
    assert re.match(r"10\.250\.\d+\.\d+", p["status"]["podIP"])
    cs = p["status"]["containerStatuses"][0]
    assert cs["containerID"].startswith("containerd://")
    assert cs["image"] == "docker.io/library/busybox:latest"

    # exec: output, exit codes, hostname, the pod's own network namespace.
    assert k("exec", "web", "--", "hostname").strip() == "web"
    r = k.run("exec", "web", "--", "false", check=False)
    assert r.returncode == 1
    r = k.run("exec", "web", "--", "sh", "-c", "exit 7", check=False)
    assert r.returncode == 7
    assert "inet " + p["status"]["podIP"] in k("exec", "web", "--", "ip", "addr", "show", "eth0")
    # stdin
    assert k("exec", "-i", "web", "--", "cat", input="through stdin\n") == "through stdin\n"

    # port-forward to httpd serving a page
    port = free_port()
    pf = subprocess.Popen(["kubectl", "port-forward", "pod/web", f"{port}:8080"], env=node["env"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = pf.stdout.readline()
        assert "Forwarding from" in line, line
        import urllib.request
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
        assert "hello from skiff" in body
    finally:
        pf.terminate()
        pf.wait()

    # kubectl cp both ways
    src = node["dir"] / "cp-in.txt"
    src.write_text("copied in\n")
    k("cp", str(src), "web:/tmp/in.txt")
    assert k("exec", "web", "--", "cat", "/tmp/in.txt") == "copied in\n"
    dst = node["dir"] / "cp-out.txt"
    k("cp", "web:/tmp/in.txt", str(dst))
    assert dst.read_text() == "copied in\n"


def test_logs_follow_previous_and_attach(node):
    k = node["kubectl"]
    apply(k, """\
        apiVersion: v1
        kind: Pod
        metadata: {name: counter}
        spec:
          containers:
          - name: c
            image: busybox
            imagePullPolicy: IfNotPresent
            command: ["sh", "-c", "i=0; while [ $i -lt 3 ]; do echo line $i; i=$((i+1)); sleep 0.3; done; echo bye >&2; exit 3"]
        """)
    # It exits 3 and is restarted: logs --previous shows the first run.
    def restarted():
        p = pod_json(k, "counter")
        cs = p["status"].get("containerStatuses") or [{}]
        return cs[0].get("restartCount", 0) >= 1 and p
    p = wait_for(restarted, 30, what="a restart")
    last = p["status"]["containerStatuses"][0]["lastState"]["terminated"]
    assert last["exitCode"] == 3 and last["reason"] == "Error"
    prev = k("logs", "counter", "--previous")
    assert prev.splitlines() == ["line 0", "line 1", "line 2", "bye"]
    ts = k("logs", "counter", "--previous", "--timestamps", "--tail=1")
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z bye$", ts.strip()), ts
    # CrashLoopBackOff after the second exit.
    wait_for(lambda: (pod_json(k, "counter")["status"].get("containerStatuses") or [{}])[0].get("state", {}).get("waiting", {}).get("reason") == "CrashLoopBackOff",
             40, what="CrashLoopBackOff")

    k("run", "talker", "--image=busybox", "--image-pull-policy=IfNotPresent", "--",
      "sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done")
    wait_ready(k, "talker")
    f = subprocess.Popen(["kubectl", "logs", "-f", "talker"], env=node["env"], stdout=subprocess.PIPE, text=True)
    try:
        lines = [f.stdout.readline() for _ in range(5)]
        assert all(l.startswith("tick ") for l in lines), lines
    finally:
        f.terminate()
        f.wait()
    a = subprocess.Popen(["kubectl", "attach", "talker"], env=node["env"], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        got = [a.stdout.readline() for _ in range(4)]
        assert any(l.startswith("tick ") for l in got), got
    finally:
        a.terminate()
        a.wait()


def test_env_files_and_config_updates(node):
    k = node["kubectl"]
    apply(k, """\
        apiVersion: v1
        kind: Service
        metadata: {name: web-api}
        spec: {clusterIP: 10.43.0.50, ports: [{name: http, port: 80}], selector: {app: nothing}}
        ---
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: conf}
        data: {color: blue, size: large}
        ---
        apiVersion: v1
        kind: Secret
        metadata: {name: creds}
        stringData: {password: hunter2}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: reader, labels: {app: reader}}
        spec:
          initContainers:
          - {name: first, image: busybox, imagePullPolicy: IfNotPresent, command: ["sh", "-c", "echo first >> /work/order"], volumeMounts: [{name: work, mountPath: /work}]}
          - {name: second, image: busybox, imagePullPolicy: IfNotPresent, command: ["sh", "-c", "echo second >> /work/order"], volumeMounts: [{name: work, mountPath: /work}]}
          containers:
          - name: main
            image: busybox
            imagePullPolicy: IfNotPresent
            command: ["sh", "-c", "echo from-main > /work/shared; sleep 3600"]
            env:
            - {name: COLOR, valueFrom: {configMapKeyRef: {name: conf, key: color}}}
            - {name: PASSWORD, valueFrom: {secretKeyRef: {name: creds, key: password}}}
            - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
            - {name: GREETING, value: "hi $(COLOR)"}
            envFrom: [{configMapRef: {name: conf}, prefix: CM_}]
            volumeMounts:
            - {name: work, mountPath: /work}
            - {name: conf, mountPath: /etc/conf}
            - {name: creds, mountPath: /etc/creds}
          - name: side
            image: busybox
            imagePullPolicy: IfNotPresent
            command: ["sleep", "3600"]
            volumeMounts: [{name: work, mountPath: /shared}]
          volumes:
          - {name: work, emptyDir: {}}
          - {name: conf, configMap: {name: conf}}
          - {name: creds, secret: {secretName: creds}}
        """)
    wait_ready(k, "reader")
    env = k("exec", "reader", "-c", "main", "--", "env")
    for want in ["COLOR=blue", "PASSWORD=hunter2", "POD_NAME=reader", "GREETING=hi blue",
                 "CM_size=large", "WEB_API_SERVICE_HOST=10.43.0.50", "WEB_API_SERVICE_PORT_HTTP=80",
                 "WEB_API_PORT=tcp://10.43.0.50:80"]:
        assert want in env, (want, env)
    assert k("exec", "reader", "-c", "main", "--", "cat", "/work/order") == "first\nsecond\n"
    assert k("exec", "reader", "-c", "side", "--", "cat", "/shared/shared") == "from-main\n"
    assert k("exec", "reader", "-c", "main", "--", "cat", "/etc/conf/color") == "blue"
    assert k("exec", "reader", "-c", "main", "--", "cat", "/etc/creds/password") == "hunter2"
    # Secret volumes are on tmpfs, read-only.
    assert "tmpfs" in k("exec", "reader", "-c", "main", "--", "sh", "-c", "grep /etc/creds /proc/mounts")
    r = k.run("exec", "reader", "-c", "main", "--", "sh", "-c", "echo x > /etc/conf/new", check=False)
    assert r.returncode != 0
    # Updating the ConfigMap updates the file in the running pod.
    k("patch", "configmap", "conf", "-p", '{"data":{"color":"green"}}')
    wait_for(lambda: k("exec", "reader", "-c", "main", "--", "cat", "/etc/conf/color") == "green",
             40, interval=1, what="the configMap file to change")


def test_probes_and_oom(node):
    k = node["kubectl"]
    apply(k, """\
        apiVersion: v1
        kind: Pod
        metadata: {name: probed}
        spec:
          terminationGracePeriodSeconds: 2
          containers:
          - name: live
            image: busybox
            imagePullPolicy: IfNotPresent
            command: ["sh", "-c", "touch /tmp/alive; sleep 3600"]
            livenessProbe: {exec: {command: ["cat", "/tmp/alive"]}, periodSeconds: 1, failureThreshold: 1}
          - name: unready
            image: busybox
            imagePullPolicy: IfNotPresent
            command: ["sleep", "3600"]
            readinessProbe: {exec: {command: ["false"]}, periodSeconds: 1}
          - name: web
            image: busybox
            imagePullPolicy: IfNotPresent
            command: ["httpd", "-f", "-p", "8080", "-h", "/var/www"]
            startupProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 1}
            readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
        """)
    def statuses():
        p = pod_json(k, "probed")
        return {c["name"]: c for c in p["status"].get("containerStatuses") or []}
    try:
        wait_for(lambda: (s := statuses()) and s["live"]["ready"] and s["web"]["ready"], 30, what="live and web ready")
    except AssertionError:
        raise AssertionError(k("describe", "pod", "probed") + k("get", "nodes", "-o", "yaml"))
    s = statuses()
    assert s["unready"]["ready"] is False and s["unready"]["started"] is True
    p = pod_json(k, "probed")
    ready = [c for c in p["status"]["conditions"] if c["type"] == "Ready"][0]
    assert ready["status"] == "False"
    assert "unready" in ready["message"]
    # A failing liveness probe restarts the container.
    k("exec", "probed", "-c", "live", "--", "rm", "/tmp/alive")
    wait_for(lambda: statuses()["live"]["restartCount"] >= 1, 30, what="a liveness restart")

    apply(k, """\
        apiVersion: v1
        kind: Pod
        metadata: {name: hog}
        spec:
          containers:
          - name: hog
            image: busybox
            imagePullPolicy: IfNotPresent
            command: ["sh", "-c", "x=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa; while true; do x=$x$x; done"]
            resources: {limits: {memory: 32Mi}}
        """)
    def oom():
        c = (pod_json(k, "hog")["status"].get("containerStatuses") or [{}])[0]
        t = c.get("lastState", {}).get("terminated") or c.get("state", {}).get("terminated")
        return t and t.get("reason") == "OOMKilled" and c
    c = wait_for(oom, 40, what="OOMKilled")
    assert (c.get("lastState", {}).get("terminated") or c["state"]["terminated"])["exitCode"] == 137


def test_agent_kill9_keeps_containers_and_deletion_cleans_up(node):
    k, agent = node["kubectl"], node["agent"]
    apply(k, """\
        apiVersion: v1
        kind: Pod
        metadata: {name: survivor}
        spec:
          terminationGracePeriodSeconds: 5
          containers:
          - name: c
            image: busybox
            imagePullPolicy: IfNotPresent
            command: ["sh", "-c", "trap 'echo got TERM > /data/term; exit 0' TERM; while true; do sleep 0.2; done"]
            lifecycle: {preStop: {exec: {command: ["sh", "-c", "echo prestop > /data/prestop"]}}}
            volumeMounts: [{name: data, mountPath: /data}]
          volumes: [{name: data, hostPath: {path: /tmp/skiff-e2e-survivor, type: DirectoryOrCreate}}]
        """)
    p = wait_ready(k, "survivor")
    uid = p["metadata"]["uid"]
    start1 = k("exec", "survivor", "--", "cat", "/proc/1/stat").split()[21]
    agent.kill9()
    time.sleep(1)
    agent.start()
    wait_for(lambda: re.search(NODE + r"\s+Ready", k("get", "nodes")), 30, what="the node Ready again")
    time.sleep(2)
    p = wait_ready(k, "survivor")
    assert p["status"]["containerStatuses"][0]["restartCount"] == 0
    start2 = k("exec", "survivor", "--", "cat", "/proc/1/stat").split()[21]
    assert start1 == start2, "the same process runs after the agent restart"

    # kill -9 of the API server: the node keeps its containers; the restarted server finds the
    # pod as it was.
    server = node["server"]
    server.kill9()
    time.sleep(1)
    server.start()
    wait_for(lambda: re.search(NODE + r"\s+Ready", k("get", "nodes")), 30, what="the node Ready after the server restart")
    p = wait_ready(k, "survivor")
    assert p["status"]["containerStatuses"][0]["restartCount"] == 0
    start3 = k("exec", "survivor", "--", "cat", "/proc/1/stat").split()[21]
    assert start1 == start3, "the same process runs after the server restart"

    k("delete", "pod", "survivor", "--wait=true", "--timeout=60s")
    assert Path("/tmp/skiff-e2e-survivor/prestop").read_text() == "prestop\n"
    assert Path("/tmp/skiff-e2e-survivor/term").read_text() == "got TERM\n"
    subprocess.run(["rm", "-rf", "/tmp/skiff-e2e-survivor"])
    # Nothing left: mounts, cgroups, network namespace files, processes.
    left = [l for l in Path("/proc/self/mountinfo").read_text().splitlines() if uid in l]
    assert left == [], "\n".join(left) + (agent.log.read_text()[-3000:])
    leftovers = [str(p) for p in Path("/sys/fs/cgroup").glob(f"*/skiff/pod{uid}")]
    assert leftovers == []
    assert not list((Path("/run/skiff") / NODE / "netns").glob(f"*{uid}*"))


def test_hostile_inputs_are_refused(node):
    k = node["kubectl"]
    apply(k, """\
        apiVersion: v1
        kind: Pod
        metadata: {name: badpath}
        spec:
          containers:
          - {name: c, image: busybox, imagePullPolicy: IfNotPresent, command: ["true"], volumeMounts: [{name: v, mountPath: /v}]}
          volumes: [{name: v, hostPath: {path: /nonexistent/skiff-e2e, type: Directory}}]
        """)
    def failed_mount():
        out = k("get", "events", "--field-selector", "involvedObject.name=badpath", "-o", "json")
        return any(e["reason"] == "FailedMount" and "hostPath type check failed" in e["message"]
                   for e in json.loads(out)["items"])
    wait_for(failed_mount, 30, what="a FailedMount event")
    r = k.run("run", "huge", "--image=busybox", "--overrides",
              '{"spec":{"containers":[{"name":"huge","image":"busybox","resources":{"requests":{"memory":"1000Ei"}}}]}}',
              check=False)
    if r.returncode == 0:
        # Accepted by the API (like upstream) but never schedulable on this node.
        ev = wait_for(lambda: "Insufficient memory" in k("describe", "pod", "huge"), 30, what="Insufficient memory")
        assert ev
    k("delete", "pod", "badpath", "huge", "--ignore-not-found", "--wait=false")
    # A registry on loopback where nothing listens: the pull fails without leaving the host.
    k("run", "noimage", f"--image=127.0.0.1:{free_port()}/nosuch:1")
    wait_for(lambda: (pod_json(k, "noimage")["status"].get("containerStatuses") or [{}])[0]
             .get("state", {}).get("waiting", {}).get("reason") in ("ErrImagePull", "ImagePullBackOff"),
             30, what="ErrImagePull")
    k("delete", "pod", "noimage", "--wait=false")


def test_statefulset_keeps_its_volume(node):
    k = node["kubectl"]
    apply(k, """\
        apiVersion: apps/v1
        kind: StatefulSet
        metadata: {name: db}
        spec:
          serviceName: db
          replicas: 1
          selector: {matchLabels: {app: db}}
          template:
            metadata: {labels: {app: db}}
            spec:
              terminationGracePeriodSeconds: 1
              containers:
              - name: c
                image: busybox
                imagePullPolicy: IfNotPresent
                command: ["sh", "-c", "echo boot >> /data/boots; sleep 3600"]
                volumeMounts: [{name: data, mountPath: /data}]
          volumeClaimTemplates:
          - metadata: {name: data}
            spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
        """)
    wait_ready(k, "db-0")
    assert k("get", "storageclass", "local-path", "-o", "jsonpath={.provisioner}") == "skiff.dev/local-path"
    pvc = json.loads(k("get", "pvc", "data-db-0", "-o", "json"))
    assert pvc["status"]["phase"] == "Bound"
    pv = pvc["spec"]["volumeName"]
    assert k("exec", "db-0", "--", "cat", "/data/boots") == "boot\n"
    uid = pod_json(k, "db-0")["metadata"]["uid"]
    k("delete", "pod", "db-0", "--wait=true")
    wait_for(lambda: (p := pod_json_opt(k, "db-0")) and p["metadata"]["uid"] != uid and p, 30, what="db-0 re-created")
    wait_ready(k, "db-0")
    assert k("exec", "db-0", "--", "cat", "/data/boots") == "boot\nboot\n"
    # Deleting the claim deletes the volume and its data.
    k("delete", "statefulset", "db", "--wait=true")
    wait_for(lambda: pod_json_opt(k, "db-0") is None, 30, what="db-0 gone")
    k("delete", "pvc", "data-db-0", "--wait=true")
    wait_for(lambda: k.run("get", "pv", pv, check=False).returncode != 0, 40, interval=1, what="the volume reclaimed")


def pod_json_opt(kubectl, name):
    r = kubectl.run("get", "pod", name, "-o", "json", check=False)
    return json.loads(r.stdout) if r.returncode == 0 else None


def test_exec_interactive_in_a_terminal_and_top(node):
    """`kubectl exec -it -- sh` driven through tmux, as a user types; `kubectl top`."""
    k, env = node["kubectl"], node["env"]
    k("run", "tty", "--image=busybox", "--image-pull-policy=IfNotPresent", "--", "sleep", "3600")
    wait_ready(k, "tty")
    session = f"skiff-e2e-{os.getpid()}"
    cmd = ["env", f"HOME={env['HOME']}", f"KUBECONFIG={env['KUBECONFIG']}",
           "kubectl", "exec", "-it", "tty", "--", "sh"]
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "40", *cmd],
                   check=True)
    try:
        def screen():
            return subprocess.run(["tmux", "capture-pane", "-p", "-t", session],
                                  capture_output=True, text=True).stdout
        wait_for(lambda: "#" in screen(), 20, what="a shell prompt")
        # The shell sees a terminal of the pane's size and runs what is typed.
        subprocess.run(["tmux", "send-keys", "-t", session,
                        "tty; stty size; echo typed-$((6*7))", "Enter"], check=True)
        out = wait_for(lambda: "typed-42" in screen() and screen(), 20, what="the command's output")
        assert "/dev/pts/" in out, out
        assert "40 120" in out, out
        # Resizing the pane reaches the container's terminal.
        subprocess.run(["tmux", "resize-window", "-t", session, "-x", "100", "-y", "30"], check=True)
        time.sleep(0.5)
        subprocess.run(["tmux", "send-keys", "-t", session, "clear; stty size", "Enter"], check=True)
        wait_for(lambda: "30 100" in screen(), 20, what="the new terminal size")
        subprocess.run(["tmux", "send-keys", "-t", session, "exit 3", "Enter"], check=True)
        wait_for(lambda: subprocess.run(["tmux", "has-session", "-t", session],
                                        capture_output=True).returncode != 0,
                 20, what="kubectl exec to end with the shell")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)

    # kubectl top: CPU and memory of the pod and the node, measured from cgroups and /proc.
    def top_pod():
        r = k.run("top", "pod", "tty", "--no-headers", check=False)
        return r.returncode == 0 and r.stdout
    line = wait_for(top_pod, 60, interval=2, what="kubectl top pod")
    name, cpu, mem = line.split()
    assert name == "tty" and re.fullmatch(r"\d+m", cpu) and re.fullmatch(r"\d+Mi", mem), line
    r = k.run("top", "node", "--no-headers", check=False)
    cols = r.stdout.split()
    assert r.returncode == 0 and cols[0] == NODE and re.fullmatch(r"\d+m", cols[1]), r.stdout
    k("delete", "pod", "tty", "--wait=false", "--grace-period=1")


def test_hpa_on_real_cpu(node):
    """`kubectl autoscale` scales a deployment out while its containers burn CPU, and back in
    once they stop (the fixture shortens the HPA's sync period and downscale window)."""
    k = node["kubectl"]
    apply(k, """\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: burn}
        spec:
          replicas: 1
          selector: {matchLabels: {app: burn}}
          template:
            metadata: {labels: {app: burn}}
            spec:
              terminationGracePeriodSeconds: 1
              containers:
              - name: c
                image: busybox
                imagePullPolicy: IfNotPresent
                # Burn CPU for 45 s after start, then idle.
                command: ["sh", "-c", "end=$(($(date +%s)+45)); while [ $(date +%s) -lt $end ]; do :; done; exec sleep 3600"]
                resources: {requests: {cpu: 100m}, limits: {cpu: 300m}}
        """)
    k("rollout", "status", "deployment/burn", "--timeout=60s")
    k("autoscale", "deployment", "burn", "--cpu-percent=50", "--min=1", "--max=3")

    def replicas():
        return json.loads(k("get", "hpa", "burn", "-o", "json")).get("status", {})
    st = wait_for(lambda: (s := replicas()).get("desiredReplicas", 0) >= 2 and s, 90, interval=1,
                  what="the HPA to scale out")
    util = st["currentMetrics"][0]["resource"]["current"]["averageUtilization"]
    assert util > 50, st
    wait_for(lambda: json.loads(k("get", "deploy", "burn", "-o", "json"))["status"].get("readyReplicas", 0) >= 2,
             60, what="the new replicas ready")
    # Every replica stops burning 45 s after its start; then the HPA scales back in.
    wait_for(lambda: replicas().get("desiredReplicas") == 1
             and json.loads(k("get", "deploy", "burn", "-o", "json"))["spec"]["replicas"] == 1,
             180, interval=2, what="the HPA to scale back in")
    k("delete", "hpa", "burn")
    k("delete", "deployment", "burn", "--wait=false")
