"""Acceptance of the API server with the real, unmodified kubectl (issue 2, points 1-3)."""

import json
import os
import re
import subprocess
import textwrap
import time

import pytest

MANIFEST = textwrap.dedent("""\
    apiVersion: v1
    kind: Namespace
    metadata:
      name: shop
    ---
    apiVersion: v1
    kind: ConfigMap
    metadata:
      name: settings
      namespace: shop
    data:
      color: blue
    ---
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: web
      namespace: shop
      labels: {app: web}
    spec:
      replicas: 2
      selector:
        matchLabels: {app: web}
      template:
        metadata:
          labels: {app: web}
        spec:
          containers:
          - name: web
            image: busybox:1.36
            ports:
            - containerPort: 80
    ---
    apiVersion: v1
    kind: Service
    metadata:
      name: web
      namespace: shop
    spec:
      selector: {app: web}
      ports:
      - port: 80
        targetPort: 80
    """)


def test_version(kubectl):
    out = kubectl("version")
    assert "Server Version: v1.33" in out


def test_api_resources(kubectl):
    out = kubectl("api-resources")
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    for name in ["pods", "deployments", "services", "configmaps", "namespaces", "nodes", "jobs", "cronjobs",
                 "horizontalpodautoscalers", "customresourcedefinitions", "leases", "endpointslices",
                 "poddisruptionbudgets", "clusterroles", "priorityclasses", "runtimeclasses",
                 "certificatesigningrequests", "validatingwebhookconfigurations", "networkpolicies",
                 "storageclasses", "events"]:
        assert name in rows, f"{name} missing from api-resources"
    assert re.search(r"^deployments\s+deploy\s+apps/v1\s+true\s+Deployment", out, re.M)
    assert re.search(r"^pods\s+po\s+v1\s+true\s+Pod", out, re.M)
    assert re.search(r"^namespaces\s+ns\s+v1\s+false\s+Namespace", out, re.M)


def test_explain(kubectl):
    out = kubectl("explain", "deployment.spec.strategy")
    assert "KIND:" in out and "Deployment" in out
    assert "rollingUpdate" in out
    assert "FIELD: strategy" in out or "strategy <DeploymentStrategy>" in out


def listable_resources(kubectl):
    out = kubectl("api-resources", "--verbs=list", "-o", "name")
    return [r for r in out.split() if r]


def test_get_every_kind(kubectl):
    kubectl("apply", "-f", "-", input=MANIFEST)
    for res in listable_resources(kubectl):
        p = kubectl.run("get", res, "-A", check=False)
        assert p.returncode == 0, f"get {res}: {p.stderr}"
        assert "error" not in p.stderr.lower(), f"get {res}: {p.stderr}"


def test_describe_every_kind(kubectl):
    kubectl("apply", "-f", "-", input=MANIFEST)
    for res in listable_resources(kubectl):
        p = kubectl.run("describe", res, "-A", check=False)
        assert p.returncode == 0, f"describe {res}: {p.stderr}"


def test_tables_look_like_upstream(kubectl):
    kubectl("apply", "-f", "-", input=MANIFEST)
    out = kubectl("get", "deploy", "-n", "shop")
    assert out.split("\n")[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    # No nodes in this suite: the pods stay Pending, so nothing is available.
    assert re.search(r"^web\s+0/2\s+[0-2]\s+0\s+\d+", out, re.M), out
    out = kubectl("get", "ns")
    assert out.split("\n")[0].split() == ["NAME", "STATUS", "AGE"]
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"]:
        assert re.search(rf"^{ns}\s+Active\s+", out, re.M), out
    out = kubectl("get", "cm", "-n", "shop")
    assert out.split("\n")[0].split() == ["NAME", "DATA", "AGE"]
    out = kubectl("get", "svc", "-n", "shop", "-o", "wide")
    assert out.split("\n")[0].split()[:5] == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)"]
    assert "80/TCP" in out


