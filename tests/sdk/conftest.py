"""Fixtures: a real ecsd (and real ecs-agent processes) driven by the official
Huawei Python SDK (huaweicloudsdkecs, pinned in requirements.txt)."""

import ctypes
import ctypes.util
import json
import logging
import os
import pathlib
import subprocess
import time

import pytest
import requests
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer
from huaweicloudsdkecs.v2 import EcsClient

ROOT = pathlib.Path(__file__).resolve().parents[2]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / os.environ.get("ECS_PROFILE", "debug")
ECSD = os.environ.get("ECSD_BIN", str(TARGET / "ecsd"))
AGENT = os.environ.get("ECS_AGENT_BIN", str(TARGET / "ecs-agent"))

logging.getLogger("HuaweiCloud-SDK-EcsClient").addHandler(logging.NullHandler())


# ECSD_SDK_REPLICAS=N (N > 1): every ecsd below is N replicas on one PostgreSQL schema of their
# own (ECSD_TEST_POSTGRES, default the local server's `test` database): the first is the
# `serve --dev` one, which the dev agents and the agents these tests start connect to; the
# others are started from its `replica.toml`, and every SDK client and signed call goes to them
# in turn (client() and signed_get() alternate), never to the agents' replica.
REPLICAS = int(os.environ.get("ECSD_SDK_REPLICAS", "1"))
PG_BASE = os.environ.get("ECSD_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432/test")


