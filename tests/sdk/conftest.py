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


class Ecsd:
    """`ecsd serve --dev` on a free port with its own data directory."""

    def __init__(self, data_dir, linux=3, windows=1, env=None):
        self.data_dir = pathlib.Path(data_dir)
        self.log_path = self.data_dir.parent / (self.data_dir.name + ".log")
        self.log = open(self.log_path, "wb")
        e = dict(os.environ, RUST_LOG="debug", **(env or {}))
        self.proc = subprocess.Popen(
            [ECSD, "--data-dir", str(self.data_dir), "serve", "--dev", "--listen", "127.0.0.1:0",
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

    def client(self, ak=None, sk=None, project_id=None):
        cred = BasicCredentials(ak or self.creds["ak"], sk or self.creds["sk"], project_id or self.project_id)
        config = HttpConfig.get_default_config()
        config.ssl_ca_cert = self.ca_file
        return (EcsClient.new_builder().with_credentials(cred).with_http_config(config)
                .with_endpoints([self.endpoint]).build())

    def join_token(self):
        """A pinned enrollment token (`<token>.<CA hash>`) for a real agent."""
        return self.admin("enroll-token-create", "--project", self.project_id)["join_token"]

    def admin(self, *args):
        out = subprocess.run([ECSD, "--data-dir", str(self.data_dir), "admin", *args],
                             check=True, capture_output=True, stdin=subprocess.DEVNULL)
        return json.loads(out.stdout)

    def signed_get(self, path):
        """GET one of our extension endpoints, signed by the SDK's own signer."""
        host = self.endpoint.split("://", 1)[1]
        path, _, query = path.partition("?")
        params = [tuple(kv.split("=", 1)) for kv in query.split("&") if kv]
        req = SdkRequest(method="GET", schema="https", host=host, resource_path=path, uri=path,
                         query_params=params, header_params={"Content-Type": "application/json",
                                                             "X-Project-Id": self.project_id}, body="")
        signed = Signer(BasicCredentials(self.creds["ak"], self.creds["sk"], self.project_id)).sign(req)
        return requests.get(self.endpoint + path, params=params, headers=signed.header_params, timeout=30,
                            verify=self.ca_file)

    def reset_outcome(self, request_id):
        r = self.signed_get(f"/v1/{self.project_id}/cloudservers/os-reset-passwords/{request_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


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


@pytest.fixture(scope="session")
def client(ecsd):
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
