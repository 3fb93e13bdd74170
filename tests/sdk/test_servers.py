"""Servers, restarts and jobs through the official SDK (issue 4): reset,
reboot, poll the job, see APPLIED and ACTIVE; a stopped server keeps its reset
PENDING until it starts. Responses are validated against Huawei's schema."""

import json
import pathlib
import time

import jsonschema
import pytest
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkecs.v2 import (
    BatchRebootServersRequest,
    BatchRebootServersRequestBody,
    BatchRebootSeversOption,
    BatchResetServersPasswordRequest,
    BatchResetServersPasswordRequestBody,
    BatchStartServersOption,
    BatchStartServersRequest,
    BatchStartServersRequestBody,
    BatchStopServersOption,
    BatchStopServersRequest,
    BatchStopServersRequestBody,
    ListServersDetailsRequest,
    ServerId,
    ShowJobRequest,
    ShowServerRequest,
)

from conftest import Ecsd, wait_for

SCHEMA = json.loads((pathlib.Path(__file__).parent / "schemas/ServerDetail.schema.json").read_text())


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    server = Ecsd(tmp_path_factory.mktemp("fleet") / "data", linux=3, windows=1)
    yield server
    server.stop()


def wait_job(client, job_id):
    def done():
        j = client.show_job(ShowJobRequest(job_id=job_id))
        return j if j.status in ("SUCCESS", "FAIL") else None
    return wait_for(done, timeout=60)


def outcome_states(server, rid):
    return {s["id"]: s["state"] for s in server.reset_outcome(rid)["servers"]}


def test_list_and_show_match_huaweis_schema(fleet):
    client = fleet.client()
    listed = fleet.signed_get(f"/v1/{fleet.project_id}/cloudservers/detail?limit=1000").json()
    assert listed["count"] == 4
    for s in listed["servers"]:
        jsonschema.validate(s, SCHEMA)
        shown = fleet.signed_get(f"/v1/{fleet.project_id}/cloudservers/{s['id']}").json()["server"]
        jsonschema.validate(shown, SCHEMA)
    # The SDK's own models parse them.
    resp = client.list_servers_details(ListServersDetailsRequest(limit=2, offset=1))
    assert resp.count == 4 and len(resp.servers) == 2
    names = {s.name for s in client.list_servers_details(ListServersDetailsRequest(name="windows")).servers}
    assert names == {"dev-windows-0001"}
    one = client.show_server(ShowServerRequest(server_id=resp.servers[0].id)).server
    assert one.metadata["os_type"] in ("Linux", "Windows")
    assert one.status == "ACTIVE" and one.host_status == "UP"
    assert one.os_ext_st_spower_state == 1
    assert one.os_ext_st_svm_state == "active"


def test_reset_reboot_job_applied_active(fleet):
    client = fleet.client()
    ids = [s["id"] for s in fleet.creds["servers"]]
    body = BatchResetServersPasswordRequestBody(new_password="Rb5]tW2=kq", servers=[ServerId(id=i) for i in ids])
    client.batch_reset_servers_password(BatchResetServersPasswordRequest(body=body))
    rid = fleet.signed_get(f"/v1/{fleet.project_id}/cloudservers/os-reset-passwords/latest").json()["request_id"]
    reboot = BatchRebootServersRequestBody(reboot=BatchRebootSeversOption(servers=[ServerId(id=i) for i in ids], type="SOFT"))
    job_id = client.batch_reboot_servers(BatchRebootServersRequest(body=reboot)).job_id
    job = wait_job(client, job_id)
    assert job.status == "SUCCESS", job
    assert job.entities.sub_jobs_total == len(ids)
    assert all(sj.status == "SUCCESS" for sj in job.entities.sub_jobs)
    wait_for(lambda: set(outcome_states(fleet, rid).values()) == {"APPLIED"})
    servers = client.list_servers_details(ListServersDetailsRequest(limit=100)).servers
    assert {s.id: s.status for s in servers} == {i: "ACTIVE" for i in ids}


def test_stopped_server_keeps_reset_pending_until_started(fleet):
    client = fleet.client()
    sid = fleet.creds["servers"][0]["id"]
    stop = BatchStopServersRequestBody(os_stop=BatchStopServersOption(servers=[ServerId(id=sid)], type="SOFT"))
    job = wait_job(client, client.batch_stop_servers(BatchStopServersRequest(body=stop)).job_id)
    assert job.status == "SUCCESS"
    assert client.show_server(ShowServerRequest(server_id=sid)).server.status == "SHUTOFF"
    body = BatchResetServersPasswordRequestBody(new_password="Sq7[vN4=pm", servers=[ServerId(id=sid)])
    client.batch_reset_servers_password(BatchResetServersPasswordRequest(body=body))
    rid = fleet.signed_get(f"/v1/{fleet.project_id}/cloudservers/os-reset-passwords/latest").json()["request_id"]
    time.sleep(1.0)
    assert outcome_states(fleet, rid) == {sid: "PENDING"}
    # A second stop on a stopped server is refused.
    with pytest.raises(ClientRequestException) as e:
        client.batch_stop_servers(BatchStopServersRequest(body=stop))
    assert e.value.error_code == "Ecs.0100"
    start = BatchStartServersRequestBody(os_start=BatchStartServersOption(servers=[ServerId(id=sid)]))
    job = wait_job(client, client.batch_start_servers(BatchStartServersRequest(body=start)).job_id)
    assert job.status == "SUCCESS"
    wait_for(lambda: outcome_states(fleet, rid) == {sid: "APPLIED"})
    assert client.show_server(ShowServerRequest(server_id=sid)).server.status == "ACTIVE"


def test_invalid_job_id(fleet):
    with pytest.raises(ClientRequestException) as e:
        fleet.client().show_job(ShowJobRequest(job_id="not-a-job"))
    assert e.value.status_code == 400 and e.value.error_code == "Common.0011"
