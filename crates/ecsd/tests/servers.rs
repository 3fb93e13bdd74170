//! Servers and power actions through the Huawei API: list, show, batch
//! start/stop/reboot, jobs, with simulated servers running the real agent.

mod common;

use std::time::Duration;

use common::*;
use ecs_api::{
    ActionKind, JobResult, JobStatus, ListServersResponse, ListedServer, ResetState, ServerAction,
    ServerDetail, ServerFault, ServerStatus,
};
use ecs_policy::OsType::Linux;
use serde_json::json;

fn start(ids: &[&str]) -> String {
    body(&ServerAction::Start { servers: refs(ids) })
}

fn stop(ids: &[&str], kind: Option<ActionKind>) -> String {
    body(&ServerAction::Stop {
        servers: refs(ids),
        kind,
    })
}

fn reboot(ids: &[&str], kind: ActionKind) -> String {
    body(&ServerAction::Reboot {
        servers: refs(ids),
        kind,
    })
}

/// The job id of an accepted action.
fn job_id(r: &Resp) -> String {
    assert_eq!(r.status, 200, "{}", r.text);
    r.json::<JobResult>().job_id
}

fn list(r: &Resp) -> ListServersResponse {
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()
}

fn ids_of(l: &ListServersResponse) -> Vec<String> {
    l.servers
        .iter()
        .map(|s| match s {
            ListedServer::Detail(d) => d.id.clone(),
            ListedServer::Missing { id, .. } => id.clone(),
        })
        .collect()
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
    let r = list(&t.call("GET", &base, None).await);
    assert_eq!(r.count, 31);
    let page1 = ids_of(&r);
    assert!(r.servers.iter().all(|s| s.detail().is_some()));
    assert_eq!(page1.len(), 25);
    assert_eq!(page1[0], db);
    // offset is a page number; 0 means 1.
    let r0 = list(
        &t.call("GET", &format!("{base}?offset=0&limit=10"), None)
            .await,
    );
    let r2 = list(
        &t.call("GET", &format!("{base}?offset=2&limit=10"), None)
            .await,
    );
    assert_eq!(ids_of(&r0)[0], db);
    assert_eq!(ids_of(&r2)[0], page1[10]);
    // marker: the page after a given server.
    let m = list(
        &t.call("GET", &format!("{base}?limit=5&marker={}", page1[4]), None)
            .await,
    );
    assert_eq!(ids_of(&m)[0], page1[5]);
    assert_eq!(m.count, 31);
    // Filters: fuzzy name (with LIKE characters taken literally), status, server_id.
    let count = |q: String| {
        let t = &t;
        async move { list(&t.call("GET", &q, None).await).count }
    };
    assert_eq!(count(format!("{base}?name=web-0")).await, 10);
    assert_eq!(count(format!("{base}?name=db_")).await, 1);
    assert_eq!(count(format!("{base}?name=b%25")).await, 0);
    assert_eq!(count(format!("{base}?status=SHUTOFF")).await, 0);
    let r = list(
        &t.call(
            "GET",
            &format!("{base}?server_id={},{},nope&name=zzz", ids[0], ids[1]),
            None,
        )
        .await,
    );
    assert_eq!(r.count, 2);
    let servers = r.servers;
    assert_eq!(servers.len(), 3);
    assert_eq!(
        servers[2],
        ListedServer::Missing {
            id: "nope".into(),
            fault: ServerFault {
                code: 404,
                message: "Instance could not be found.".into()
            }
        }
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
    // Deserializing into `ServerDetail` checks that every required field is
    // present with its type (the serde renames are Huawei's names:
    // `OS-EXT-STS:power_state`, `os-extended-volumes:volumes_attached`, ...).
    let s: ServerDetail = t.show(&id).await;
    let ServerDetail {
        id: _,
        name: _,
        status: _,
        tenant_id,
        created: _,
        updated: _,
        host_status,
        locked: _,
        power_state: _,
        task_state: _,
        launch_index: _,
        addresses: _,
        metadata,
        flavor: _,
        image: _,
        security_groups: _,
        volumes_attached: _,
        auto_terminate_time: _,
        ..
    } = s;
    assert_eq!(metadata.get("os_type").map(String::as_str), Some("Linux"));
    assert_eq!(tenant_id, t.project);
    // Registered but never reported: UNKNOWN.
    assert_eq!(host_status, ecs_api::HostStatus::Unknown);
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
    let p = t.action_path();
    for body in [
        "{}".to_string(),
        "[]".to_string(),
        start(&[]),
        json!({"reboot": {"servers": [{"id": a}]}}).to_string(),
        json!({"reboot": {"servers": [{"id": a}], "type": "MEDIUM"}}).to_string(),
        stop(&[&a, &a], None),
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
    let r = t.call("POST", &p, Some(&stop(&refs, None))).await;
    assert_ecs(&r, 400, "Ecs.0118");
    let r = t
        .call("POST", &p, Some(&reboot(&[&a, "nope"], ActionKind::Soft)))
        .await;
    let e = assert_ecs(&r, 400, "Ecs.0114");
    assert_eq!(e.internal_error.unwrap()[0].id, "nope");
    let r = t
        .call("POST", &p, Some(&reboot(&[&bare], ActionKind::Soft)))
        .await;
    assert_ecs(&r, 400, "Ecs.0100");
    // Starting a running server is not allowed.
    let r = t.call("POST", &p, Some(&start(&[&a]))).await;
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
            &t.action_path(),
            Some(&reboot(&ids, ActionKind::Soft)),
        )
        .await;
    let job = wait_job(&t, &job_id(&r)).await;
    assert_eq!(job.status, JobStatus::Success, "{job:?}");
    assert_eq!(job.job_type, "batchRebootServers");
    assert_eq!(job.entities.sub_jobs_total, 3);
    assert!(job.error_code.is_none() && job.fail_reason.is_none());
    assert!(job.end_time.ends_with('Z'));
    for sub in &job.entities.sub_jobs {
        assert_eq!(sub.status, JobStatus::Success);
        assert!(ids.contains(&sub.entities.server_id.as_str()));
    }
    for _ in 0..100 {
        if t.outcome(&rid).await.summary.applied == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in &ids {
        let s = t.show(id).await;
        assert_eq!(s.status, ServerStatus::Active);
        assert_eq!(s.task_state, "");
        assert_eq!(
            s.ecsd.last_reset.as_ref().map(|l| l.state),
            Some(ResetState::Applied),
            "{s:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_keeps_its_reset_pending_until_it_starts() {
    let t = TestServer::start().await;
    let f = fleet(&t, 1).await;
    let id = f.list()[0].server_id.clone();
    let p = t.action_path();
    let r = t.call("POST", &p, Some(&stop(&[&id], None))).await;
    let job = wait_job(&t, &job_id(&r)).await;
    assert_eq!(job.status, JobStatus::Success, "{job:?}");
    assert_eq!(t.show(&id).await.status, ServerStatus::Shutoff);
    assert_eq!(t.show(&id).await.power_state, 4);
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
    let o = t.outcome(&rid).await;
    assert_eq!(
        o.servers[0].state,
        ResetState::Pending,
        "a stopped server took the reset"
    );
    // Reboot and stop are refused while it is off; start works (the simulator's BMC).
    let r = t
        .call("POST", &p, Some(&reboot(&[&id], ActionKind::Hard)))
        .await;
    assert_ecs(&r, 400, "Ecs.0100");
    let r = t.call("POST", &p, Some(&start(&[&id]))).await;
    let job = wait_job(&t, &job_id(&r)).await;
    assert_eq!(job.status, JobStatus::Success, "{job:?}");
    for _ in 0..100 {
        if t.outcome(&rid).await.servers[0].state == ResetState::Applied {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = t.show(&id).await;
    assert_eq!(s.status, ServerStatus::Active);
    assert_eq!(
        s.ecsd.last_reset.map(|l| l.state),
        Some(ResetState::Applied)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_action_on_a_busy_server_is_refused_with_ecs_0603() {
    // An enrolled server whose agent is not running: its sub-job stays open.
    let t = TestServer::start().await;
    let (a, _) = t.server(&t.project, "a", Linux, true).await;
    let p = t.action_path();
    let r = t
        .call("POST", &p, Some(&reboot(&[&a], ActionKind::Soft)))
        .await;
    let j = job(&t, &job_id(&r)).await;
    assert_eq!(j.status, JobStatus::Init);
    let r2 = t
        .call("POST", &p, Some(&stop(&[&a], Some(ActionKind::Hard))))
        .await;
    let e = assert_ecs(&r2, 400, "Ecs.0603");
    assert_eq!(e.internal_error.unwrap()[0].id, a);
    assert_eq!(t.show(&a).await.status, ServerStatus::Active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_time_out_when_no_agent_answers_and_survive_a_restart() {
    // The first ecsd never times the job out; the restarted one does.
    let mut t = TestServer::start_with(|c| c.job_timeout_secs = 3600).await;
    let (a, _) = t.server(&t.project, "a", Linux, true).await;
    let r = t
        .call(
            "POST",
            &t.action_path(),
            Some(&reboot(&[&a], ActionKind::Hard)),
        )
        .await;
    let id = job_id(&r);
    assert_eq!(job(&t, &id).await.status, JobStatus::Init);
    // Restarted, the open job is still there, and the new ecsd's sweeper fails it.
    t.restart_with(|c| c.job_timeout_secs = 1).await;
    let failed = wait_job(&t, &id).await;
    assert_eq!(failed.status, JobStatus::Fail);
    assert_eq!(failed.error_code.as_deref(), Some("Ecs.0227"));
    assert!(
        failed.entities.sub_jobs[0]
            .fail_reason
            .as_deref()
            .is_some_and(|r| r.contains("timed out")),
        "{failed:?}"
    );
    // Restarted again, the failed job reads the same through the API.
    t.restart_with(|_| {}).await;
    assert_eq!(job(&t, &id).await, failed);
    // And the server is free for a new action.
    let r = t
        .call(
            "POST",
            &t.action_path(),
            Some(&reboot(&[&a], ActionKind::Soft)),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_a_machine_without_a_power_driver_fails_with_a_reason() {
    let t = TestServer::start().await;
    let (a, _) = t.server(&t.project, "real", Linux, true).await;
    t.set_status(&a, "SHUTOFF");
    let r = t.call("POST", &t.action_path(), Some(&start(&[&a]))).await;
    let job = wait_job(&t, &job_id(&r)).await;
    assert_eq!(job.status, JobStatus::Fail);
    assert_eq!(job.error_code.as_deref(), Some("Ecs.0226"));
    assert!(
        job.fail_reason
            .as_deref()
            .is_some_and(|r| r.contains("power driver"))
    );
}