def test_describe(kubectl):
    kubectl("apply", "-f", "-", input=MANIFEST)
    out = kubectl("describe", "deployment", "web", "-n", "shop")
    assert re.search(r"^Name:\s+web", out, re.M)
    assert re.search(r"^Replicas:\s+2 desired", out, re.M)
    assert "busybox:1.36" in out
    out = kubectl("describe", "ns", "shop")
    assert re.search(r"^Status:\s+Active", out, re.M)
    out = kubectl("describe", "cm", "settings", "-n", "shop")
    assert "color" in out


def test_create_generators(kubectl):
    kubectl("create", "namespace", "gen")
    kubectl("create", "deployment", "d1", "--image=busybox", "--replicas=3", "-n", "gen")
    kubectl("create", "configmap", "c1", "--from-literal=a=b", "-n", "gen")
    kubectl("create", "secret", "generic", "s1", "--from-literal=password=hunter2", "-n", "gen")
    kubectl("create", "service", "clusterip", "svc1", "--tcp=80:8080", "-n", "gen")
    kubectl("create", "job", "j1", "--image=busybox", "-n", "gen", "--", "echo", "hi")
    kubectl("create", "cronjob", "cj1", "--image=busybox", "--schedule=*/5 * * * *", "-n", "gen")
    d = json.loads(kubectl("get", "deploy", "d1", "-n", "gen", "-o", "json"))
    assert d["spec"]["replicas"] == 3
    assert d["spec"]["template"]["spec"]["containers"][0]["image"] == "busybox"
    assert d["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == "25%"
    s = json.loads(kubectl("get", "secret", "s1", "-n", "gen", "-o", "json"))
    assert s["data"]["password"] == "aHVudGVyMg=="
    j = json.loads(kubectl("get", "job", "j1", "-n", "gen", "-o", "json"))
    assert j["spec"]["template"]["spec"]["containers"][0]["command"] == ["echo", "hi"]
    assert "batch.kubernetes.io/controller-uid" in j["spec"]["selector"]["matchLabels"]
    cj = json.loads(kubectl("get", "cronjob", "cj1", "-n", "gen", "-o", "json"))
    assert cj["spec"]["schedule"] == "*/5 * * * *"
    svc = json.loads(kubectl("get", "svc", "svc1", "-n", "gen", "-o", "json"))
    assert svc["spec"]["ports"][0]["targetPort"] == 8080


def test_apply_twice_then_server_side(kubectl):
    out = kubectl("apply", "-f", "-", input=MANIFEST.replace("name: shop", "name: shop2").replace("namespace: shop", "namespace: shop2"))
    assert "deployment.apps/web created" in out or "deployment.apps/web configured" in out
    changed = MANIFEST.replace("name: shop", "name: shop2").replace("namespace: shop", "namespace: shop2").replace("replicas: 2", "replicas: 4").replace("color: blue", "color: red")
    out = kubectl("apply", "-f", "-", input=changed)
    assert "deployment.apps/web configured" in out
    assert "configmap/settings configured" in out
    assert "service/web unchanged" in out
    d = json.loads(kubectl("get", "deploy", "web", "-n", "shop2", "-o", "json"))
    assert d["spec"]["replicas"] == 4
    assert d["metadata"]["generation"] == 2
    out = kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=changed.replace("replicas: 4", "replicas: 5"))
    assert "serverside-applied" in out
    d = json.loads(kubectl("get", "deploy", "web", "-n", "shop2", "-o", "json", "--show-managed-fields"))
    assert d["spec"]["replicas"] == 5
    assert any(m["manager"] == "kubectl" and m["operation"] == "Apply" for m in d["metadata"]["managedFields"])


def test_server_side_apply_conflict(kubectl):
    doc = textwrap.dedent("""\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: ssa}
        spec:
          replicas: 7
          selector: {matchLabels: {app: ssa}}
          template:
            metadata: {labels: {app: ssa}}
            spec:
              containers: [{name: busybox, image: busybox}]
        """)
    kubectl("apply", "--server-side", "--field-manager=first", "-f", "-", input=doc)
    p = kubectl.run("apply", "--server-side", "--field-manager=second", "-f", "-", input=doc.replace("replicas: 7", "replicas: 8"), check=False)
    assert p.returncode != 0
    assert "conflict" in p.stderr.lower() and ".spec.replicas" in p.stderr


