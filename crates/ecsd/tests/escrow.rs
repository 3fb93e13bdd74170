//! Issue 15 against a real ecsd: generated passwords escrowed to age
//! recipients, refused without a recipient, retrieval refused without
//! `ecs:cloudServers:getPassword` and audited either way, rotation policies
//! run by housekeeping on a test clock (once per period, only the selected
//! servers, after retrieval with a grace period), and an offline server
//! catching up when it returns. The SQLite file and ecsd's memory of the
//! passwords are checked in ecsctl's CLI test (the real `ecsd --dev`).

mod common;

use std::time::Duration;

use common::{TestServer, assert_ecs, assert_gateway, body, refs, root_hash, verifies};
use ecs_api::{BatchResetRequest, EscrowedPasswords, Generate, ResetState};
use ecs_policy::OsType;
use ecsd::store::Role;
use ecsd::store::lifecycle::AuditQuery;
use secrecy::ExposeSecret;

/// Registers a fresh identity's recipient; returns the identity.
async fn recipient(t: &TestServer) -> ecs_escrow::Identity {
    let (id, _) = ecs_escrow::new_identity("test");
    let r = t
        .call(
            "POST",
            &format!("/v1/{}/escrow/recipients", t.project),
            Some(&serde_json::json!({"name": "test", "recipient": id.recipient()}).to_string()),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    id
}

fn generate(ids: &[&str]) -> String {
    body(&BatchResetRequest {
        new_password: None,
        generate: Some(Generate { length: Some(16) }),
        dry_run: None,
        servers: refs(ids),
        apply: None,
    })
}

async fn versions(t: &TestServer, id: &str) -> EscrowedPasswords {
    let r = t
        .call(
            "GET",
            &format!("/v1/{}/cloudservers/{id}/escrowed-passwords", t.project),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()
}

/// The stored versions, read without an API call (no retrieval audited).
async fn count(t: &TestServer, id: &str) -> usize {
    t.state.escrow.versions(id).await.unwrap().len()
}

async fn tag(t: &TestServer, id: &str, key: &str, value: &str) {
    let b = serde_json::json!({"action": "create", "tags": [{"key": key, "value": value}]});
    let r = t
        .call(
            "POST",
            &format!("/v1/{}/cloudservers/{id}/tags/action", t.project),
            Some(&b.to_string()),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
}

async fn policy(t: &TestServer, spec: serde_json::Value) {
    let r = t
        .call(
            "POST",
            &format!("/v1/{}/escrow/rotation-policies", t.project),
            Some(&spec.to_string()),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
}

/// Waits (up to 10 s of real time) until `f` holds.
async fn until<F: Fn() -> Fut, Fut: Future<Output = bool>>(what: &str, f: F) {
    for _ in 0..200 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never: {what}");
}

fn fast_rotation(c: &mut ecsd::config::Config) {
    c.rotation_check_secs = 1;
}

#[tokio::test]
async fn generate_is_refused_without_a_recipient_or_beside_a_password() {
    let t = TestServer::start().await;
    let (a, _) = t.server(&t.project, "a", OsType::Linux, true).await;
    let r = t.call("PUT", &t.batch_path(), Some(&generate(&[&a]))).await;
    let e = assert_ecs(&r, 400, "Ecs.0005");
    assert!(e.error.message.contains("escrow recipient"), "{}", r.text);
    assert_eq!(count(&t, &a).await, 0);
    // Nothing was reset.
    assert!(t.show(&a).await.ecsd.last_reset.is_none());
    let single = format!("/v1/{}/cloudservers/{a}/os-reset-password", t.project);
    let r = t
        .call(
            "PUT",
            &single,
            Some(r#"{"reset-password": {"generate": {}}}"#),
        )
        .await;
    assert_ecs(&r, 400, "Ecs.0005");

    recipient(&t).await;
    let both = serde_json::json!({"new_password": "Good-Pass-2024", "generate": {},
        "servers": [{"id": a}]});
    let r = t
        .call("PUT", &t.batch_path(), Some(&both.to_string()))
        .await;
    let e = assert_ecs(&r, 400, "Ecs.0005");
    assert!(e.error.message.contains("cannot both"), "{}", r.text);
    let short = serde_json::json!({"generate": {"length": 7}, "servers": [{"id": a}]});
    let r = t
        .call("PUT", &t.batch_path(), Some(&short.to_string()))
        .await;
    let e = assert_ecs(&r, 400, "Ecs.0005");
    assert!(e.error.message.contains("generate.length"), "{}", r.text);

    // The single reset takes it too: one version, PENDING.
    let r = t
        .call(
            "PUT",
            &single,
            Some(r#"{"reset-password": {"generate": {"length": 12}}}"#),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let v = versions(&t, &a).await;
    assert_eq!(v.versions.len(), 1);
    assert_eq!(v.versions[0].request_id, r.request_id.unwrap());
    assert_eq!(v.versions[0].state, Some(ResetState::Pending));
    assert!(!v.versions[0].applied);
}

#[tokio::test]
async fn each_server_gets_its_own_password_for_its_os_and_only_recipients_open_it() {
    let t = TestServer::start().await;
    let alice = recipient(&t).await;
    let bob = recipient(&t).await;
    let (l, _) = t.server(&t.project, "l", OsType::Linux, true).await;
    let (w, _) = t.server(&t.project, "w", OsType::Windows, true).await;
    let r = t
        .call("PUT", &t.batch_path(), Some(&generate(&[&l, &w])))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let mut seen = Vec::new();
    for (id, os) in [(&l, OsType::Linux), (&w, OsType::Windows)] {
        let v = versions(&t, id).await;
        let blob = v.versions[0].age.as_bytes();
        let a = ecs_escrow::decrypt(&alice, blob).unwrap();
        let b = ecs_escrow::decrypt(&bob, blob).unwrap();
        assert_eq!(a.expose_secret(), b.expose_secret());
        assert_eq!(a.expose_secret().len(), 16);
        ecs_policy::check(a.expose_secret(), os, ecs_policy::Strictness::Full).unwrap();
        seen.push(a.expose_secret().to_owned());
    }
    assert_ne!(seen[0], seen[1]);
    // A removed recipient is not in later versions; earlier ones stay.
    let list: ecs_api::RecipientList = t
        .call("GET", &format!("/v1/{}/escrow/recipients", t.project), None)
        .await
        .json();
    let bob_id = &list
        .recipients
        .iter()
        .find(|r| r.recipient == bob.recipient())
        .unwrap()
        .id;
    let r = t
        .call(
            "DELETE",
            &format!("/v1/{}/escrow/recipients/{bob_id}", t.project),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = t.call("PUT", &t.batch_path(), Some(&generate(&[&l]))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = versions(&t, &l).await;
    assert_eq!(v.versions.len(), 2);
    assert!(ecs_escrow::decrypt(&alice, v.versions[0].age.as_bytes()).is_ok());
    assert!(ecs_escrow::decrypt(&bob, v.versions[0].age.as_bytes()).is_err());
    assert!(ecs_escrow::decrypt(&bob, v.versions[1].age.as_bytes()).is_ok());
}

async fn retrievals(t: &TestServer, server: &str) -> Vec<(String, String)> {
    t.state
        .lifecycle
        .list_audit(AuditQuery {
            project_id: t.project.clone(),
            resource_id: Some(server.to_owned()),
            action: Some("ecs:cloudServers:getPassword".into()),
            limit: 100,
            ..AuditQuery::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.entry.actor, r.entry.outcome))
        .collect()
}

#[tokio::test]
async fn retrieval_needs_the_permission_and_every_one_is_audited() {
    let t = TestServer::start().await;
    recipient(&t).await;
    let (a, _) = t.server(&t.project, "a", OsType::Linux, true).await;
    let r = t.call("PUT", &t.batch_path(), Some(&generate(&[&a]))).await;
    assert_eq!(r.status, 200, "{}", r.text);

    // A read-only key (system role readonly: get* but not getPassword).
    let (ak, sk) = ecsd::admin::create_access_key(&t.state, &t.project, Role::ReadOnly)
        .await
        .unwrap();
    let path = format!("/v1/{}/cloudservers/{a}/escrowed-passwords", t.project);
    let r = t
        .call_as(&ak, sk.expose_secret(), "GET", &path, None, &[])
        .await;
    let e = assert_gateway(&r, 403, "APIGW.0302");
    assert!(
        e.error_msg.contains("ecs:cloudServers:getPassword"),
        "{}",
        r.text
    );
    assert!(!r.text.contains("BEGIN AGE"));
    assert_eq!(
        retrievals(&t, &a).await,
        [(ak.clone(), "denied APIGW.0302".to_owned())]
    );

    // The admin key: allowed, audited with the versions handed out.
    let v = versions(&t, &a).await;
    assert_eq!(v.versions.len(), 1);
    let r = t.call("GET", &format!("{path}?version=1"), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = t.call("GET", &format!("{path}?version=9"), None).await;
    assert_ecs(&r, 404, "Ecs.0005");
    let got = retrievals(&t, &a).await;
    assert_eq!(got.len(), 4, "{got:?}");
    // Newest first.
    assert_eq!(got[1], (t.ak.clone(), "retrieved versions [1]".to_owned()));
    assert_eq!(got[2], (t.ak.clone(), "retrieved versions [1]".to_owned()));
    assert_eq!(got[0].0, t.ak);
    assert!(got[0].1.starts_with("rejected"), "{got:?}");
    // The audit trail names no password and holds no blob.
    for (_, outcome) in &got {
        assert!(!outcome.contains("AGE"));
    }
    // An unknown server: 404, and the caller without permission learns nothing.
    let r = t
        .call_as(
            &ak,
            sk.expose_secret(),
            "GET",
            &format!("/v1/{}/cloudservers/nope/escrowed-passwords", t.project),
            None,
            &[],
        )
        .await;
    assert_gateway(&r, 403, "APIGW.0302");
}

#[tokio::test]
async fn a_one_minute_policy_rotates_the_selected_servers_once_per_period_and_never_the_others() {
    let t = TestServer::start_with(fast_rotation).await;
    let identity = recipient(&t).await;
    let mut prod = Vec::new();
    for i in 0..2 {
        let (id, _) = t
            .server(&t.project, &format!("web-{i}"), OsType::Linux, true)
            .await;
        tag(&t, &id, "env", "prod").await;
        prod.push(id);
    }
    let (dev, _) = t.server(&t.project, "web-dev", OsType::Linux, true).await;
    tag(&t, &dev, "env", "dev").await;
    let (db, _) = t.server(&t.project, "db-0", OsType::Windows, true).await;
    tag(&t, &db, "env", "prod").await;
    // A prod server in a state that takes no reset: caught up later.
    let (broken, _) = t.server(&t.project, "web-9", OsType::Linux, true).await;
    tag(&t, &broken, "env", "prod").await;
    t.set_status(&broken, "ERROR");

    policy(
        &t,
        serde_json::json!({"name": "prod-web", "schedule": {"every_minutes": 1},
            "selector": {"tags": ["env=prod"], "name": "web-*", "os": "Linux"},
            "apply": "now"}),
    )
    .await;
    // The first run is at once.
    until("the first rotation", || async {
        count(&t, &prod[0]).await == 1 && count(&t, &prod[1]).await == 1
    })
    .await;
    // Nothing more within the period (the scheduler looks every second).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for id in &prod {
        assert_eq!(count(&t, id).await, 1);
    }
    let first = t.state.escrow.versions(&prod[0]).await.unwrap();
    // Recorded as a reset with a request id, covering both selected servers.
    let outcome = t.outcome(&first[0].request_id).await;
    let mut ids: Vec<&str> = outcome.servers.iter().map(|s| s.id.as_str()).collect();
    ids.sort();
    let mut want: Vec<&str> = prod.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(ids, want);
    assert!(outcome.apply_now);

    // The broken server comes back: caught up before the next period, once
    // the run has settled (10 s after it).
    t.set_status(&broken, "ACTIVE");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(count(&t, &broken).await, 0);
    t.state.clock.jump(chrono::Duration::seconds(15));
    until("the catch-up", || async { count(&t, &broken).await == 1 }).await;
    assert_eq!(count(&t, &prod[0]).await, 1);

    // A minute after the first run on the test clock: one more version each.
    t.state.clock.jump(chrono::Duration::seconds(46));
    until("the second rotation", || async {
        count(&t, &prod[0]).await == 2 && count(&t, &prod[1]).await == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for id in &prod {
        assert_eq!(count(&t, id).await, 2);
    }
    // Never the others: another tag, another name, another OS.
    assert_eq!(count(&t, &dev).await, 0);
    assert_eq!(count(&t, &db).await, 0);
    // Each version is a different password the recipient opens.
    let vs = t.state.escrow.versions(&prod[0]).await.unwrap();
    let a = ecs_escrow::decrypt(&identity, &vs[0].blob).unwrap();
    let b = ecs_escrow::decrypt(&identity, &vs[1].blob).unwrap();
    assert_ne!(a.expose_secret(), b.expose_secret());
    // The drift report: the unselected servers were never escrowed.
    let r = t
        .call(
            "GET",
            &format!("/v1/{}/escrow/password-status", t.project),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let s: ecs_api::PasswordStatusList = r.json();
    let status = |id: &str| {
        s.servers
            .iter()
            .find(|x| x.server_id == id)
            .unwrap()
            .status
            .clone()
    };
    assert_eq!(status(&dev), "never_escrowed");
    assert_eq!(status(&prod[0]), "ok");
    let r = t
        .call(
            "DELETE",
            &format!("/v1/{}/escrow/rotation-policies/prod-web", t.project),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
}

#[tokio::test]
async fn a_retrieved_password_rotates_after_the_grace_period() {
    let t = TestServer::start_with(fast_rotation).await;
    recipient(&t).await;
    let (a, _) = t.server(&t.project, "a", OsType::Linux, true).await;
    let (b, _) = t.server(&t.project, "b", OsType::Linux, true).await;
    policy(
        &t,
        serde_json::json!({"name": "daily", "schedule": {"every_days": 1},
            "rotate_after_retrieval_minutes": 10}),
    )
    .await;
    until("the first rotation", || async {
        count(&t, &a).await == 1 && count(&t, &b).await == 1
    })
    .await;
    // a's password is retrieved; b's is not.
    versions(&t, &a).await;
    t.state.clock.jump(chrono::Duration::minutes(9));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(count(&t, &a).await, 1, "rotated inside the grace period");
    t.state.clock.jump(chrono::Duration::minutes(2));
    until("the rotation after retrieval", || async {
        count(&t, &a).await == 2
    })
    .await;
    // Once: no retrieval since.
    t.state.clock.jump(chrono::Duration::minutes(30));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(count(&t, &a).await, 2);
    assert_eq!(count(&t, &b).await, 1);
}

#[tokio::test]
async fn an_offline_server_catches_up_when_it_returns() {
    let t = TestServer::start_with(fast_rotation).await;
    let identity = recipient(&t).await;
    let fleet = common::fleet(&t, 2).await;
    let servers = fleet.list();
    let (on, off) = (&servers[0], &servers[1]);
    let before = root_hash(&off.root);
    fleet.power_off(&off.name).await.unwrap();
    policy(
        &t,
        serde_json::json!({"name": "all", "schedule": {"every_days": 1}, "apply": "now"}),
    )
    .await;
    let applied = |id: String| {
        let t = &t;
        async move {
            t.state
                .escrow
                .versions(&id)
                .await
                .unwrap()
                .first()
                .is_some_and(|v| v.state == Some(ResetState::Applied))
        }
    };
    until("the running server applied", || {
        applied(on.server_id.clone())
    })
    .await;
    let v = t.state.escrow.versions(&off.server_id).await.unwrap();
    assert_eq!(v.len(), 1);
    assert_ne!(v[0].state, Some(ResetState::Applied));
    assert_eq!(root_hash(&off.root), before);
    // It returns: the agent takes its password at boot.
    fleet.power_on(&off.name).await.unwrap();
    until("the returning server applied", || {
        applied(off.server_id.clone())
    })
    .await;
    for s in [on, off] {
        let v = t.state.escrow.versions(&s.server_id).await.unwrap();
        let pw = ecs_escrow::decrypt(&identity, &v[0].blob).unwrap();
        assert!(verifies(&root_hash(&s.root), pw.expose_secret()));
    }
    fleet.stop();
}

#[tokio::test]
async fn now_restart_rotates_and_reboots_so_the_password_applies_at_once() {
    let t = TestServer::start_with(fast_rotation).await;
    let identity = recipient(&t).await;
    let fleet = common::fleet(&t, 1).await;
    let s = &fleet.list()[0];
    let boot = t.show(&s.server_id).await.ecsd.agent.boot_id;
    policy(
        &t,
        serde_json::json!({"name": "restart", "schedule": {"every_days": 1}, "apply": "now_restart"}),
    )
    .await;
    until("applied after the restart", || async {
        t.state
            .escrow
            .versions(&s.server_id)
            .await
            .unwrap()
            .first()
            .is_some_and(|v| v.state == Some(ResetState::Applied))
    })
    .await;
    // Applied at boot (the reset itself waits for a restart), and the
    // server did restart.
    let v = t.state.escrow.versions(&s.server_id).await.unwrap();
    assert!(!t.outcome(&v[0].request_id).await.apply_now);
    assert_ne!(t.show(&s.server_id).await.ecsd.agent.boot_id, boot);
    let pw = ecs_escrow::decrypt(&identity, &v[0].blob).unwrap();
    assert!(verifies(&root_hash(&s.root), pw.expose_secret()));
    fleet.stop();
}

/// Two replicas on one PostgreSQL database run the scheduler at the same
/// moment (as they would if both believed they held housekeeping): the
/// policy's claim lets exactly one of them rotate, once.
#[tokio::test]
async fn two_replicas_running_the_scheduler_at_once_rotate_once() {
    let Some(schema) = ecsd::store::postgres::testing::TestSchema::create() else {
        return; // PostgreSQL tests are skipped here
    };
    let dir = tempfile::tempdir().unwrap();
    let config = ecsd::config::Config {
        database: Some(schema.url.clone()),
        data_dir: dir.path().to_owned(),
        master_key: Some(ecsd::secrets::MasterKey::generate_base64()),
        ..ecsd::config::Config::default()
    };
    let a = ecsd::server::open_state(config.clone()).unwrap();
    let b = ecsd::server::open_state(config).unwrap();
    let project = ecsd::admin::create_project(&a, "p").await.unwrap();
    let (id, _) = ecs_escrow::new_identity("replicas");
    a.escrow
        .add_recipient(ecsd::store::escrow::Recipient {
            id: "r".into(),
            project_id: project.id.clone(),
            name: "r".into(),
            recipient: id.recipient(),
            created: a.clock.now(),
        })
        .await
        .unwrap();
    let mut servers = Vec::new();
    for i in 0..5 {
        let (_, pk) = ecs_seal::generate_keypair();
        let s = ecsd::admin::register_server(
            &a,
            &project.id,
            &format!("s-{i}"),
            OsType::Linux,
            Some(&pk.to_base64()),
        )
        .await
        .unwrap();
        servers.push(s.id);
    }
    a.escrow
        .add_rotation_policy(ecsd::store::escrow::RotationPolicy {
            id: "pol".into(),
            project_id: project.id.clone(),
            name: "all".into(),
            spec: r#"{"schedule":{"every_minutes":1}}"#.into(),
            created: a.clock.now(),
            last_run: None,
        })
        .await
        .unwrap();
    let now = a.clock.now();
    let (ra, rb) = tokio::join!(
        ecsd::escrow::run_rotations(&a, now),
        ecsd::escrow::run_rotations(&b, now)
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra + rb, servers.len(), "{ra} + {rb}");
    for s in &servers {
        assert_eq!(a.escrow.versions(s).await.unwrap().len(), 1);
    }
    // The next period, again both at once: once more.
    let later = now + chrono::Duration::seconds(61);
    let (ra, rb) = tokio::join!(
        ecsd::escrow::run_rotations(&b, later),
        ecsd::escrow::run_rotations(&a, later)
    );
    assert_eq!(ra.unwrap() + rb.unwrap(), servers.len());
    for s in &servers {
        assert_eq!(a.escrow.versions(s).await.unwrap().len(), 2);
    }
}

/// A batch large enough to be sealed on several threads: every server
/// still gets its own password, escrowed in request order.
#[tokio::test]
async fn a_large_batch_gets_a_distinct_password_per_server() {
    let t = TestServer::start().await;
    let identity = recipient(&t).await;
    let mut ids = Vec::new();
    for i in 0..150 {
        let os = if i % 3 == 0 {
            OsType::Windows
        } else {
            OsType::Linux
        };
        let (id, _) = t.server(&t.project, &format!("s-{i}"), os, true).await;
        ids.push((id, os));
    }
    let refs: Vec<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
    let r = t.call("PUT", &t.batch_path(), Some(&generate(&refs))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let rid = r.request_id.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for (id, os) in &ids {
        let v = t.state.escrow.versions(id).await.unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].request_id, rid);
        let pw = ecs_escrow::decrypt(&identity, &v[0].blob).unwrap();
        ecs_policy::check(pw.expose_secret(), *os, ecs_policy::Strictness::Full).unwrap();
        assert!(
            seen.insert(pw.expose_secret().to_owned()),
            "a password repeats"
        );
    }
}
