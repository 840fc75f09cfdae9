"""Acknowledged writes survive kill -9 (issue 2, point 5)."""

import json
import threading
import time
from pathlib import Path

from conftest import Server, free_port
from kubernetes import client, config


def test_acknowledged_creates_survive_kill9(tmp_path):
    s = Server(tmp_path / "data", free_port())
    s.start()
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(s.kubeconfig), client_configuration=cfg)
    acked = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(w):
        api = client.CoreV1Api(client.ApiClient(cfg))
        i = 0
        while not stop.is_set():
            name = f"w{w}-{i}"
            try:
                api.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name), data={"v": name}))
            except Exception:
                return
            with lock:
                acked.append(name)
            i += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(16)]
    for t in threads:
        t.start()
    time.sleep(3)
    s.kill9()
    stop.set()
    for t in threads:
        t.join(10)
    assert len(acked) > 100, f"only {len(acked)} writes acknowledged"

    s.start()
    api = client.CoreV1Api(client.ApiClient(cfg))
    names = {i.metadata.name: i.data["v"] for i in api.list_namespaced_config_map("default").items}
    missing = [n for n in acked if names.get(n) != n]
    s.stop()
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"