def test_edit_label_annotate_patch(kubectl, tmp_path):
    kubectl("create", "configmap", "ed", "--from-literal=k=v1")
    editor = tmp_path / "editor.sh"
    editor.write_text("#!/bin/sh\nsed -i 's/k: v1/k: v2/' \"$1\"\n")
    editor.chmod(0o755)
    kubectl.run("edit", "configmap", "ed", extra_env={"EDITOR": str(editor), "KUBE_EDITOR": str(editor)})
    assert kubectl("get", "cm", "ed", "-o", "jsonpath={.data.k}") == "v2"
    kubectl("label", "cm", "ed", "team=blue")
    kubectl("annotate", "cm", "ed", "note=hello")
    cm = json.loads(kubectl("get", "cm", "ed", "-o", "json"))
    assert cm["metadata"]["labels"]["team"] == "blue"
    assert cm["metadata"]["annotations"]["note"] == "hello"
    kubectl("patch", "cm", "ed", "--type=merge", "-p", '{"data":{"m":"merge"}}')
    kubectl("patch", "cm", "ed", "--type=json", "-p", '[{"op":"add","path":"/data/j","value":"json"}]')
    kubectl("patch", "cm", "ed", "-p", '{"data":{"s":"strategic"}}')
    cm = json.loads(kubectl("get", "cm", "ed", "-o", "json"))
    assert cm["data"] == {"k": "v2", "m": "merge", "j": "json", "s": "strategic"}
    p = kubectl.run("patch", "cm", "ed", "--type=json", "-p", '[{"op":"test","path":"/data/k","value":"nope"}]', check=False)
    assert p.returncode != 0


def test_strategic_merge_of_containers(kubectl):
    kubectl("create", "deployment", "smp", "--image=busybox")
    kubectl("patch", "deploy", "smp", "-p",
            '{"spec":{"template":{"spec":{"containers":[{"name":"side","image":"busybox:2"}]}}}}')
    d = json.loads(kubectl("get", "deploy", "smp", "-o", "json"))
    names = [c["name"] for c in d["spec"]["template"]["spec"]["containers"]]
    assert names == ["busybox", "side"] or sorted(names) == ["busybox", "side"]


def test_replace_with_stale_resource_version(kubectl, tmp_path):
    kubectl("create", "configmap", "stale", "--from-literal=a=1")
    f = tmp_path / "cm.json"
    f.write_text(kubectl("get", "cm", "stale", "-o", "json"))
    kubectl("label", "cm", "stale", "x=y")
    p = kubectl.run("replace", "-f", str(f), check=False)
    assert p.returncode != 0
    assert "Conflict" in p.stderr and "the object has been modified" in p.stderr


@pytest.mark.parametrize("cascade", ["background", "foreground", "orphan"])
def test_delete_cascade(kubectl, cascade):
    name = f"del-{cascade}"
    kubectl("create", "configmap", name, "--from-literal=a=1")
    p = kubectl.run("delete", "configmap", name, f"--cascade={cascade}", "--wait=false")
    assert f'configmap "{name}" deleted' in p.stdout
    if cascade == "background":
        assert kubectl.run("get", "cm", name, check=False).returncode != 0


