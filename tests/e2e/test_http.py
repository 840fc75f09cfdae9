"""Raw HTTP edge cases: authentication, malformed and oversized bodies (issue 2, points 2-3)."""

import base64
import json
import ssl
import tempfile
import urllib.error
import urllib.request

import pytest
import yaml


@pytest.fixture(scope="module")
def tls(server):
    kc = yaml.safe_load(server.kubeconfig.read_text())
    user = kc["users"][0]["user"]
    d = tempfile.mkdtemp()
    paths = {}
    for k, name in [("client-certificate-data", "c.crt"), ("client-key-data", "c.key")]:
        p = f"{d}/{name}"
        open(p, "wb").write(base64.b64decode(user[k]))
        paths[k] = p
    ca = f"{d}/ca.crt"
    open(ca, "wb").write(base64.b64decode(kc["clusters"][0]["cluster"]["certificate-authority-data"]))
    authed = ssl.create_default_context(cafile=ca)
    authed.load_cert_chain(paths["client-certificate-data"], paths["client-key-data"])
    anon = ssl.create_default_context(cafile=ca)
    return {"authed": authed, "anon": anon, "base": f"https://127.0.0.1:{server.port}"}


def call(tls, method, path, body=None, ctype="application/json", ctx="authed", headers=None):
    req = urllib.request.Request(tls["base"] + path, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", ctype)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, context=tls[ctx], timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_unauthenticated_is_401(tls):
    code, body = call(tls, "GET", "/api/v1/namespaces", ctx="anon")
    assert code == 401
    assert json.loads(body)["reason"] == "Unauthorized"
    assert call(tls, "GET", "/readyz", ctx="anon")[0] == 200
    code, _ = call(tls, "GET", "/api/v1/namespaces", ctx="anon", headers={"Authorization": "Bearer wrong"})
    assert code == 401


def test_join_token_authenticates(tls, server):
    token = (server.data_dir / "server" / "token").read_text().strip()
    code, _ = call(tls, "GET", "/api/v1/namespaces", ctx="anon", headers={"Authorization": f"Bearer {token}"})
    assert code == 200


@pytest.mark.parametrize("body,ctype", [
    (b"{not json", "application/json"),
    (b"[1,2,3]", "application/json"),
    (b"\x00\x01\x02", "application/vnd.kubernetes.protobuf"),
    (b"k8s\x00\x0a\xff\xff\xff", "application/vnd.kubernetes.protobuf"),
    (b"a: [unclosed", "application/yaml"),
])
def test_malformed_bodies_are_400(tls, body, ctype):
    code, resp = call(tls, "POST", "/api/v1/namespaces/default/configmaps", body, ctype)
    assert code == 400, resp
    assert json.loads(resp)["kind"] == "Status"


def test_unsupported_media_type_is_415(tls):
    code, _ = call(tls, "POST", "/api/v1/namespaces/default/configmaps", b"x", "text/plain")
    assert code == 415


def test_oversized_body_is_413(tls):
    big = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"}, "data": {"x": "a" * (4 * 1024 * 1024)}}).encode()
    code, _ = call(tls, "POST", "/api/v1/namespaces/default/configmaps", big)
    assert code == 413


def test_terminating_namespace_refuses_creates(tls):
    ns = json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "doomed"}}).encode()
    assert call(tls, "POST", "/api/v1/namespaces", ns)[0] == 201
    code, body = call(tls, "DELETE", "/api/v1/namespaces/doomed")
    assert code in (200, 202), body
    cm = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "late"}}).encode()
    code, body = call(tls, "POST", "/api/v1/namespaces/doomed/configmaps", cm)
    assert code == 403, body
    assert json.loads(body)["message"] == "configmaps \"late\" is forbidden: unable to create new content in namespace doomed because it is being terminated"


def test_watch_from_the_future_times_out(tls):
    code, body = call(tls, "GET", "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=999999999&timeoutSeconds=1")
    assert code == 504, body
    assert json.loads(body)["reason"] == "Timeout"
