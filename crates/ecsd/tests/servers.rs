//! Servers and power actions through the Huawei API: list, show, batch
//! start/stop/reboot, jobs, with simulated servers running the real agent.

mod common;

use std::time::Duration;

use common::*;
use ecs_policy::OsType::Linux;
use serde_json::{Value, json};

fn action(kind: &str, ids: &[&str], typ: Option<&str>) -> String {
    let mut inner = json!({"servers": ids.iter().map(|i| json!({"id": i})).collect::<Vec<_>>()});
    if let Some(t) = typ {
        inner["type"] = t.into();
    }
    json!({ kind: inner }).to_string()
}

async fn show(t: &TestServer, id: &str) -> Value {
    let r = t
        .call("GET", &format!("/v1/{}/cloudservers/{id}", t.project), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["server"].clone()
}

#[tokio::test]
async fn list_pages_filters_and_counts() {
    let t = TestServer::start().await;
    let mut ids = Vec::new();
    for i in 0..30 {
        let (id, _) = t
            .server(&t.project, &format!("web-{i:02}"), Linux, true)
            .await;
        ids.push(id);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (db, _) = t.server(&t.project, "db_1", Linux, false).await;
    let other = ecsd::admin::create_project(&t.state, "other")
        .await
        .unwrap();
    t.server(&other.id, "web-foreign", Linux, true).await;
    let base = format!("/v1/{}/cloudservers/detail", t.project);
    // Default page size 25, count is the total, newest first.
    let r = t.call("GET", &base, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["count"], 31);
    let page1: Vec<&str> = r.body["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(page1.len(), 25);
    assert_eq!(page1[0], db);
    // offset is a page number; 0 means 1.
    let r0 = t
        .call("GET", &format!("{base}?offset=0&limit=10"), None)
        .await;
    let r2 = t
        .call("GET", &format!("{base}?offset=2&limit=10"), None)
        .await;
    assert_eq!(r0.body["servers"][0]["id"], db);
    assert_eq!(r2.body["servers"][0]["id"].as_str(), Some(page1[10]));
    // marker: the page after a given server.
    let m = t
        .call("GET", &format!("{base}?limit=5&marker={}", page1[4]), None)
        .await;
    assert_eq!(m.body["servers"][0]["id"].as_str(), Some(page1[5]));
    assert_eq!(m.body["count"], 31);
    // Filters: fuzzy name (with LIKE characters taken literally), status, server_id.
    let r = t.call("GET", &format!("{base}?name=web-0"), None).await;
    assert_eq!(r.body["count"], 10);
    let r = t.call("GET", &format!("{base}?name=db_"), None).await;
    assert_eq!(r.body["count"], 1);
    let r = t.call("GET", &format!("{base}?name=b%25"), None).await;
    assert_eq!(r.body["count"], 0);
    let r = t.call("GET", &format!("{base}?status=SHUTOFF"), None).await;
    assert_eq!(r.body["count"], 0);
    let r = t
        .call(
            "GET",
            &format!("{base}?server_id={},{},nope&name=zzz", ids[0], ids[1]),
            None,
        )
        .await;
    assert_eq!(r.body["count"], 2);
    let servers = r.body["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 3);
    assert_eq!(
        servers[2],
        json!({"id": "nope", "fault": {"code": 404, "message": "Instance could not be found."}})
    );
    // Bad paging parameters.
    for q in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "offset=-1",
        "marker=nope",
    ] {
        let r = t.call("GET", &format!("{base}?{q}"), None).await;
        assert_ecs(&r, 400, "Ecs.0005");
    }
}

#[tokio::test]
async fn show_has_the_required_fields_with_their_types() {
    let t = TestServer::start().await;
    let (id, _) = t.server(&t.project, "one", Linux, true).await;
    let s = show(&t, &id).await;
    for (k, kind) in [
        ("id", "s"),
        ("name", "s"),
        ("status", "s"),
        ("tenant_id", "s"),
        ("created", "s"),
        ("updated", "s"),
        ("host_status", "s"),
        ("locked", "b"),
        ("OS-EXT-STS:power_state", "n"),
        ("OS-EXT-STS:task_state", "s"),
        ("OS-EXT-SRV-ATTR:launch_index", "n"),
        ("addresses", "o"),
        ("metadata", "o"),
        ("flavor", "o"),
        ("image", "o"),
        ("security_groups", "a"),
        ("os-extended-volumes:volumes_attached", "a"),
        ("auto_terminate_time", "s"),
    ] {
        let v = &s[k];
        let ok = match kind {
            "s" => v.is_string(),
            "b" => v.is_boolean(),
            "n" => v.is_i64(),
            "o" => v.is_object(),
            _ => v.is_array(),
        };
        assert!(ok, "{k} has the wrong type: {v}");
    }
    assert_eq!(s["metadata"]["os_type"], "Linux");
    assert_eq!(s["tenant_id"], t.project);
    // Registered but never reported: UNKNOWN.
    assert_eq!(s["host_status"], "UNKNOWN");
    let r = t
        .call("GET", &format!("/v1/{}/cloudservers/nope", t.project), None)
        .await;
    assert_ecs(&r, 404, "Ecs.0114");
}

#[tokio::test]
async fn actions_reject_bad_bodies_and_states() {
    let t = TestServer::start().await;
    let (a, _) = t.server(&t.project, "a", Linux, true).await;
    let (bare, _) = t.server(&t.project, "bare", Linux, false).await;
    let p = format!("/v1/{}/cloudservers/action", t.project);
    for body in [
        "{}".to_string(),
        "[]".to_string(),
        json!({"os-start": {"servers": []}}).to_string(),
        json!({"reboot": {"servers": [{"id": a}]}}).to_string(),
        json!({"reboot": {"servers": [{"id": a}], "type": "MEDIUM"}}).to_string(),
        json!({"os-stop": {"servers": [{"id": a}, {"id": a}]}}).to_string(),
        json!({"os-stop": {"servers": [{"id": 3}]}}).to_string(),
        json!({"os-start": {"servers": [{"id": a}]}, "reboot": {"servers": [{"id": a}], "type": "SOFT"}}).to_string(),
        json!({"os-suspend": {"servers": [{"id": a}]}}).to_string(),
        "{broken".to_string(),
    ] {
        let r = t.call("POST", &p, Some(&body)).await;
        assert_ecs(&r, 400, "Ecs.0005");
    }
    let r = t.call("POST", &p, Some("")).await;
    assert_ecs(&r, 400, "Common.0002");
    let many: Vec<String> = (0..1001).map(|i| format!("s{i}")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let r = t
        .call("POST", &p, Some(&action("os-stop", &refs, None)))
        .await;
    assert_ecs(&r, 400, "Ecs.0118");
    let r = t
        .call(
            "POST",
            &p,
            Some(&action("reboot", &[&a, "nope"], Some("SOFT"))),
        )
        .await;
    assert_ecs(&r, 400, "Ecs.0114");
    assert_eq!(r.body["internalError"][0]["id"], "nope");
    let r = t
        .call("POST", &p, Some(&action("reboot", &[&bare], Some("SOFT"))))
        .await;
    assert_ecs(&r, 400, "Ecs.0100");
    // Starting a running server is not allowed.
    let r = t
        .call("POST", &p, Some(&action("os-start", &[&a], None)))
        .await;
    assert_ecs(&r, 400, "Ecs.0100");
    for j in [
        "nope",
        "0123456789abcdef0123456789abcdef",
        "6f1c0d3e-9a7b-4c2d-8e6f-5a4b3c2d1e0f",
    ] {
        let r = t
            .call("GET", &format!("/v1/{}/jobs/{j}", t.project), None)
            .await;
        assert_ecs(&r, 400, "Common.0011");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_then_reboot_applies_and_the_job_succeeds() {
    let t = TestServer::start().await;
    let f = fleet(&t, 3).await;
    let servers = f.list();
    let ids: Vec<&str> = servers.iter().map(|s| s.server_id.as_str()).collect();
    let r = t
        .call(
            "PUT",
            &t.batch_path(),
            Some(&ids_body(Some("Gx7!pLq2vR"), None, &ids)),
        )
        .await;
    let rid = r.request_id.unwrap();
    let r = t
        .call(
            "POST",
            &format!("/v1/{}/cloudservers/action", t.project),
            Some(&action("reboot", &ids, Some("SOFT"))),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let job = wait_job(&t, r.body["job_id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert_eq!(job["job_type"], "batchRebootServers");
    assert_eq!(job["entities"]["sub_jobs_total"], 3);
    assert!(job["error_code"].is_null() && job["fail_reason"].is_null());
    assert!(job["end_time"].as_str().unwrap().ends_with('Z'));
    for sub in job["entities"]["sub_jobs"].as_array().unwrap() {
        assert_eq!(sub["status"], "SUCCESS");
        assert!(ids.contains(&sub["entities"]["server_id"].as_str().unwrap()));
    }
    for _ in 0..100 {
        let o = t
            .call("GET", &format!("{}/{rid}", t.batch_path()), None)
            .await;
        if o.body["summary"]["APPLIED"] == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in &ids {
        let s = show(&t, id).await;
        assert_eq!(s["status"], "ACTIVE");
        assert_eq!(s["OS-EXT-STS:task_state"], "");
        assert_eq!(s["x-ecsd"]["last_reset"]["state"], "APPLIED", "{s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_keeps_its_reset_pending_until_it_starts() {
    let t = TestServer::start().await;
    let f = fleet(&t, 1).await;
    let id = f.list()[0].server_id.clone();
    let p = format!("/v1/{}/cloudservers/action", t.project);
    let r = t
        .call("POST", &p, Some(&action("os-stop", &[&id], None)))
        .await;
    let job = wait_job(&t, r.body["job_id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert_eq!(show(&t, &id).await["status"], "SHUTOFF");
    assert_eq!(show(&t, &id).await["OS-EXT-STS:power_state"], 4);
    let r = t
        .call(
            "PUT",
            &t.batch_path(),
            Some(&ids_body(Some("Gx7!pLq2vR"), None, &[&id])),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let rid = r.request_id.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let o = t
        .call("GET", &format!("{}/{rid}", t.batch_path()), None)
        .await;
    assert_eq!(
        o.body["servers"][0]["state"], "PENDING",
        "a stopped server took the reset"
    );
    // Reboot and stop are refused while it is off; start works (the simulator's BMC).
    let r = t
        .call("POST", &p, Some(&action("reboot", &[&id], Some("HARD"))))
        .await;
    assert_ecs(&r, 400, "Ecs.0100");
    let r = t
        .call("POST", &p, Some(&action("os-start", &[&id], None)))
        .await;
    let job = wait_job(&t, r.body["job_id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    for _ in 0..100 {
        let o = t
            .call("GET", &format!("{}/{rid}", t.batch_path()), None)
            .await;
        if o.body["servers"][0]["state"] == "APPLIED" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = show(&t, &id).await;
    assert_eq!(s["status"], "ACTIVE");
    assert_eq!(s["x-ecsd"]["last_reset"]["state"], "APPLIED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_action_on_a_busy_server_is_refused_with_ecs_0603() {
    // An enrolled server whose agent is not running: its sub-job stays open.
    let t = TestServer::start().await;
    let (a, _) = t.server(&t.project, "a", Linux, true).await;
    let p = format!("/v1/{}/cloudservers/action", t.project);
    let r = t
        .call("POST", &p, Some(&action("reboot", &[&a], Some("SOFT"))))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let job = t
        .call(
            "GET",
            &format!(
                "/v1/{}/jobs/{}",
                t.project,
                r.body["job_id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(job.body["status"], "INIT");
    let r2 = t
        .call("POST", &p, Some(&action("os-stop", &[&a], Some("HARD"))))
        .await;
    assert_ecs(&r2, 400, "Ecs.0603");
    assert_eq!(r2.body["internalError"][0]["id"], a);
    assert_eq!(show(&t, &a).await["status"], "ACTIVE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_time_out_when_no_agent_answers_and_survive_a_restart() {
    // The first ecsd never times the job out; the restarted one does.
    let mut t = TestServer::start_with(|c| c.job_timeout_secs = 3600).await;
    let (a, _) = t.server(&t.project, "a", Linux, true).await;
    let r = t
        .call(
            "POST",
            &format!("/v1/{}/cloudservers/action", t.project),
            Some(&action("reboot", &[&a], Some("HARD"))),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let job_id = r.body["job_id"].as_str().unwrap().to_owned();
    let path = format!("/v1/{}/jobs/{job_id}", t.project);
    assert_eq!(t.call("GET", &path, None).await.body["status"], "INIT");
    // Restarted, the open job is still there, and the new ecsd's sweeper fails it.
    t.restart_with(|c| c.job_timeout_secs = 1).await;
    let job = wait_job(&t, &job_id).await;
    assert_eq!(job["status"], "FAIL");
    assert_eq!(job["error_code"], "Ecs.0227");
    assert!(
        job["entities"]["sub_jobs"][0]["fail_reason"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{job}"
    );
    // Restarted again, the failed job reads the same through the API.
    t.restart_with(|_| {}).await;
    let again = t.call("GET", &path, None).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body, job);
    // And the server is free for a new action.
    let r = t
        .call(
            "POST",
            &format!("/v1/{}/cloudservers/action", t.project),
            Some(&action("reboot", &[&a], Some("SOFT"))),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_a_machine_without_a_power_driver_fails_with_a_reason() {
    let t = TestServer::start().await;
    let (a, _) = t.server(&t.project, "real", Linux, true).await;
    t.set_status(&a, "SHUTOFF");
    let r = t
        .call(
            "POST",
            &format!("/v1/{}/cloudservers/action", t.project),
            Some(&action("os-start", &[&a], None)),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let job = wait_job(&t, r.body["job_id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "FAIL");
    assert_eq!(job["error_code"], "Ecs.0226");
    assert!(
        job["fail_reason"]
            .as_str()
            .unwrap()
            .contains("power driver")
    );
}