def test_get_watch_output_events(kubectl, kube_env):
    kubectl("create", "namespace", "watched")
    proc = subprocess.Popen(["kubectl", "get", "cm", "-n", "watched", "-w", "--output-watch-events"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=kube_env)
    try:
        time.sleep(1.5)
        kubectl("create", "configmap", "w1", "-n", "watched", "--from-literal=a=1")
        kubectl("label", "cm", "w1", "-n", "watched", "x=y")
        kubectl("delete", "cm", "w1", "-n", "watched")
        time.sleep(1.5)
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    events = [line.split()[0] for line in out.splitlines() if re.search(r"\bw1\b", line)]
    assert events[:3] == ["ADDED", "MODIFIED", "DELETED"], out + err


def test_chunked_list(kubectl):
    kubectl("create", "namespace", "many")
    items = [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"cm-{i:03d}", "namespace": "many"}, "data": {"i": str(i)}} for i in range(200)]
    kubectl("create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    p = kubectl.run("get", "cm", "-n", "many", "--chunk-size=10", "-v=6")
    rows = [l for l in p.stdout.splitlines()[1:] if l.startswith("cm-")]
    assert len(rows) == 200
    requests = [l for l in p.stderr.splitlines() if "limit=10" in l]
    assert len(requests) >= 20, p.stderr[-2000:]
    assert any("continue=" in l for l in requests)


def test_invalid_objects(kubectl):
    bad = textwrap.dedent("""\
        apiVersion: apps/v1
        kind: Deployment
        metadata:
          name: Bad_Name
        spec:
          replicas: 1
          selector: {matchLabels: {app: x}}
          template:
            metadata: {labels: {app: x}}
            spec:
              containers:
              - name: c
        """)
    p = kubectl.run("apply", "-f", "-", input=bad, check=False)
    assert p.returncode != 0
    assert 'is invalid' in p.stderr
    assert "metadata.name: Invalid value: \"Bad_Name\"" in p.stderr
    assert "spec.template.spec.containers[0].image: Required value" in p.stderr
    wrong_type = bad.replace("Bad_Name", "good").replace("replicas: 1", "replicas: many").replace("      - name: c", "      - name: c\n        image: busybox")
    p = kubectl.run("create", "--validate=false", "-f", "-", input=wrong_type, check=False)
    assert p.returncode != 0
    assert "spec.replicas" in p.stderr, p.stderr


def test_unknown_field_strict(kubectl):
    doc = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: strict1\nbogus: 1\n"
    p = kubectl.run("create", "-f", "-", input=doc, check=False)
    assert p.returncode != 0
    assert 'unknown field "bogus"' in p.stderr


def test_scale(kubectl):
    kubectl("create", "deployment", "scaled", "--image=busybox")
    kubectl("scale", "deployment", "scaled", "--replicas=4")
    assert kubectl("get", "deploy", "scaled", "-o", "jsonpath={.spec.replicas}") == "4"
    kubectl("scale", "deployment", "scaled", "--current-replicas=4", "--replicas=2")
    assert kubectl("get", "deploy", "scaled", "-o", "jsonpath={.spec.replicas}") == "2"


def test_missing_namespace_refused(kubectl):
    p = kubectl.run("create", "configmap", "x", "-n", "does-not-exist", "--from-literal=a=b", check=False)
    assert p.returncode != 0
    assert 'namespaces "does-not-exist" not found' in p.stderr


def test_crd_and_custom_resources(kubectl):
    crd = textwrap.dedent("""\
        apiVersion: apiextensions.k8s.io/v1
        kind: CustomResourceDefinition
        metadata:
          name: widgets.example.com
        spec:
          group: example.com
          scope: Namespaced
          names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
          versions:
          - name: v1
            served: true
            storage: true
            schema:
              openAPIV3Schema:
                type: object
                properties:
                  spec:
                    type: object
                    properties:
                      size: {type: integer}
            additionalPrinterColumns:
            - name: Size
              type: integer
              jsonPath: .spec.size
        """)
    kubectl("apply", "-f", "-", input=crd)
    kubectl("wait", "--for=condition=established", "crd/widgets.example.com", "--timeout=20s")
    kubectl("apply", "-f", "-", input="apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3}\n")
    out = kubectl("get", "wd")
    assert out.split("\n")[0].split()[:2] == ["NAME", "SIZE"]
    assert re.search(r"^w1\s+3", out, re.M)
    p = kubectl.run("apply", "-f", "-", input="apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w2}\nspec: {size: big}\n", check=False)
    assert p.returncode != 0
