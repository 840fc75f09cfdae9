"""Shared fixtures: a real `skiff server` process on a free port, a fresh HOME for kubectl."""

import os
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def skiff_bin() -> str:
    env = os.environ.get("SKIFF_BIN")
    if env:
        return env
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    for profile in ("release", "debug"):
        p = target / profile / "skiff"
        if p.exists():
            return str(p)
    raise RuntimeError("skiff binary not found: build it with cargo build or set SKIFF_BIN")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A skiff server process with its own data dir."""

    def __init__(self, data_dir: Path, port: int, extra_args=(), agent=False):
        self.data_dir = data_dir
        self.port = port
        # Without `agent`, the server runs no node of its own (tests add nodes explicitly).
        self.extra_args = list(extra_args) + ([] if agent else ["--disable-agent"])
        self.proc = None
        self.kubeconfig = data_dir / "kubeconfig.yaml"
        self.log = data_dir / "server.log"

    def start(self, timeout: float = 20.0):
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [skiff_bin(), "server", "--data-dir", str(self.data_dir), "--bind-address", "127.0.0.1",
             "--https-listen-port", str(self.port), *self.extra_args],
            stdout=log, stderr=log,
        )
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"skiff server exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{self.port}/readyz", context=ctx, timeout=1) as r:
                    if r.status == 200 and self.kubeconfig.exists():
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("skiff server did not become ready")

    def stop(self, sig=signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill9(self):
        self.stop(signal.SIGKILL)


@pytest.fixture(scope="session")
def server():
    with tempfile.TemporaryDirectory(prefix="skiff-e2e-") as d:
        s = Server(Path(d) / "data", free_port())
        s.start()
        try:
            yield s
        finally:
            s.stop()


@pytest.fixture(scope="session")
def kube_env(server, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    env = dict(os.environ)
    env["HOME"] = str(home)
    env["KUBECONFIG"] = str(server.kubeconfig)
    return env


class Kubectl:
    def __init__(self, env):
        self.env = env

    def run(self, *args, input=None, check=True, timeout=60, extra_env=None):
        env = dict(self.env)
        if extra_env:
            env.update(extra_env)
        p = subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True,
                           env=env, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        return p

    def __call__(self, *args, **kw):
        return self.run(*args, **kw).stdout


@pytest.fixture(scope="session")
def kubectl(kube_env):
    return Kubectl(kube_env)
