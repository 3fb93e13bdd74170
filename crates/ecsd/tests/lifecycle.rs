//! Lifecycle (issue #10) against a real ecsd and real SQLite: access keys
//! disabled, deleted and locked; failed authentications throttled; agents
//! revoked, servers deregistered, enrollment tokens revoked; the master key
//! rotated; the audit trail read through `GET /v3/{project_id}/traces`.

mod common;

use ecs_api::audit::{ListTracesResponse, TraceRating};

use std::time::Duration;

use common::*;
use ecs_agent::client::Client;
use ecsd::lifecycle::{KeyChange, change_access_key};
use ecsd::store::Role;
use secrecy::ExposeSecret;

fn detail(t: &TestServer) -> String {
    format!("/v1/{}/cloudservers/detail", t.project)
}

async fn list_as(t: &TestServer, ak: &str, sk: &str) -> Resp {
    t.call_as(ak, sk, "GET", &detail(t), None, &[]).await
}

fn msg(r: &Resp) -> String {
    r.json::<ecs_api::GatewayErrorBody>().error_msg
}

#[tokio::test]
async fn a_disabled_or_deleted_key_fails_on_its_next_request() {
    let t = TestServer::start().await;
    let (ak, sk) = (t.ak.clone(), t.sk.clone());
    assert_eq!(list_as(&t, &ak, &sk).await.status, 200);

    change_access_key(&t.state, &ak, KeyChange::Disable)
        .await
        .unwrap();
    let r = list_as(&t, &ak, &sk).await;
    assert_gateway(&r, 401, "APIGW.0301");
    assert!(msg(&r).contains("ak not exist"), "{}", r.text);
    let listed = ecsd::lifecycle::list_access_keys(&t.state, Some(&t.project))
        .await
        .unwrap();
    assert_eq!(listed[0]["status"], "inactive");
    assert!(!listed.to_string().contains(&sk), "never the SK");

    change_access_key(&t.state, &ak, KeyChange::Enable)
        .await
        .unwrap();
    assert_eq!(list_as(&t, &ak, &sk).await.status, 200);

    change_access_key(&t.state, &ak, KeyChange::Delete)
        .await
        .unwrap();
    let r = list_as(&t, &ak, &sk).await;
    assert_gateway(&r, 401, "APIGW.0301");
    assert!(msg(&r).contains("ak not exist"), "{}", r.text);
    assert!(
        change_access_key(&t.state, &ak, KeyChange::Enable)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn five_bad_signatures_lock_the_key_even_for_the_right_signature() {
    let t = TestServer::start().await;
    let (ak, sk) = (t.ak.clone(), t.sk.clone());
    let wrong = "W".repeat(40);
    // A success resets the count: 4 failures, a success, 4 failures: open.
    for _ in 0..4 {
        assert_gateway(&list_as(&t, &ak, &wrong).await, 401, "APIGW.0301");
    }
    assert_eq!(list_as(&t, &ak, &sk).await.status, 200);
    for _ in 0..4 {
        assert_gateway(&list_as(&t, &ak, &wrong).await, 401, "APIGW.0301");
    }
    assert_eq!(list_as(&t, &ak, &sk).await.status, 200);
    // Five in a row lock it.
    for _ in 0..5 {
        let r = list_as(&t, &ak, &wrong).await;
        assert_gateway(&r, 401, "APIGW.0301");
        assert!(msg(&r).contains("verify aksk signature fail"), "{}", r.text);
    }
    let r = list_as(&t, &ak, &sk).await;
    assert_gateway(&r, 401, "APIGW.0301");
    assert_eq!(
        msg(&r),
        format!(
            "Incorrect IAM authentication information: {}",
            ecsd::lifecycle::LOCKED_TAIL
        ),
        "{}",
        r.text
    );
    // Another key of the project is not locked.
    let (ak2, sk2) = ecsd::admin::create_access_key(&t.state, &t.project, Role::Admin)
        .await
        .unwrap();
    assert_eq!(list_as(&t, &ak2, sk2.expose_secret()).await.status, 200);
    let listed = ecsd::lifecycle::list_access_keys(&t.state, Some(&t.project))
        .await
        .unwrap();
    let mine = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["ak"] == ak.as_str())
        .unwrap();
    assert!(mine["locked_until"].is_string(), "{mine}");

    change_access_key(&t.state, &ak, KeyChange::Unlock)
        .await
        .unwrap();
    assert_eq!(list_as(&t, &ak, &sk).await.status, 200);
}

#[tokio::test]
async fn the_lock_is_in_the_database_so_every_replica_sees_it() {
    let t = TestServer::start().await;
    let (ak, sk) = (t.ak.clone(), t.sk.clone());
    let wrong = "W".repeat(40);
    for _ in 0..5 {
        list_as(&t, &ak, &wrong).await;
    }
    // A second ecsd on the same database (another replica).
    let mut other = TestServer::start().await;
    let db = t.db_path();
    let master = t.state.config.master_key.clone();
    other
        .restart_with(|c| {
            c.database = Some(db.display().to_string());
            c.master_key = master;
        })
        .await;
    let r = other.call_as(&ak, &sk, "GET", &detail(&t), None, &[]).await;
    assert_gateway(&r, 401, "APIGW.0301");
    assert!(msg(&r).contains(ecsd::lifecycle::LOCKED_TAIL), "{}", r.text);
}

#[tokio::test]
async fn failed_authentications_from_one_source_are_throttled() {
    let t = TestServer::start_with(|c| c.auth_failures_per_minute = 3).await;
    for i in 0..3 {
        let r = list_as(&t, &format!("UNKNOWNAK{i:011}"), "x").await;
        assert_gateway(&r, 401, "APIGW.0301");
    }
    // Over the budget: refused before any lookup, even with a good signature.
    let r = list_as(&t, "UNKNOWNAK99999999999", "x").await;
    assert_gateway(&r, 429, "APIGW.0308");
    let (ak, sk) = (t.ak.clone(), t.sk.clone());
    assert_gateway(&list_as(&t, &ak, &sk).await, 429, "APIGW.0308");
    // Throttled attempts never reach the key's lock count.
    let gate = t.state.lifecycle.key_gate(&ak).await.unwrap().unwrap();
    assert_eq!(gate.failures, 0);
}

async fn enrolled_agent(
    t: &TestServer,
    dir: &std::path::Path,
    machine: &str,
) -> ecs_agent_proto::EnrollResponse {
    let tok = token(t, 1).await;
    common::enroll(&t.base, &tok, dir, machine, machine, "Linux")
        .await
        .unwrap()
}

async fn work_status(t: &TestServer, credential: &str) -> u16 {
    reqwest::Client::new()
        .get(t.url("/agent/v1/work?wait=0"))
        .bearer_auth(credential)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_deregistered_server_is_gone_and_its_agent_refused() {
    let t = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let a = enrolled_agent(&t, &dir.path().join("a"), "m-a").await;
    let b = enrolled_agent(&t, &dir.path().join("b"), "m-b").await;
    assert_eq!(
        work_status(&t, &a.credential).await,
        204,
        "no work yet, and allowed"
    );
    // Open work for both servers.
    let body = ids_body(Some("Xy9!kLm2pQ"), None, &[&a.server_id, &b.server_id]);
    assert_eq!(
        t.call("PUT", &t.batch_path(), Some(&body)).await.status,
        200
    );

    ecsd::lifecycle::deregister_server(&t.state, &a.server_id)
        .await
        .unwrap();
    assert_eq!(work_status(&t, &a.credential).await, 401);
    let r = t
        .call(
            "GET",
            &format!("/v1/{}/cloudservers/{}", t.project, a.server_id),
            None,
        )
        .await;
    assert_ecs(&r, 404, "Ecs.0114");
    let r = t.call("GET", &detail(&t), None).await;
    let list: ecs_api::ListServersResponse = r.json();
    let ids: Vec<&str> = list
        .servers
        .iter()
        .map(|s| s.detail().unwrap().id.as_str())
        .collect();
    assert_eq!(ids, vec![b.server_id.as_str()]);
    assert_eq!(list.count, 1);
    // The other server keeps its work.
    assert!(raw_work(&t, &b.credential).await.reset.is_some());
    assert!(
        ecsd::lifecycle::deregister_server(&t.state, &a.server_id)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_revoked_agent_is_refused_until_it_enrolls_again() {
    let t = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("a");
    let a = enrolled_agent(&t, &state, "m-a").await;
    assert_eq!(
        work_status(&t, &a.credential).await,
        204,
        "no work yet, and allowed"
    );
    ecsd::lifecycle::revoke_agent(&t.state, &a.server_id)
        .await
        .unwrap();
    assert_eq!(work_status(&t, &a.credential).await, 401);
    let old = Client::new(common::http(), &t.base, Some(secret(&a.credential)));
    assert!(old.work(None, Duration::ZERO, false).await.is_err());
    // The server stays.
    let r = t
        .call(
            "GET",
            &format!("/v1/{}/cloudservers/{}", t.project, a.server_id),
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    // Enrolling again (the agent proves its key) gives a new credential.
    let again = common::enroll(&t.base, "", &state, "m-a", "m-a", "Linux")
        .await
        .unwrap();
    assert_eq!(again.server_id, a.server_id);
    assert_eq!(
        work_status(&t, &again.credential).await,
        204,
        "no work yet, and allowed"
    );
    assert_eq!(work_status(&t, &a.credential).await, 401);
}

#[tokio::test]
async fn enrollment_tokens_are_listed_without_secrets_and_revoked() {
    let t = TestServer::start().await;
    let tok = token(&t, 3).await;
    let listed = ecsd::lifecycle::list_enroll_tokens(&t.state, Some(&t.project))
        .await
        .unwrap();
    let list = listed.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["uses_left"], 3);
    assert_eq!(list[0]["kind"], "enroll");
    let id = list[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(id, ecsd::secrets::bearer_hash(&tok)[..12]);
    assert!(!listed.to_string().contains(&tok));
    assert!(
        !listed
            .to_string()
            .contains(&ecsd::secrets::bearer_hash(&tok))
    );

    ecsd::lifecycle::revoke_enroll_token(&t.state, &id)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let e = common::enroll(&t.base, &tok, dir.path(), "m", "h", "Linux").await;
    let m = format!("{:#}", e.unwrap_err());
    assert!(m.contains("401"), "{m}");
    assert!(
        ecsd::lifecycle::list_enroll_tokens(&t.state, None)
            .await
            .unwrap()
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(
        ecsd::lifecycle::revoke_enroll_token(&t.state, &id)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn after_rotating_the_master_key_every_key_works_with_the_new_one_only() {
    let mut t = TestServer::start().await;
    let (ak2, sk2) = ecsd::admin::create_access_key(&t.state, &t.project, Role::ReadOnly)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = enrolled_agent(&t, dir.path(), "m-a").await;
    let work_key = t.state.work_keys().await.unwrap().public();
    let old_master = t.state.config.master_key.clone().unwrap();

    let new_master = ecsd::secrets::MasterKey::generate_base64();
    let n = ecsd::lifecycle::rotate_master_key(&t.state, &new_master)
        .await
        .unwrap();
    assert_eq!(n, 3, "two SKs and one work-signing key");

    // None opens with the old key any more.
    let old = ecsd::secrets::MasterKey::from_base64(&old_master).unwrap();
    for ak in [&t.ak, &ak2] {
        let k = t.state.store.access_key(ak).await.unwrap().unwrap();
        assert!(old.decrypt(ak, &k.sk_sealed).is_err());
    }
    assert!(
        ecsd::work::WorkKeys::load_or_create(&*t.state.store, &old)
            .await
            .is_err()
    );

    // Restarted with the new key: both AKs sign, the work key signs.
    let nm = new_master.clone();
    t.restart_with(|c| c.master_key = Some(nm)).await;
    assert_eq!(t.call("GET", &detail(&t), None).await.status, 200);
    assert_eq!(list_as(&t, &ak2, sk2.expose_secret()).await.status, 200);
    let body = ids_body(Some("Xy9!kLm2pQ"), None, &[&a.server_id]);
    assert_eq!(
        t.call("PUT", &t.batch_path(), Some(&body)).await.status,
        200
    );
    let poll = raw_work(&t, &a.credential).await;
    let work = poll.reset.expect("the reset");
    let verifier = ecs_trust::work::WorkVerifier::from_base64(&work_key).unwrap();
    let env = verifier
        .open(work.envelope.as_ref())
        .expect("signed by the same work key");
    assert_eq!(env.server_id, a.server_id);

    // Restarted with the old key: nothing opens.
    t.restart_with(|c| c.master_key = Some(old_master)).await;
    let r = t.call("GET", &detail(&t), None).await;
    assert_eq!(r.status, 500, "{}", r.text);
}

async fn traces(t: &TestServer, query: &str) -> Resp {
    t.call("GET", &format!("/v3/{}/traces{query}", t.project), None)
        .await
}

#[tokio::test]
async fn changes_and_denials_are_traces_filtered_and_paged() {
    let t = TestServer::start().await;
    let (sid, _) = t
        .server(&t.project, "web-1", ecs_policy::OsType::Linux, true)
        .await;
    let password = "Xy9!kLm2pQ";
    // An accepted reset, a rejected one, a denied call, a read-only denial.
    let ok = t
        .call(
            "PUT",
            &t.batch_path(),
            Some(&ids_body(Some(password), None, &[&sid])),
        )
        .await;
    assert_eq!(ok.status, 200);
    let rejected = t
        .call(
            "PUT",
            &t.batch_path(),
            Some(&ids_body(Some(password), None, &["nope"])),
        )
        .await;
    assert_eq!(rejected.status, 400);
    let denied = list_as(&t, &t.ak, &"W".repeat(40)).await;
    assert_eq!(denied.status, 401);
    let (ro, ro_sk) = ecsd::admin::create_access_key(&t.state, &t.project, Role::ReadOnly)
        .await
        .unwrap();
    let forbidden = t
        .call_as(
            &ro,
            ro_sk.expose_secret(),
            "PUT",
            &t.batch_path(),
            Some((
                "application/json",
                ids_body(Some(password), None, &[&sid]).into_bytes(),
            )),
            &[],
        )
        .await;
    assert_eq!(forbidden.status, 403);

    let r = traces(&t, "?limit=50").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        !r.text.contains(password)
            && !r.text.contains(&t.sk)
            && !r.text.contains(ro_sk.expose_secret())
    );
    let page: ListTracesResponse = r.json();
    let all = &page.traces;
    assert_eq!(all.len(), 4, "{}", r.text);
    assert_eq!(page.meta_data.count, 4);
    assert!(page.meta_data.marker.is_none());
    // Newest first.
    let by_request = |resp: &Resp| {
        all.iter()
            .find(|x| Some(x.request_id.as_str()) == resp.request_id.as_deref())
            .unwrap_or_else(|| panic!("no trace for {:?}", resp.request_id))
            .clone()
    };
    let tr = by_request(&ok);
    assert_eq!(tr.trace_name, "batch-reset-password");
    assert_eq!(tr.trace_rating, TraceRating::Normal);
    assert_eq!(tr.resource_id.as_deref(), Some(sid.as_str()));
    assert_eq!(tr.user.access_key_id, t.ak);
    assert_eq!(tr.source_ip, "127.0.0.1");
    assert!(tr.request.is_none() && tr.response.is_none());
    assert!(!tr.dry_run);
    let tr = by_request(&rejected);
    assert_eq!(
        (tr.trace_rating, tr.error_code.as_deref()),
        (TraceRating::Warning, Some("Ecs.0114"))
    );
    let tr = by_request(&denied);
    assert_eq!(tr.trace_name, "list-servers");
    assert_eq!(
        (tr.error_code.as_deref(), tr.code.as_deref()),
        (Some("APIGW.0301"), Some("401"))
    );
    let tr = by_request(&forbidden);
    assert_eq!(
        (tr.error_code.as_deref(), tr.code.as_deref()),
        (Some("APIGW.0302"), Some("403"))
    );
    assert_eq!(tr.user.access_key_id, ro);

    // Filters.
    let count = |r: Resp| r.json::<ListTracesResponse>().traces.len();
    assert_eq!(count(traces(&t, "?trace_status=fail&limit=50").await), 3);
    assert_eq!(count(traces(&t, "?trace_rating=normal").await), 1);
    assert_eq!(
        count(traces(&t, "?trace_name=batch-reset-password&limit=50").await),
        3
    );
    assert_eq!(count(traces(&t, &format!("?resource_id={sid}")).await), 1);
    assert_eq!(count(traces(&t, &format!("?user={ro}")).await), 1);
    let future = chrono::Utc::now().timestamp_millis() + 60_000;
    assert_eq!(count(traces(&t, &format!("?from={future}")).await), 0);
    assert_eq!(
        count(traces(&t, &format!("?to={future}&trace_type=system")).await),
        4
    );
    // Pages of one, following the marker, give the same traces in order.
    let mut seen = Vec::new();
    let mut next = String::new();
    loop {
        let r = traces(&t, &format!("?limit=1{next}")).await;
        assert_eq!(r.status, 200);
        let page: ListTracesResponse = r.json();
        seen.push(page.traces[0].trace_id.clone());
        match page.meta_data.marker {
            Some(m) => next = format!("&next={m}"),
            None => break,
        }
    }
    let ids: Vec<_> = all.iter().map(|x| x.trace_id.clone()).collect();
    assert_eq!(seen, ids);
    assert_ecs(&traces(&t, "?limit=0").await, 400, "Ecs.0005");
    assert_ecs(&traces(&t, "?trace_rating=bad").await, 400, "Ecs.0005");
    // Reading traces is not itself a trace.
    assert_eq!(count(traces(&t, "?limit=50").await), 4);
}

#[tokio::test]
async fn audit_retention_prunes_only_old_records() {
    // The server's own retention task (365 days by default) runs at start and
    // must not touch these records; the pruning under test is called with 30.
    let t = TestServer::start().await;
    assert_eq!(t.state.config.audit_retention_days, 365);
    let now = chrono::Utc::now();
    for days in [40, 35, 31, 29, 1] {
        t.state
            .store
            .record_audit(ecsd::store::AuditEntry {
                at: now - chrono::Duration::days(days),
                request_id: format!("r{days}"),
                project_id: t.project.clone(),
                actor: "AK".into(),
                action: "x".into(),
                servers: vec![],
                dry_run: false,
                outcome: "accepted".into(),
                source: "test".into(),
                user_id: None,
                user_name: None,
                error_code: None,
                http_status: None,
            })
            .await
            .unwrap();
    }
    assert_eq!(
        ecsd::lifecycle::prune_audit(&t.state, now, 30, 2)
            .await
            .unwrap(),
        3
    );
    let r = traces(&t, "?limit=50").await;
    let page: ListTracesResponse = r.json();
    let left: Vec<&str> = page.traces.iter().map(|x| x.request_id.as_str()).collect();
    assert_eq!(left, vec!["r1", "r29"]);
    // The trail is append-only: SQLite refuses to change a record.
    let c = rusqlite::Connection::open(t.db_path()).unwrap();
    assert!(c.execute("UPDATE audit SET outcome = 'x'", []).is_err());
}

#[tokio::test]
async fn tokens_enrollments_and_admin_changes_are_traced_without_secrets() {
    let t = TestServer::start().await;
    let r = t
        .call(
            "POST",
            &format!("/v1/{}/enroll-tokens", t.project),
            Some(r#"{"uses": 1}"#),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let tok = r.json::<ecs_api::EnrollTokenResponse>().token;
    let dir = tempfile::tempdir().unwrap();
    let e = common::enroll(&t.base, &tok, dir.path(), "m-1", "h", "Linux")
        .await
        .unwrap();
    ecsd::lifecycle::revoke_agent(&t.state, &e.server_id)
        .await
        .unwrap();
    let r = traces(&t, "?limit=50").await;
    assert!(!r.text.contains(&tok) && !r.text.contains(&e.credential));
    let page: ListTracesResponse = r.json();
    let names: Vec<&str> = page.traces.iter().map(|x| x.trace_name.as_str()).collect();
    assert_eq!(
        names,
        vec!["revoke-agent", "enroll-agent", "create-enroll-token"]
    );
    let r = traces(&t, &format!("?resource_id={}", e.server_id)).await;
    let page: ListTracesResponse = r.json();
    let who: Vec<&str> = page
        .traces
        .iter()
        .map(|x| x.user.access_key_id.as_str())
        .collect();
    assert_eq!(who, vec!["ecsd-admin", "agent"]);
}

#[tokio::test]
async fn rotate_master_key_takes_a_key_file_or_writes_a_dev_key_after_the_commit() {
    let mut t = TestServer::start().await;
    let data = t.state.config.data_dir.clone();
    let first = t.state.config.master_key.clone().unwrap();
    // Not a dev data directory and no key file: refused.
    assert!(
        ecsd::lifecycle::rotate_master_key_cli(&t.state, None)
            .await
            .is_err()
    );
    assert_eq!(t.call("GET", &detail(&t), None).await.status, 200);

    // From a key file.
    let file = data.join("new.key");
    let second = ecsd::secrets::MasterKey::generate_base64();
    std::fs::write(&file, format!("{}\n", second.expose_secret())).unwrap();
    let out = ecsd::lifecycle::rotate_master_key_cli(&t.state, Some(&file))
        .await
        .unwrap();
    assert!(out["resealed"].as_u64().unwrap() >= 1, "{out}");
    assert!(!out.to_string().contains(second.expose_secret()));
    let s = second.clone();
    t.restart_with(|c| c.master_key = Some(s)).await;
    assert_eq!(t.call("GET", &detail(&t), None).await.status, 200);

    // A dev data directory (master.key beside the database): a generated key.
    std::fs::write(data.join("master.key"), second.expose_secret()).unwrap();
    let out = ecsd::lifecycle::rotate_master_key_cli(&t.state, None)
        .await
        .unwrap();
    let third = std::fs::read_to_string(data.join("master.key")).unwrap();
    assert_ne!(third.trim(), second.expose_secret());
    assert_ne!(third.trim(), first.expose_secret());
    assert!(!data.join("master.key.new").exists());
    assert!(!out.to_string().contains(third.trim()));
    t.restart_with(|c| c.master_key = Some(secrecy::SecretString::from(third.trim().to_owned())))
        .await;
    assert_eq!(t.call("GET", &detail(&t), None).await.status, 200);
}

#[tokio::test]
async fn finished_resets_past_retention_are_pruned_and_servers_still_served() {
    // Pruning is called with an explicit `now` 31 days ahead: the server's own
    // start-up round (as of the real now) cannot see these resets as old.
    let t = TestServer::start().await;
    assert_eq!(t.state.config.reset_retention_days, 30);
    let (a, _) = t
        .server(&t.project, "a", ecs_policy::OsType::Linux, true)
        .await;
    let (b, _) = t
        .server(&t.project, "b", ecs_policy::OsType::Linux, true)
        .await;
    let put = |ids: Vec<String>| {
        let t = &t;
        async move {
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            let r = t
                .call(
                    "PUT",
                    &t.batch_path(),
                    Some(&ids_body(Some("Gx7!pLq2vR"), None, &ids)),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.text);
            r.request_id.unwrap()
        }
    };
    let first = put(vec![a.clone()]).await; // superseded by the second
    let second = put(vec![a.clone()]).await;
    assert!(
        t.state
            .store
            .ack(&a, &second, true, None, chrono::Utc::now())
            .await
            .unwrap()
    );
    let open = put(vec![b.clone()]).await; // never acknowledged
    assert!(t.show(&a).await.ecsd.last_reset.is_some());

    let r = ecsd::lifecycle::Retention {
        audit_days: 3650,
        reset_days: 30,
        job_days: 30,
        batch: 1,
    };
    let later = chrono::Utc::now() + chrono::Duration::days(31);
    let pruned = ecsd::lifecycle::retention_round(&t.state, later, r)
        .await
        .unwrap();
    assert_eq!((pruned.resets, pruned.audit), (2, 0));

    for rid in [&first, &second] {
        let o = t
            .call("GET", &format!("{}/{rid}", t.batch_path()), None)
            .await;
        assert_ecs(&o, 400, "Common.0011");
    }
    // Open work stays; the server whose last reset is gone is still served.
    assert_eq!(t.outcome(&open).await.servers[0].id, b);
    assert!(t.show(&a).await.ecsd.last_reset.is_none());
    assert!(t.show(&b).await.ecsd.last_reset.is_some());
    // And takes new resets.
    let next = put(vec![a.clone()]).await;
    assert_eq!(t.outcome(&next).await.servers[0].id, a);
    assert!(t.show(&a).await.ecsd.last_reset.is_some());
}
