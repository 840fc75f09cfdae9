"""The official Python client against skiff (issue 2, point 4)."""

import threading
import time

import pytest
from kubernetes import client, config, watch


@pytest.fixture(scope="module")
def api(server):
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(server.kubeconfig), client_configuration=cfg)
    return client.ApiClient(cfg)


def test_create_list_watch_patch_delete(api):
    core = client.CoreV1Api(api)
    ns = "py-client"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    listed = core.list_namespaced_config_map(ns, label_selector="suite=py")
    assert listed.items == []
    rv = listed.metadata.resource_version
    assert int(rv) > 0

    seen = []

    def watcher():
        w = watch.Watch()
        for ev in w.stream(core.list_namespaced_config_map, ns, label_selector="suite=py",
                           resource_version=rv, timeout_seconds=10):
            seen.append((ev["type"], ev["object"].metadata.name, int(ev["object"].metadata.resource_version)))
            if len(seen) == 4:
                w.stop()

    t = threading.Thread(target=watcher)
    t.start()
    time.sleep(0.5)
    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="a", labels={"suite": "py"}), data={"k": "1"})
    created = core.create_namespaced_config_map(ns, body)
    assert created.metadata.uid and created.metadata.creation_timestamp
    core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="b", labels={"suite": "py"})))
    patched = core.patch_namespaced_config_map("a", ns, {"data": {"k": "2"}})
    assert patched.data == {"k": "2"}
    listed = core.list_namespaced_config_map(ns, label_selector="suite=py")
    assert sorted(i.metadata.name for i in listed.items) == ["a", "b"]
    core.delete_collection_namespaced_config_map(ns, label_selector="suite=py")
    t.join(15)
    assert [(t_, n) for t_, n, _ in seen] == [("ADDED", "a"), ("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "a")] or \
        [(t_, n) for t_, n, _ in seen] == [("ADDED", "a"), ("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
    rvs = [r for _, _, r in seen]
    assert rvs == sorted(rvs) and len(set(rvs)) == len(rvs)
    assert core.list_namespaced_config_map(ns, label_selector="suite=py").items == []


def test_json_patch_and_deployments(api):
    core = client.CoreV1Api(api)
    apps = client.AppsV1Api(api)
    core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="jp"), data={"a": "1"}))
    out = core.patch_namespaced_config_map("jp", "default", [{"op": "replace", "path": "/data/a", "value": "2"}])
    assert out.data["a"] == "2"
    dep = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "pydep"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "pydep"}},
                 "template": {"metadata": {"labels": {"app": "pydep"}},
                              "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    }
    created = apps.create_namespaced_deployment("default", dep)
    assert created.spec.strategy.type == "RollingUpdate"
    scale = apps.read_namespaced_deployment_scale("pydep", "default")
    assert scale.spec.replicas == 2 and scale.status.selector == "app=pydep"
    apps.patch_namespaced_deployment_scale("pydep", "default", {"spec": {"replicas": 3}})
    assert apps.read_namespaced_deployment("pydep", "default").spec.replicas == 3
    apps.delete_namespaced_deployment("pydep", "default", propagation_policy="Background")
    with pytest.raises(client.ApiException) as e:
        apps.read_namespaced_deployment("pydep", "default")
    assert e.value.status == 404


def test_errors_are_status_objects(api):
    core = client.CoreV1Api(api)
    with pytest.raises(client.ApiException) as e:
        core.read_namespaced_config_map("nope", "default")
    assert e.value.status == 404 and '"reason":"NotFound"' in e.value.body.replace(" ", "")
    core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="dup")))
    with pytest.raises(client.ApiException) as e:
        core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="dup")))
    assert e.value.status == 409