def psql(sql):
    subprocess.run(["psql", PG_BASE, "-v", "ON_ERROR_STOP=1", "-qc", sql], check=True,
                   stdin=subprocess.DEVNULL, capture_output=True)


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Ecsd:
    """`ecsd serve --dev` on a free port with its own data directory (and, with
    ECSD_SDK_REPLICAS, its other replicas)."""

    def __init__(self, data_dir, linux=3, windows=1, env=None):
        self.data_dir = pathlib.Path(data_dir)
        self.log_path = self.data_dir.parent / (self.data_dir.name + ".log")
        self.log = open(self.log_path, "wb")
        e = dict(os.environ, RUST_LOG="debug", **(env or {}))
        database = []
        self.schema = None
        if REPLICAS > 1:
            import uuid
            self.schema = "sdk_" + uuid.uuid4().hex
            psql(f"CREATE SCHEMA {self.schema}")
            sep = "&" if "?" in PG_BASE else "?"
            database = ["--database", f"{PG_BASE}{sep}options=-csearch_path%3D{self.schema}"]
        self.database_args = database
        self.proc = subprocess.Popen(
            [ECSD, "--data-dir", str(self.data_dir), *database, "serve", "--dev", "--listen", "127.0.0.1:0",
             "--dev-linux", str(linux), "--dev-windows", str(windows)],
            stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL, env=e)
        cred_path = None
        deadline = time.time() + 60
        while time.time() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                raise RuntimeError("ecsd exited: " + self.log_path.read_text()[-2000:])
            if line.startswith("credentials: "):
                cred_path = line.split(": ", 1)[1].strip()
                break
        assert cred_path, "ecsd did not print its credentials file"
        self.creds = json.loads(pathlib.Path(cred_path).read_text())
        self.endpoint = self.creds["endpoint"]
        self.project_id = self.creds["project_id"]
        # --dev serves HTTPS with its own CA; every client here verifies it.
        assert self.endpoint.startswith("https://"), self.endpoint
        self.ca_file = self.creds["ca_file"]
        self.replicas = []
        for i in range(1, REPLICAS):
            port = free_port()
            log = open(self.data_dir.parent / f"{self.data_dir.name}-replica{i}.log", "wb")
            proc = subprocess.Popen(
                [ECSD, "--config", str(self.data_dir / "replica.toml"),
                 "--data-dir", str(self.data_dir.parent / f"{self.data_dir.name}-replica{i}"),
                 "serve", "--listen", f"127.0.0.1:{port}"],
                stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL, env=e)
            self.replicas.append((proc, log, f"https://127.0.0.1:{port}"))
        for proc, _, endpoint in self.replicas:
            wait_for(lambda: self._healthy(endpoint), timeout=60)
        # Where SDK clients and signed calls go, in turn.
        self.api_endpoints = [r[2] for r in self.replicas] or [self.endpoint]
        self._next = 0

    def _healthy(self, endpoint):
        try:
            return requests.get(endpoint + "/health", timeout=5, verify=self.ca_file).ok
        except requests.RequestException:
            return False

    def api_endpoint(self):
        """The next replica for an API client (the only one without replicas)."""
        endpoint = self.api_endpoints[self._next % len(self.api_endpoints)]
        self._next += 1
        return endpoint

    def client(self, ak=None, sk=None, project_id=None):
        cred = BasicCredentials(ak or self.creds["ak"], sk or self.creds["sk"], project_id or self.project_id)
        config = HttpConfig.get_default_config()
        config.ssl_ca_cert = self.ca_file
        return (EcsClient.new_builder().with_credentials(cred).with_http_config(config)
                .with_endpoints([self.api_endpoint()]).build())

    def join_token(self):
        """A pinned enrollment token (`<token>.<CA hash>`) for a real agent."""
        return self.admin("enroll-token-create", "--project", self.project_id)["join_token"]

    def admin(self, *args):
        out = subprocess.run([ECSD, "--data-dir", str(self.data_dir), *self.database_args, "admin", *args],
                             check=True, capture_output=True, stdin=subprocess.DEVNULL)
        return json.loads(out.stdout)

    def signed_get(self, path):
        """GET one of our extension endpoints, signed by the SDK's own signer."""
        endpoint = self.api_endpoint()
        host = endpoint.split("://", 1)[1]
        path, _, query = path.partition("?")
        params = [tuple(kv.split("=", 1)) for kv in query.split("&") if kv]
        req = SdkRequest(method="GET", schema="https", host=host, resource_path=path, uri=path,
                         query_params=params, header_params={"Content-Type": "application/json",
                                                             "X-Project-Id": self.project_id}, body="")
        signed = Signer(BasicCredentials(self.creds["ak"], self.creds["sk"], self.project_id)).sign(req)
        return requests.get(endpoint + path, params=params, headers=signed.header_params, timeout=30,
                            verify=self.ca_file)

    def reset_outcome(self, request_id):
        r = self.signed_get(f"/v1/{self.project_id}/cloudservers/os-reset-passwords/{request_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def stop(self):
        for proc, log, _ in self.replicas + [(self.proc, self.log, None)]:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
        if self.schema:
            psql(f"DROP SCHEMA {self.schema} CASCADE")


class Simulator:
    """`ecs-agent simulate`: N virtual servers with stdin commands."""

    def __init__(self, ecsd, root_base, count, token):
        """`token`: a join token (the CA pin travels in it), handed over in a 0600 file."""
        token_file = pathlib.Path(str(root_base) + ".token")
        token_file.touch(mode=0o600)
        token_file.write_text(token)
        self.proc = subprocess.Popen(
            [AGENT, "simulate", "--endpoint", ecsd.endpoint, "--count", str(count),
             "--root-base", str(root_base), "--poll-secs", "5", "--token-file", str(token_file)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(str(root_base) + ".log", "wb"))
        ready = json.loads(self.proc.stdout.readline())
        assert ready["ready"] == count, ready
        self.servers = json.loads(pathlib.Path(ready["fleet"]).read_text())

    def command(self, line):
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        assert "ok" in answer, answer
        return answer

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=20)


@pytest.fixture(scope="session")
def ecsd(tmp_path_factory):
    server = Ecsd(tmp_path_factory.mktemp("ecsd") / "data")
    yield server
    server.stop()


@pytest.fixture
def client(ecsd):
    """An SDK client of the session's ecsd; with replicas, each test's on the next one."""
    return ecsd.client()


def wait_for(predicate, timeout=30.0, interval=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


# crypt(3) from libxcrypt (libcrypt.so.1, part of every Debian/Ubuntu base system): Python's
# `crypt` module is gone in 3.13. libxcrypt knows every method the agent writes (SHA-512
# `$6$`, SHA-256 `$5$`, yescrypt `$y$`).
_libcrypt = ctypes.CDLL(ctypes.util.find_library("crypt") or "libcrypt.so.1")
_libcrypt.crypt.restype = ctypes.c_char_p
_libcrypt.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]


def crypt_verify(password, hashed):
    """True if `password` hashes to `hashed` (a crypt(3) string from /etc/shadow)."""
    out = _libcrypt.crypt(password.encode(), hashed.encode())
    return out is not None and not out.startswith(b"*") and out.decode() == hashed
