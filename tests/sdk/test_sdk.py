"""The public API through the official Huawei Python SDK, unmodified."""

import pathlib
import subprocess

import pytest
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkecs.v2 import (
    BatchResetServersPasswordRequest,
    BatchResetServersPasswordRequestBody,
    ResetServerPasswordOption,
    ResetServerPasswordRequest,
    ResetServerPasswordRequestBody,
    ServerId,
    ShowResetPasswordFlagRequest,
)

from conftest import AGENT, REPLICAS, Ecsd, Simulator, crypt_verify, wait_for

GOOD = "Gx7!pLq2vR"


def batch(ids, password=GOOD, dry_run=None):
    body = BatchResetServersPasswordRequestBody(
        new_password=password, dry_run=dry_run, servers=[ServerId(id=i) for i in ids])
    return BatchResetServersPasswordRequest(body=body)


def expect_error(fn, status, code):
    with pytest.raises(ClientRequestException) as e:
        fn()
    assert e.value.status_code == status, (e.value.error_code, e.value.error_msg)
    assert e.value.error_code == code, e.value.error_msg
    assert len(e.value.request_id) == 32
    return e.value


def test_batch_reset_of_the_dev_fleet(ecsd, client):
    ids = [s["id"] for s in ecsd.creds["servers"]]
    resp = client.batch_reset_servers_password(batch(ids))
    assert resp.status_code == 200
    assert [r.id for r in resp.response] == ids


def test_dry_run_accepts_without_a_password(ecsd, client):
    ids = [s["id"] for s in ecsd.creds["servers"]]
    resp = client.batch_reset_servers_password(batch(ids, password=None, dry_run=True))
    assert [r.id for r in resp.response] == ids


def test_policy_violation_names_the_rule(ecsd, client):
    ids = [s["id"] for s in ecsd.creds["servers"]]
    for password, rule in [
        ("qwertzuiop", "The password must contain at least three of: uppercase letters, lowercase letters, "
                       "digits and special characters."),
        ("Gx7!pL", "The password length must range from 8 to 26 characters."),
        ("Gx7!pLq2v#", "The password may contain only letters, digits and the special characters"),
        ("Welcome@123", "The password is a well-known weak password."),
    ]:
        e = expect_error(lambda: client.batch_reset_servers_password(batch(ids, password=password)), 400, "Ecs.0011")
        assert rule in e.error_msg, (password, e.error_msg)
        assert password not in e.error_msg


def test_windows_rule_fails_only_windows_servers(ecsd, client):
    ids = [s["id"] for s in ecsd.creds["servers"]]
    windows = [s["id"] for s in ecsd.creds["servers"] if s["os_type"] == "Windows"]
    linux = [s["id"] for s in ecsd.creds["servers"] if s["os_type"] == "Linux"]
    assert windows and linux
    e = expect_error(lambda: client.batch_reset_servers_password(batch(ids, password="Qmin7!pLx2")), 400, "Ecs.0011")
    assert f"{len(windows)} of {len(ids)}" in e.error_msg, e.error_msg
    for w in windows:
        assert w in e.error_msg
    for i in linux:
        assert i not in e.error_msg, e.error_msg
    # The same password for the Linux servers alone is accepted (dry run: nothing changes).
    resp = client.batch_reset_servers_password(batch(linux, password="Qmin7!pLx2", dry_run=True))
    assert [r.id for r in resp.response] == linux


def test_unknown_server_is_named(ecsd, client):
    ids = [ecsd.creds["servers"][0]["id"], "no-such-server"]
    e = expect_error(lambda: client.batch_reset_servers_password(batch(ids)), 400, "Ecs.0114")
    assert "no-such-server" in e.error_msg and "1 of 2" in e.error_msg


def test_foreign_server_is_not_found(ecsd, client):
    other = ecsd.admin("project-create", "--name", "sdk-other")
    foreign = ecsd.admin("server-register", "--project", other["project_id"], "--name", "x",
                         "--public-key", "Ue3i5vtyb+XXJkvbNcRJsB3WPQ6Dna0fm8F1l0fqpGE=")
    e = expect_error(lambda: client.batch_reset_servers_password(batch([foreign["id"]])), 400, "Ecs.0114")
    assert foreign["id"] in e.error_msg
    req = ShowResetPasswordFlagRequest(server_id=foreign["id"])
    expect_error(lambda: client.show_reset_password_flag(req), 404, "Ecs.0114")


