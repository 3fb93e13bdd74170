"""No plaintext password is ever written: after resets through the SDK (and
one applied at once by the dev fleet's agents), the password appears in no
file under the data directory (database, WAL, agent state, shadow files) and
nowhere in the server's debug-level log."""

import json
import pathlib
import subprocess

import pytest
import requests
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer
from huaweicloudsdkecs.v2 import (
    BatchResetServersPasswordRequest,
    BatchResetServersPasswordRequestBody,
    ResetServerPasswordOption,
    ResetServerPasswordRequest,
    ResetServerPasswordRequestBody,
    ServerId,
)

from conftest import PG_BASE, Ecsd, wait_for

SECRET = "Pl41n:Txt-Zq8"


def hits(path, needle):
    data = path.read_bytes()
    return [n for n in (needle.encode(), needle.encode("utf-16-le")) if n in data]


def test_plaintext_never_reaches_disk_or_logs(tmp_path):
    server = Ecsd(tmp_path / "data")
    try:
        client = server.client()
        ids = [s["id"] for s in server.creds["servers"]]
        body = BatchResetServersPasswordRequestBody(new_password=SECRET, servers=[ServerId(id=i) for i in ids])
        client.batch_reset_servers_password(BatchResetServersPasswordRequest(body=body))
        single = ResetServerPasswordRequestBody(reset_password=ResetServerPasswordOption(new_password=SECRET))
        client.reset_server_password(ResetServerPasswordRequest(server_id=ids[0], body=single))
        # A rejected one too (the message must not echo it).
        bad = BatchResetServersPasswordRequestBody(new_password=SECRET + "#", servers=[ServerId(id=ids[0])])
        with pytest.raises(ClientRequestException) as rejected:
            client.batch_reset_servers_password(BatchResetServersPasswordRequest(body=bad))
        assert rejected.value.error_code == "Ecs.0011", rejected.value.error_msg
        assert SECRET not in str(rejected.value) and SECRET not in rejected.value.error_msg
        # Apply at once on the dev fleet (our extension), signed by the SDK's signer.
        path = f"/v1/{server.project_id}/cloudservers/os-reset-passwords"
        payload = json.dumps({"new_password": SECRET, "servers": [{"id": i} for i in ids], "apply": "now"})
        host = server.endpoint.split("://", 1)[1]
        req = SdkRequest(method="PUT", schema="https", host=host, resource_path=path, uri=path, query_params=[],
                         header_params={"Content-Type": "application/json;charset=UTF-8",
                                        "X-Project-Id": server.project_id}, body=payload)
        signed = Signer(BasicCredentials(server.creds["ak"], server.creds["sk"], server.project_id)).sign(req)
        r = requests.put(server.endpoint + path, headers=signed.header_params, data=signed.body, timeout=30,
                         verify=server.ca_file)
        assert r.status_code == 200, r.text
        rid = r.headers["X-Request-Id"]
        wait_for(lambda: server.reset_outcome(rid)["summary"]["APPLIED"] == len(ids))

        files = [p for p in pathlib.Path(server.data_dir).rglob("*") if p.is_file()]
        names = {p.name for p in files}
        if server.schema:
            # On PostgreSQL (ECSD_SDK_REPLICAS): the whole schema, dumped, and every replica's log.
            dump = tmp_path / "schema.sql"
            subprocess.run(["pg_dump", PG_BASE, "--schema", server.schema, "--file", str(dump)],
                           check=True, stdin=subprocess.DEVNULL)
            assert server.schema in dump.read_text(), "the dump holds the schema"
            files += [dump] + [pathlib.Path(r[1].name) for r in server.replicas]
        else:
            assert "ecsd.db" in names and "ecsd.db-wal" in names, names
        assert sum(1 for p in files if p.name == "shadow") == len(ids)
        for p in files + [server.log_path]:
            assert not hits(p, SECRET), f"plaintext found in {p}"
    finally:
        server.stop()
    # And after a clean shutdown (WAL checkpointed into the database).
    for p in [p for p in pathlib.Path(server.data_dir).rglob("*") if p.is_file()] + [server.log_path]:
        assert not hits(p, SECRET), f"plaintext found in {p} after shutdown"
    assert server.log_path.stat().st_size > 10_000, "the debug log is suspiciously empty"