def test_too_many_servers(client):
    expect_error(lambda: client.batch_reset_servers_password(batch([f"s{i}" for i in range(1001)])), 400, "Ecs.0118")


def test_wrong_secret_key_is_refused(ecsd):
    bad = ecsd.client(sk="not-the-secret-key-at-all")
    ids = [ecsd.creds["servers"][0]["id"]]
    e = expect_error(lambda: bad.batch_reset_servers_password(batch(ids)), 401, "APIGW.0301")
    assert "verify aksk signature fail" in e.error_msg


def test_project_mismatch(ecsd):
    other = ecsd.admin("project-create", "--name", "sdk-mismatch")
    c = ecsd.client(project_id=other["project_id"])
    expect_error(lambda: c.batch_reset_servers_password(batch(["x"])), 400, "Ecs.0023")


def test_single_reset_answers_204(ecsd, client):
    sid = ecsd.creds["servers"][0]["id"]
    body = ResetServerPasswordRequestBody(reset_password=ResetServerPasswordOption(new_password=GOOD))
    resp = client.reset_server_password(ResetServerPasswordRequest(server_id=sid, body=body))
    assert resp.status_code == 204


def test_single_reset_checks_complexity_when_asked(ecsd, client):
    sid = ecsd.creds["servers"][0]["id"]
    body = ResetServerPasswordRequestBody(
        reset_password=ResetServerPasswordOption(new_password="abcdefgh", is_check_password=True))
    expect_error(lambda: client.reset_server_password(ResetServerPasswordRequest(server_id=sid, body=body)),
                 400, "Ecs.0011")


def test_resetpwd_flag_true_for_reporting_agents(ecsd, client):
    for s in ecsd.creds["servers"]:
        resp = client.show_reset_password_flag(ShowResetPasswordFlagRequest(server_id=s["id"]))
        assert resp.resetpwd_flag == "True"


def verify_root(root, password):
    line = (pathlib.Path(root) / "etc/shadow").read_text().splitlines()[0]
    user, hashed = line.split(":")[:2]
    assert user == "root"
    return hashed.startswith("$6$") and crypt_verify(password, hashed)


def test_crypt_verifier_knows_the_agents_methods():
    """The helper above checks SHA-512 (vector from `openssl passwd -6`) and yescrypt."""
    sha512 = "$6$saltsalt$4NK.zhh.QMjNZ7KTJO9/kt3xiNbLi1qFjhnd/3hHimuodgmev0dhij5zsjnNowZibx/i2QJanGFc/MP9WZAvA/"
    yescrypt = "$y$j9T$saltsaltsaltsalt$Ccl/PeUFDbbMa6PLSjz7C2W0/TeAoYlK7NttJb5cY86"
    for hashed in (sha512, yescrypt):
        assert crypt_verify(GOOD, hashed), hashed
        assert not crypt_verify(GOOD + "x", hashed), hashed
    assert not crypt_verify(GOOD, "!")


def test_reset_restart_applied_with_simulated_fleet(tmp_path):
    """Issue 3 end to end: SDK batch reset, restart, every shadow verifies, API says APPLIED."""
    server = Ecsd(tmp_path / "data", linux=0, windows=0)
    sim = None
    try:
        token = server.admin("enroll-token-create", "--project", server.project_id, "--uses", "20")["join_token"]
        sim = Simulator(server, tmp_path / "fleet", 20, token)
        ids = [s["server_id"] for s in sim.servers]
        wait_for(lambda: all(
            server.client().show_reset_password_flag(ShowResetPasswordFlagRequest(server_id=i)).resetpwd_flag == "True"
            for i in ids))
        password = "Ns4]kV9=tq"
        resp = server.client().batch_reset_servers_password(batch(ids, password=password))
        # The SDK hides the request id of a success; our outcome extension is keyed by it,
        # so read it from the audit log the server keeps (newest accepted reset).
        rid = server.signed_get(f"/v1/{server.project_id}/cloudservers/os-reset-passwords/latest")
        assert rid.status_code == 200, rid.text
        rid = rid.json()["request_id"]
        assert [r.id for r in resp.response] == ids
        # Delivered but not applied while the servers keep running.
        wait_for(lambda: server.reset_outcome(rid)["summary"]["DELIVERED"] == 20)
        assert not any(verify_root(s["root"], password) for s in sim.servers)
        sim.command("restart all")
        outcome = wait_for(lambda: (o := server.reset_outcome(rid))["summary"]["APPLIED"] == 20 and o)
        assert outcome["complete"] is True
        for s in sim.servers:
            assert verify_root(s["root"], password), s["name"]
    finally:
        if sim:
            sim.stop()
        server.stop()


def test_real_agent_process_applies_at_next_boot(tmp_path):
    """One real `ecs-agent run --root DIR` process; a restart is a new boot id."""
    server = Ecsd(tmp_path / "data", linux=0, windows=0)
    agent = None
    try:
        root = tmp_path / "root"
        (root / "etc").mkdir(parents=True)
        (root / "etc/shadow").write_text("root:!:20000:0:99999:7:::\nbin:*:20000:0:99999:7:::\n")
        (root / "etc/login.defs").write_text("ENCRYPT_METHOD SHA512\n")
        (root / "etc/machine-id").write_text("4f1c0d3e9a7b4c2d8e6f5a4b3c2d1e0f\n")
        boot = tmp_path / "boot_id"
        boot.write_text("boot-1\n")
        state = tmp_path / "state"
        # The pinned join token goes in on standard input, never in argv.
        out = subprocess.run([AGENT, "enroll", "--endpoint", server.endpoint, "--state-dir", str(state),
                              "--root", str(root), "--hostname", "real-1", "--token-file", "-"],
                             input=server.join_token().encode(), env={"PATH": "/usr/bin:/bin"},
                             capture_output=True, check=True)
        sid = __import__("json").loads(out.stdout)["server_id"]
        assert (state / "agent.key").stat().st_mode & 0o777 == 0o600

        def start():
            return subprocess.Popen([AGENT, "run", "--state-dir", str(state), "--root", str(root),
                                     "--boot-id-file", str(boot), "--poll-secs", "5"],
                                    stderr=open(tmp_path / "agent.log", "ab"))
        agent = start()
        client = server.client()
        wait_for(lambda: client.show_reset_password_flag(
            ShowResetPasswordFlagRequest(server_id=sid)).resetpwd_flag == "True")
        password = "Zq3:mW8_vx"
        client.batch_reset_servers_password(batch([sid], password=password))
        rid = server.signed_get(f"/v1/{server.project_id}/cloudservers/os-reset-passwords/latest").json()["request_id"]
        wait_for(lambda: server.reset_outcome(rid)["servers"][0]["state"] == "DELIVERED")
        assert not verify_root(root, password)
        # Restart: stop the agent, new boot id, start it again.
        agent.terminate()
        agent.wait(timeout=10)
        boot.write_text("boot-2\n")
        agent = start()
        wait_for(lambda: server.reset_outcome(rid)["servers"][0]["state"] == "APPLIED")
        assert verify_root(root, password)
        assert (root / "etc/shadow").read_text().splitlines()[1] == "bin:*:20000:0:99999:7:::"
    finally:
        if agent:
            agent.terminate()
            agent.wait(timeout=10)
        server.stop()


@pytest.mark.skipif(REPLICAS < 2, reason="needs ECSD_SDK_REPLICAS > 1")
def test_every_replica_serves_the_same_deployment(ecsd):
    """With replicas: each one, called directly, sees the dev fleet its agents reported to
    the first replica, and a reset accepted by one is read back complete through another."""
    from huaweicloudsdkecs.v2 import ListServersDetailsRequest
    assert len(ecsd.api_endpoints) >= 2, ecsd.api_endpoints
    ids = sorted(s["id"] for s in ecsd.creds["servers"])
    for _ in ecsd.api_endpoints:
        c = ecsd.client()
        listed = sorted(s.id for s in c.list_servers_details(ListServersDetailsRequest()).servers)
        assert listed == ids
        assert c.show_reset_password_flag(ShowResetPasswordFlagRequest(server_id=ids[0])).resetpwd_flag == "True"
    # Accepted by one replica, applied by agents on the first, read through the next one.
    ecsd.client().batch_reset_servers_password(batch(ids))
    rid = ecsd.signed_get(f"/v1/{ecsd.project_id}/cloudservers/os-reset-passwords/latest").json()["request_id"]
    wait_for(lambda: ecsd.reset_outcome(rid)["summary"]["DELIVERED"] + ecsd.reset_outcome(rid)["summary"]["APPLIED"]
             == len(ids))
