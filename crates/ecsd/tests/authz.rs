//! Authorization through the API, against a real ecsd and SQLite: the
//! matrix of every public route × caller (generated from one table, checked
//! against the OpenAPI document's operations so a new route without a row
//! fails), the issue's staging-only scenario, explicit Deny, audit of
//! denials, and the server tags API.

mod common;

use ecs_api::tags::{ServerTag, ServerTagsResponse};

fn kv(key: &str, value: &str) -> ServerTag {
    ServerTag {
        key: key.into(),
        value: value.into(),
    }
}

use std::collections::BTreeSet;

use common::{TestServer, assert_ecs, assert_gateway, ids_body, secret};
use ecs_policy::OsType;
use ecsd::authz::SystemRole;
use ecsd::store::Role;
use ecsd::store::authz::Grant;
use secrecy::ExposeSecret;

const STAGING_RESETS: &str = r#"{"Version": "1.1", "Statement": [{"Effect": "Allow",
    "Action": ["ecs:cloudServers:resetServerPwd"],
    "Condition": {"StringEquals": {"ecs:ResourceTag/env": ["staging"]}}}]}"#;

const PASSWORD: &str = "Good-Pass-2024";

/// The callers of the matrix, in column order.
const CALLERS: [&str; 5] = [
    "admin",
    "operator",
    "readonly",
    "staging-resets",
    "other-project",
];

struct Key {
    ak: String,
    sk: String,
}

/// Makes a group with `grant` in the test project, a user in it, and a key
/// acting as that user.
async fn user_with(t: &TestServer, name: &str, grant: Grant) -> Key {
    let s = &t.state.authz_store;
    let g = s.create_group("default", name, "").await.unwrap();
    let user = format!("user-{name}");
    s.add_group_member(&g.id, &user).await.unwrap();
    s.attach(&g.id, &t.project, &grant).await.unwrap();
    let (ak, sk) = ecsd::authz_admin::create_user_key(&t.state, &t.project, &user)
        .await
        .unwrap();
    Key {
        ak,
        sk: sk.expose_secret().to_owned(),
    }
}

async fn custom_policy(t: &TestServer, name: &str, doc: &str) -> Grant {
    let p = ecsd::authz_admin::create_policy(&t.state, "default", name, "", doc)
        .await
        .unwrap();
    Grant::Policy(p.id)
}

async fn tag(t: &TestServer, id: &str, key: &str, value: &str) {
    let body = serde_json::json!({"action": "create", "tags": [{"key": key, "value": value}]});
    let r = t
        .call(
            "POST",
            &format!("/v1/{}/cloudservers/{id}/tags/action", t.project),
            Some(&body.to_string()),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
}

async fn call(
    t: &TestServer,
    k: &Key,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> common::Resp {
    t.call_as(
        &k.ak,
        &k.sk,
        method,
        path,
        body.map(|b| ("application/json;charset=UTF-8", b.as_bytes().to_vec())),
        &[],
    )
    .await
}

struct Fixture {
    t: TestServer,
    keys: Vec<Key>,
    /// One enrolled staging server per caller (power actions make jobs).
    staging: Vec<String>,
    job_id: String,
    reset_id: String,
    /// IAM administration: one user per caller (changed, then deleted), a
    /// group, and one access key per caller in the caller's project.
    victims: Vec<String>,
    group: String,
    spare_keys: Vec<String>,
    /// Escrow (issue 15): a registered recipient and a rotation policy
    /// (the admin's DELETE rows remove them).
    recipient_id: String,
}

async fn fixture() -> Fixture {
    fixture_with(|_| {}).await
}

async fn fixture_with(f: impl FnOnce(&mut ecsd::config::Config)) -> Fixture {
    let t = TestServer::start_with(f).await;
    let mut staging = Vec::new();
    for i in 0..CALLERS.len() {
        let (id, _) = t
            .server(&t.project, &format!("staging-{i}"), OsType::Linux, true)
            .await;
        tag(&t, &id, "env", "staging").await;
        staging.push(id);
    }
    let custom = custom_policy(&t, "staging-resets", STAGING_RESETS).await;
    let mut keys = vec![
        user_with(&t, "admins", Grant::system(SystemRole::Admin)).await,
        user_with(&t, "operators", Grant::system(SystemRole::Operator)).await,
        user_with(&t, "readers", Grant::system(SystemRole::ReadOnly)).await,
        user_with(&t, "staging", custom).await,
    ];
    let other = ecsd::admin::create_project(&t.state, "other")
        .await
        .unwrap();
    let (ak, sk) = ecsd::admin::create_access_key(&t.state, &other.id, Role::Admin)
        .await
        .unwrap();
    keys.push(Key {
        ak,
        sk: sk.expose_secret().to_owned(),
    });
    // A job and a reset request to read, made with the project's admin key.
    let (spare, _) = t.server(&t.project, "spare", OsType::Linux, true).await;
    let r = t
        .call(
            "POST",
            &format!("/v1/{}/cloudservers/action", t.project),
            Some(
                &serde_json::json!({"reboot": {"type": "SOFT", "servers": [{"id": spare}]}})
                    .to_string(),
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let job_id = r.json::<ecs_api::JobResult>().job_id;
    let r = t
        .call(
            "PUT",
            &t.batch_path(),
            Some(&ids_body(Some(PASSWORD), None, &[&spare])),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let reset_id = r.request_id.unwrap();
    let mut victims = Vec::new();
    let mut spare_keys = Vec::new();
    for i in 0..CALLERS.len() {
        let u = ecsd::admin::create_user(
            &t.state,
            "default",
            &format!("victim-{i}"),
            &secrecy::SecretString::from(PASSWORD.to_owned()),
            None,
            None,
        )
        .await
        .unwrap();
        let project = if i == 4 { &other.id } else { &t.project };
        let (ak, _) = ecsd::authz_admin::create_user_key(&t.state, project, &u.id)
            .await
            .unwrap();
        victims.push(u.id);
        spare_keys.push(ak);
    }
    let group = t
        .state
        .authz_store
        .create_group("default", "matrix", "")
        .await
        .unwrap()
        .id;
    let (id, _) = ecs_escrow::new_identity("matrix");
    let r = t
        .call(
            "POST",
            &format!("/v1/{}/escrow/recipients", t.project),
            Some(&serde_json::json!({"name": "matrix", "recipient": id.recipient()}).to_string()),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let recipient_id = r.json::<ecs_api::EscrowRecipient>().id;
    let r = t
        .call(
            "POST",
            &format!("/v1/{}/escrow/rotation-policies", t.project),
            Some(r#"{"name": "matrix", "schedule": {"every_days": 1}, "selector": {"tags": ["env=none"]}}"#),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    Fixture {
        t,
        keys,
        staging,
        job_id,
        reset_id,
        victims,
        group,
        spare_keys,
        recipient_id,
    }
}

/// One row: the operation, how to call it as caller `i`, and the expected
/// status for each caller (in [`CALLERS`] order).
struct Row {
    method: &'static str,
    template: &'static str,
    call: fn(&Fixture, usize) -> (String, Option<String>),
    expect: [u16; 5],
}

fn p(f: &Fixture, rest: &str) -> String {
    format!("/v1/{}{rest}", f.t.project)
}

fn rows() -> Vec<Row> {
    vec![
        Row {
            method: "PUT",
            template: "/v1/{project_id}/cloudservers/os-reset-passwords",
            call: |f, i| {
                (
                    p(f, "/cloudservers/os-reset-passwords"),
                    Some(ids_body(Some(PASSWORD), Some(true), &[&f.staging[i]])),
                )
            },
            expect: [200, 200, 403, 200, 400],
        },
        Row {
            method: "GET",
            template: "/v1/{project_id}/cloudservers/os-reset-passwords/{request_id}",
            call: |f, _| {
                (
                    p(
                        f,
                        &format!("/cloudservers/os-reset-passwords/{}", f.reset_id),
                    ),
                    None,
                )
            },
            expect: [200, 200, 200, 403, 400],
        },
        Row {
            method: "GET",
            template: "/v1/{project_id}/cloudservers/os-reset-passwords/{request_id}/events",
            call: |f, _| {
                (
                    p(
                        f,
                        &format!(
                            "/cloudservers/os-reset-passwords/{}/events?seconds=0",
                            f.reset_id
                        ),
                    ),
                    None,
                )
            },
            expect: [200, 200, 200, 403, 400],
        },
        Row {
            method: "PUT",
            template: "/v1/{project_id}/cloudservers/{server_id}/os-reset-password",
            call: |f, i| {
                (
                    p(
                        f,
                        &format!("/cloudservers/{}/os-reset-password", f.staging[i]),
                    ),
                    Some(
                        serde_json::json!({"reset-password": {"new_password": PASSWORD}})
                            .to_string(),
                    ),
                )
            },
            expect: [204, 204, 403, 204, 400],
        },
        Row {
            method: "GET",
            template: "/v1/{project_id}/cloudservers/{server_id}/os-resetpwd-flag",
            call: |f, i| {
                (
                    p(
                        f,
                        &format!("/cloudservers/{}/os-resetpwd-flag", f.staging[i]),
                    ),
                    None,
                )
            },
            expect: [200, 200, 200, 403, 400],
        },
        Row {
            method: "GET",
            template: "/v1/{project_id}/cloudservers/detail",
            call: |f, _| (p(f, "/cloudservers/detail"), None),
            expect: [200, 200, 200, 403, 400],
        },
        Row {
            method: "POST",
            template: "/v1/{project_id}/cloudservers/action",
            call: |f, i| {
                (
                p(f, "/cloudservers/action"),
                Some(serde_json::json!({"reboot": {"type": "SOFT", "servers": [{"id": f.staging[i]}]}}).to_string()),
            )
            },
            expect: [200, 200, 403, 403, 400],
        },
        Row {
            method: "GET",
            template: "/v1/{project_id}/cloudservers/{server_id}",
            call: |f, i| (p(f, &format!("/cloudservers/{}", f.staging[i])), None),
            expect: [200, 200, 200, 403, 400],
        },
        Row {
            method: "POST",
            template: "/v1/{project_id}/cloudservers/{server_id}/tags/action",
            call: |f, i| {
                (
                    p(f, &format!("/cloudservers/{}/tags/action", f.staging[i])),
                    Some(
                        r#"{"action": "create", "tags": [{"key": "owner", "value": "x"}]}"#
                            .to_owned(),
                    ),
                )
            },
            expect: [204, 403, 403, 403, 400],
        },
        Row {
            method: "GET",
            template: "/v1/{project_id}/cloudservers/{server_id}/tags",
            call: |f, i| (p(f, &format!("/cloudservers/{}/tags", f.staging[i])), None),
            expect: [200, 200, 200, 403, 400],
        },
        Row {
            method: "GET",
            template: "/v1/{project_id}/jobs/{job_id}",
            call: |f, _| (p(f, &format!("/jobs/{}", f.job_id)), None),
            expect: [200, 200, 200, 403, 400],
        },
        Row {
            method: "GET",
            template: "/v1/{project_id}/jobs/{job_id}/events",
            call: |f, _| (p(f, &format!("/jobs/{}/events?seconds=0", f.job_id)), None),
            expect: [200, 200, 200, 403, 400],
        },
        Row {
            method: "POST",
            template: "/v1/{project_id}/enroll-tokens",
            call: |f, _| (p(f, "/enroll-tokens"), None),
            expect: [201, 403, 403, 403, 400],
        },
        // Escrow (issue 15): recipients and policies are managed by admins;
        // readonly may list them and read the drift report; escrowed
        // passwords are for admins only (readonly's get* is denied them).
        Row {
            method: "POST",
            template: "/v1/{project_id}/escrow/recipients",
            call: |f, _| {
                let (id, _) = ecs_escrow::new_identity("row");
                (
                    p(f, "/escrow/recipients"),
                    Some(
                        serde_json::json!({"name": "row", "recipient": id.recipient()}).to_string(),
                    ),
                )
            },
            expect: [201, 403, 403, 403, 400],
        },
        Row {
            method: "GET",
            template: "/v1/{project_id}/escrow/recipients",
            call: |f, _| (p(f, "/escrow/recipients"), None),
            expect: [200, 403, 200, 403, 400],
        },
        Row {
            method: "POST",
            template: "/v1/{project_id}/escrow/rotation-policies",
            call: |f, i| {
                (
                    p(f, "/escrow/rotation-policies"),
                    Some(
                        serde_json::json!({"name": format!("row-{i}"), "schedule": {"every_days": 7},
                            "selector": {"tags": ["env=none"]}})
                        .to_string(),
                    ),
                )
            },
            expect: [201, 403, 403, 403, 400],
        },
        Row {
            method: "GET",
            template: "/v1/{project_id}/escrow/rotation-policies",
            call: |f, _| (p(f, "/escrow/rotation-policies"), None),
            expect: [200, 403, 200, 403, 400],
        },
        Row {
            method: "DELETE",
            template: "/v1/{project_id}/escrow/rotation-policies/{policy}",
            call: |f, _| (p(f, "/escrow/rotation-policies/matrix"), None),
            expect: [204, 403, 403, 403, 400],
        },
        Row {
            method: "DELETE",
            template: "/v1/{project_id}/escrow/recipients/{recipient_id}",
            call: |f, _| {
                (
                    p(f, &format!("/escrow/recipients/{}", f.recipient_id)),
                    None,
                )
            },
            expect: [204, 403, 403, 403, 400],
        },
        Row {
            method: "GET",
            template: "/v1/{project_id}/cloudservers/{server_id}/escrowed-passwords",
            call: |f, i| {
                (
                    p(
                        f,
                        &format!("/cloudservers/{}/escrowed-passwords", f.staging[i]),
                    ),
                    None,
                )
            },
            expect: [200, 403, 403, 403, 400],
        },
        Row {
            method: "GET",
            template: "/v1/{project_id}/escrow/password-status",
            call: |f, _| (p(f, "/escrow/password-status"), None),
            expect: [200, 403, 200, 403, 400],
        },
        // Every system role may read the audit trail; a custom policy needs cts:traces:list.
        Row {
            method: "GET",
            template: "/v3/{project_id}/traces",
            call: |f, _| (format!("/v3/{}/traces", f.t.project), None),
            expect: [200, 200, 200, 403, 400],
        },
        // IAM administration: the caller's domain; the other project's key
        // sends this project's X-Project-Id, so it is refused 400 Ecs.0023.
        Row {
            method: "POST",
            template: "/v3.0/OS-USER/users",
            call: |_, i| {
                (
                    "/v3.0/OS-USER/users".into(),
                    Some(serde_json::json!({"user": {"name": format!("made-{i}"), "password": PASSWORD}}).to_string()),
                )
            },
            expect: [201, 403, 403, 403, 400],
        },
        Row {
            method: "GET",
            template: "/v3/users",
            call: |_, _| ("/v3/users".into(), None),
            expect: [200, 403, 403, 403, 400],
        },
        Row {
            method: "PUT",
            template: "/v3.0/OS-USER/users/{user_id}",
            call: |f, i| {
                (
                    format!("/v3.0/OS-USER/users/{}", f.victims[i]),
                    Some(r#"{"user": {"enabled": false}}"#.into()),
                )
            },
            expect: [200, 403, 403, 403, 400],
        },
        Row {
            method: "POST",
            template: "/v3/groups",
            call: |_, i| {
                (
                    "/v3/groups".into(),
                    Some(serde_json::json!({"group": {"name": format!("grp-{i}")}}).to_string()),
                )
            },
            expect: [201, 403, 403, 403, 400],
        },
        Row {
            method: "GET",
            template: "/v3/groups",
            call: |_, _| ("/v3/groups".into(), None),
            expect: [200, 403, 403, 403, 400],
        },
        Row {
            method: "PUT",
            template: "/v3/groups/{group_id}/users/{user_id}",
            call: |f, i| {
                (
                    format!("/v3/groups/{}/users/{}", f.group, f.victims[i]),
                    None,
                )
            },
            expect: [204, 403, 403, 403, 400],
        },
        Row {
            method: "DELETE",
            template: "/v3/groups/{group_id}/users/{user_id}",
            call: |f, i| {
                (
                    format!("/v3/groups/{}/users/{}", f.group, f.victims[i]),
                    None,
                )
            },
            expect: [204, 403, 403, 403, 400],
        },
        Row {
            method: "POST",
            template: "/v3.0/OS-ROLE/roles",
            call: |_, i| {
                (
                    "/v3.0/OS-ROLE/roles".into(),
                    Some(serde_json::json!({"role": {"display_name": format!("pol-{i}"), "type": "AX",
                        "policy": serde_json::from_str::<serde_json::Value>(STAGING_RESETS).unwrap()}}).to_string()),
                )
            },
            expect: [201, 403, 403, 403, 400],
        },
        Row {
            method: "GET",
            template: "/v3.0/OS-ROLE/roles",
            call: |_, _| ("/v3.0/OS-ROLE/roles".into(), None),
            expect: [200, 403, 403, 403, 400],
        },
        Row {
            method: "PUT",
            template: "/v3/projects/{project_id}/groups/{group_id}/roles/{role_id}",
            call: |f, _| {
                (
                    format!(
                        "/v3/projects/{}/groups/{}/roles/readonly",
                        f.t.project, f.group
                    ),
                    None,
                )
            },
            expect: [204, 403, 403, 403, 400],
        },
        Row {
            method: "DELETE",
            template: "/v3/projects/{project_id}/groups/{group_id}/roles/{role_id}",
            call: |f, _| {
                (
                    format!(
                        "/v3/projects/{}/groups/{}/roles/readonly",
                        f.t.project, f.group
                    ),
                    None,
                )
            },
            expect: [204, 403, 403, 403, 400],
        },
        Row {
            method: "POST",
            template: "/v3.0/OS-CREDENTIAL/credentials",
            call: |f, i| {
                (
                    "/v3.0/OS-CREDENTIAL/credentials".into(),
                    Some(serde_json::json!({"credential": {"user_id": f.victims[i]}}).to_string()),
                )
            },
            expect: [201, 403, 403, 403, 400],
        },
        Row {
            method: "GET",
            template: "/v3.0/OS-CREDENTIAL/credentials",
            call: |_, _| ("/v3.0/OS-CREDENTIAL/credentials".into(), None),
            expect: [200, 403, 403, 403, 400],
        },
        Row {
            method: "PUT",
            template: "/v3.0/OS-CREDENTIAL/credentials/{access_key}",
            call: |f, i| {
                (
                    format!("/v3.0/OS-CREDENTIAL/credentials/{}", f.spare_keys[i]),
                    Some(r#"{"credential": {"status": "inactive"}}"#.into()),
                )
            },
            expect: [200, 403, 403, 403, 400],
        },
        Row {
            method: "DELETE",
            template: "/v3.0/OS-CREDENTIAL/credentials/{access_key}",
            call: |f, i| {
                (
                    format!("/v3.0/OS-CREDENTIAL/credentials/{}", f.spare_keys[i]),
                    None,
                )
            },
            expect: [204, 403, 403, 403, 400],
        },
        Row {
            method: "DELETE",
            template: "/v3/users/{user_id}",
            call: |f, i| (format!("/v3/users/{}", f.victims[i]), None),
            expect: [204, 403, 403, 403, 400],
        },
    ]
}

/// The signed operations of the OpenAPI document (generated from the
/// handlers): (METHOD, path template); the IAM token operations are not signed.
fn documented_operations() -> BTreeSet<(String, String)> {
    let doc: serde_json::Value =
        serde_json::from_str(&ecsd::api::openapi::document_json()).unwrap();
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/v1/") && !path.starts_with("/v3") {
            continue;
        }
        for (method, op) in item.as_object().unwrap() {
            let _ = op;
            // IAM tokens: each handler checks its own token, no signature.
            let unsigned = path.starts_with("/v3/auth/") || path.ends_with("/securitytokens");
            if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) && !unsigned {
                out.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    out
}

#[test]
fn the_matrix_has_one_row_per_public_operation() {
    let table: BTreeSet<(String, String)> = rows()
        .iter()
        .map(|r| (r.method.to_owned(), r.template.to_owned()))
        .collect();
    assert_eq!(table.len(), rows().len(), "a row is repeated");
    let documented = documented_operations();
    let missing: Vec<_> = documented.difference(&table).collect();
    let stale: Vec<_> = table.difference(&documented).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "public operations without a row: {missing:?}; rows without an operation: {stale:?}"
    );
}

#[tokio::test]
async fn every_public_route_answers_each_caller_as_the_matrix_says() {
    let f = fixture().await;
    let mut wrong = Vec::new();
    for row in rows() {
        for (i, caller) in CALLERS.iter().enumerate() {
            let (path, body) = (row.call)(&f, i);
            let r = call(&f.t, &f.keys[i], row.method, &path, body.as_deref()).await;
            if r.status != row.expect[i] {
                wrong.push(format!(
                    "{} {} as {caller}: {} (expected {}): {}",
                    row.method, row.template, r.status, row.expect[i], r.text
                ));
            }
            match r.status {
                403 => assert!(
                    r.json::<ecs_api::ErrorBody>().code() == "APIGW.0302",
                    "{}",
                    r.text
                ),
                400 if i == 4 => {
                    assert_ecs(&r, 400, "Ecs.0023");
                }
                _ => {}
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The issue's scenario: a user whose group's policy allows resets only on
/// servers tagged env=staging.
#[tokio::test]
async fn a_staging_only_user_resets_staging_and_is_refused_production_by_name() {
    let t = TestServer::start().await;
    let (staging, _) = t
        .server(&t.project, "web-staging", OsType::Linux, true)
        .await;
    let (prod, _) = t.server(&t.project, "web-prod", OsType::Linux, true).await;
    tag(&t, &staging, "env", "staging").await;
    tag(&t, &prod, "env", "production").await;
    let grant = custom_policy(&t, "staging-resets", STAGING_RESETS).await;
    let alice = user_with(&t, "staging-operators", grant).await;
    let single = |id: &str| format!("/v1/{}/cloudservers/{id}/os-reset-password", t.project);
    let body = serde_json::json!({"reset-password": {"new_password": PASSWORD}}).to_string();

    let r = call(&t, &alice, "PUT", &single(&staging), Some(&body)).await;
    assert_eq!(r.status, 204, "{}", r.text);

    let r = call(&t, &alice, "PUT", &single(&prod), Some(&body)).await;
    assert_gateway(&r, 403, "APIGW.0302");
    assert!(r.text.contains(&prod), "{}", r.text);
    assert!(
        r.text.contains("ecs:cloudServers:resetServerPwd"),
        "{}",
        r.text
    );

    // A batch with one production server is refused whole, naming it.
    let r = call(
        &t,
        &alice,
        "PUT",
        &t.batch_path(),
        Some(&ids_body(Some(PASSWORD), None, &[&staging, &prod])),
    )
    .await;
    let e = assert_ecs(&r, 403, "APIGW.0302");
    let internal = e.internal_error.clone().unwrap_or_default();
    assert_eq!(internal.len(), 1, "{}", r.text);
    assert_eq!(internal[0].id, prod);
    assert_eq!(internal[0].error_code, "APIGW.0302");
    assert!(e.error.message.contains(&prod));
    // Nothing was done: the staging server's last reset is still the single one.
    let c = rusqlite::Connection::open(t.db_path()).unwrap();
    let resets: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM reset_targets WHERE server_id = ?1",
            [&staging],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(resets, 1);
    // The refusals are audited.
    let denied: Vec<(String, String)> = c
        .prepare("SELECT action, servers FROM audit WHERE outcome LIKE '%APIGW.0302%' ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(denied.len(), 2, "{denied:?}");
    assert!(
        denied.iter().all(|(_, servers)| servers.contains(&prod)),
        "{denied:?}"
    );

    // The policy says nothing about reading: no listing, no showing.
    let r = call(
        &t,
        &alice,
        "GET",
        &format!("/v1/{}/cloudservers/detail", t.project),
        None,
    )
    .await;
    assert_gateway(&r, 403, "APIGW.0302");
}

#[tokio::test]
async fn an_explicit_deny_wins_over_the_admin_role() {
    let t = TestServer::start().await;
    let (staging, _) = t.server(&t.project, "s", OsType::Linux, true).await;
    let (prod, _) = t.server(&t.project, "p", OsType::Linux, true).await;
    tag(&t, &staging, "env", "staging").await;
    tag(&t, &prod, "env", "production").await;
    let deny = custom_policy(
        &t,
        "no-prod-resets",
        r#"{"Version": "1.1", "Statement": [{"Effect": "Deny", "Action": ["ecs:cloudServers:reset*"],
            "Condition": {"StringLike": {"ecs:ResourceTag/env": ["prod*"]}}}]}"#,
    )
    .await;
    let s = &t.state.authz_store;
    let g = s.create_group("default", "admins", "").await.unwrap();
    s.add_group_member(&g.id, "bob").await.unwrap();
    s.attach(&g.id, &t.project, &Grant::system(SystemRole::Admin))
        .await
        .unwrap();
    s.attach(&g.id, &t.project, &deny).await.unwrap();
    let (ak, sk) = ecsd::authz_admin::create_user_key(&t.state, &t.project, "bob")
        .await
        .unwrap();
    let bob = Key {
        ak,
        sk: sk.expose_secret().to_owned(),
    };
    let r = call(
        &t,
        &bob,
        "PUT",
        &t.batch_path(),
        Some(&ids_body(Some(PASSWORD), None, &[&staging])),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = call(
        &t,
        &bob,
        "PUT",
        &t.batch_path(),
        Some(&ids_body(Some(PASSWORD), None, &[&prod, &staging])),
    )
    .await;
    assert_ecs(&r, 403, "APIGW.0302");
    // Everything else the admin role allows stays allowed on production.
    let r = call(
        &t,
        &bob,
        "GET",
        &format!("/v1/{}/cloudservers/{prod}", t.project),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Detaching the Deny takes effect on the next call.
    s.detach(&g.id, &t.project, &deny).await.unwrap();
    let r = call(
        &t,
        &bob,
        "PUT",
        &t.batch_path(),
        Some(&ids_body(Some(PASSWORD), None, &[&prod])),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn a_user_without_groups_may_do_nothing_and_a_project_key_keeps_its_role() {
    let t = TestServer::start().await;
    let (ak, sk) = ecsd::authz_admin::create_user_key(&t.state, &t.project, "nobody")
        .await
        .unwrap();
    let nobody = Key {
        ak,
        sk: sk.expose_secret().to_owned(),
    };
    let r = call(
        &t,
        &nobody,
        "GET",
        &format!("/v1/{}/cloudservers/detail", t.project),
        None,
    )
    .await;
    assert_gateway(&r, 403, "APIGW.0302");
    // The project's admin key (no user) may do everything, a read-only key reads.
    let r = t
        .call("POST", &format!("/v1/{}/enroll-tokens", t.project), None)
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let (rak, rsk) = ecsd::admin::create_access_key(&t.state, &t.project, Role::ReadOnly)
        .await
        .unwrap();
    let ro = Key {
        ak: rak,
        sk: rsk.expose_secret().to_owned(),
    };
    let r = call(
        &t,
        &ro,
        "GET",
        &format!("/v1/{}/cloudservers/detail", t.project),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = call(
        &t,
        &ro,
        "POST",
        &format!("/v1/{}/enroll-tokens", t.project),
        None,
    )
    .await;
    assert_gateway(&r, 403, "APIGW.0302");
}

#[tokio::test]
async fn server_tags_are_written_read_filtered_and_validated() {
    let t = TestServer::start().await;
    let (a, _) = t.server(&t.project, "a", OsType::Linux, true).await;
    let (b, _) = t.server(&t.project, "b", OsType::Linux, true).await;
    let action = format!("/v1/{}/cloudservers/{a}/tags/action", t.project);
    let read = format!("/v1/{}/cloudservers/{a}/tags", t.project);
    let body = r#"{"action": "create", "tags": [{"key": "env", "value": "staging"}, {"key": "team", "value": "db"}]}"#;
    assert_eq!(t.call("POST", &action, Some(body)).await.status, 204);
    // Again: idempotent; a new value for a key replaces the old one.
    assert_eq!(t.call("POST", &action, Some(body)).await.status, 204);
    let r = t
        .call(
            "POST",
            &action,
            Some(r#"{"action": "create", "tags": [{"key": "team", "value": "web"}]}"#),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = t.call("GET", &read, None).await;
    assert_eq!(
        r.json::<ServerTagsResponse>().tags,
        vec![kv("env", "staging"), kv("team", "web")]
    );
    // Server details and the list filters agree with what was written.
    let r = t
        .call("GET", &format!("/v1/{}/cloudservers/{a}", t.project), None)
        .await;
    assert_eq!(
        r.json::<ecs_api::ShowServerResponse>().server.tags,
        vec!["env=staging", "team=web"]
    );
    let r = t
        .call(
            "GET",
            &format!("/v1/{}/cloudservers/detail?tags=env%3Dstaging", t.project),
            None,
        )
        .await;
    let list: ecs_api::ListServersResponse = r.json();
    assert_eq!(list.count, 1, "{}", r.text);
    assert_eq!(list.servers[0].detail().unwrap().id, a);
    let r = t
        .call(
            "GET",
            &format!(
                "/v1/{}/cloudservers/detail?not-tags=env%3Dstaging",
                t.project
            ),
            None,
        )
        .await;
    let list: ecs_api::ListServersResponse = r.json();
    assert_eq!(list.count, 1, "{}", r.text);
    assert_eq!(list.servers[0].detail().unwrap().id, b);
    // Delete by key.
    let r = t
        .call(
            "POST",
            &action,
            Some(r#"{"action": "delete", "tags": [{"key": "team"}]}"#),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = t.call("GET", &read, None).await;
    assert_eq!(
        r.json::<ServerTagsResponse>().tags,
        vec![kv("env", "staging")]
    );
    // Validation names the field.
    for (bad, field) in [
        (
            r#"{"action": "create", "tags": [{"key": "bad key"}]}"#,
            "tags[0].key",
        ),
        (
            &*format!(
                r#"{{"action": "create", "tags": [{{"key": "k", "value": "{}"}}]}}"#,
                "v".repeat(44)
            ),
            "tags[0].value",
        ),
        (r#"{"action": "create", "tags": []}"#, "tags"),
        (r#"{"action": "update", "tags": [{"key": "k"}]}"#, "action"),
        (
            r#"{"action": "create", "tags": [{"key": "k", "colour": "red"}]}"#,
            "tags[0]",
        ),
    ] {
        let r = t.call("POST", &action, Some(bad)).await;
        let e = assert_ecs(&r, 400, "Ecs.0005");
        assert!(e.error.message.contains(field), "{field}: {}", r.text);
    }
    // At most ten tags per server.
    let many: Vec<_> = (0..10)
        .map(|i| serde_json::json!({"key": format!("k{i}")}))
        .collect();
    let r = t
        .call(
            "POST",
            &action,
            Some(&serde_json::json!({"action": "create", "tags": many}).to_string()),
        )
        .await;
    assert_ecs(&r, 400, "Ecs.0005");
    // Unknown server, another project's server.
    let r = t
        .call(
            "GET",
            &format!("/v1/{}/cloudservers/nope/tags", t.project),
            None,
        )
        .await;
    assert_ecs(&r, 404, "Ecs.0114");
    let other = ecsd::admin::create_project(&t.state, "other")
        .await
        .unwrap();
    let (theirs, _) = t.server(&other.id, "theirs", OsType::Linux, true).await;
    let r = t
        .call(
            "POST",
            &format!("/v1/{}/cloudservers/{theirs}/tags/action", t.project),
            Some(body),
        )
        .await;
    assert_ecs(&r, 404, "Ecs.0114");
}

#[tokio::test]
async fn a_tag_condition_decides_power_actions_per_server_and_nothing_is_done() {
    let t = TestServer::start().await;
    let (staging, _) = t.server(&t.project, "s", OsType::Linux, true).await;
    let (prod, _) = t.server(&t.project, "p", OsType::Linux, true).await;
    tag(&t, &staging, "env", "staging").await;
    let grant = custom_policy(
        &t,
        "reboot-staging",
        r#"{"Version": "1.1", "Statement": [{"Effect": "Allow", "Action": ["ecs:cloudServers:*"],
            "Condition": {"StringEquals": {"ecs:ResourceTag/env": ["staging"]}}}]}"#,
    )
    .await;
    let k = user_with(&t, "rebooters", grant).await;
    let path = format!("/v1/{}/cloudservers/action", t.project);
    let body = |ids: &[&str]| {
        serde_json::json!({"reboot": {"type": "SOFT", "servers": ids.iter().map(|i| serde_json::json!({"id": i})).collect::<Vec<_>>()}}).to_string()
    };
    let r = call(&t, &k, "POST", &path, Some(&body(&[&staging, &prod]))).await;
    let e = assert_ecs(&r, 403, "APIGW.0302");
    assert_eq!(e.internal_error.unwrap()[0].id, prod);
    let c = rusqlite::Connection::open(t.db_path()).unwrap();
    let jobs: i64 = c
        .query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(jobs, 0);
    let r = call(&t, &k, "POST", &path, Some(&body(&[&staging]))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // A caller who may reboot no server at all is refused for every id,
    // unknown ones included (nothing about them is revealed).
    let reader = user_with(&t, "readers", Grant::system(SystemRole::ReadOnly)).await;
    let r = call(
        &t,
        &reader,
        "POST",
        &path,
        Some(&body(&[&prod, "no-such-server"])),
    )
    .await;
    let internal = assert_ecs(&r, 403, "APIGW.0302")
        .internal_error
        .unwrap_or_default();
    let ids: Vec<&str> = internal.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, [prod.as_str(), "no-such-server"]);
}

/// `ecsd admin ...` on the data directory of a running ecsd.
fn admin(t: &TestServer, args: &[&str]) -> (bool, serde_json::Value, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ecsd"))
        .arg("--data-dir")
        .arg(&t.state.config.data_dir)
        .arg("admin")
        .args(args)
        .env(
            "ECSD_MASTER_KEY",
            t.state.config.master_key.as_ref().unwrap().expose_secret(),
        )
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    (
        o.status.success(),
        serde_json::from_str(&out).unwrap_or(serde_json::Value::Null),
        format!("{out}{}", String::from_utf8_lossy(&o.stderr)),
    )
}

#[tokio::test]
async fn the_admin_cli_makes_groups_policies_and_user_keys_that_the_api_enforces() {
    let t = TestServer::start().await;
    let (staging, _) = t.server(&t.project, "s", OsType::Linux, true).await;
    let (prod, _) = t.server(&t.project, "p", OsType::Linux, true).await;
    tag(&t, &staging, "env", "staging").await;
    tag(&t, &prod, "env", "production").await;
    let file = t.dir.path().join("policy.json");
    // A malformed document is refused, naming the field.
    std::fs::write(
        &file,
        r#"{"Version": "1.1", "Statement": [{"Effect": "Allow", "Action": ["ecs:cloudServers:get"], "Resource": ["*"]}]}"#,
    )
    .unwrap();
    let (ok, _, text) = admin(
        &t,
        &[
            "policy",
            "create",
            "--name",
            "bad",
            "--file",
            file.to_str().unwrap(),
        ],
    );
    assert!(!ok);
    assert!(text.contains("Statement[0].Resource"), "{text}");
    std::fs::write(&file, STAGING_RESETS).unwrap();
    let (ok, v, text) = admin(
        &t,
        &[
            "policy",
            "create",
            "--name",
            "staging-resets",
            "--file",
            file.to_str().unwrap(),
        ],
    );
    assert!(ok, "{text}");
    assert_eq!(v["policy"]["Statement"][0]["Effect"], "Allow");
    let (ok, _, text) = admin(&t, &["group", "create", "--name", "staging-operators"]);
    assert!(ok, "{text}");
    let (ok, _, text) = admin(
        &t,
        &[
            "group",
            "add-user",
            "--group",
            "staging-operators",
            "--user",
            "alice",
        ],
    );
    assert!(ok, "{text}");
    let (ok, _, text) = admin(
        &t,
        &[
            "group",
            "attach",
            "--group",
            "staging-operators",
            "--project",
            &t.project,
            "--policy",
            "staging-resets",
        ],
    );
    assert!(ok, "{text}");
    let (ok, _, text) = admin(
        &t,
        &[
            "group",
            "attach",
            "--group",
            "staging-operators",
            "--project",
            &t.project,
            "--role",
            "root",
        ],
    );
    assert!(
        !ok && text.contains("admin, operator or readonly"),
        "{text}"
    );
    let (ok, v, text) = admin(&t, &["group", "show", "--group", "staging-operators"]);
    assert!(ok, "{text}");
    assert_eq!(v["users"], serde_json::json!(["alice"]));
    assert_eq!(v["attachments"].as_array().unwrap().len(), 1);
    let (ok, v, text) = admin(
        &t,
        &[
            "user-key-create",
            "--project",
            &t.project,
            "--user",
            "alice",
        ],
    );
    assert!(ok, "{text}");
    let alice = Key {
        ak: v["ak"].as_str().unwrap().to_owned(),
        sk: v["sk"].as_str().unwrap().to_owned(),
    };
    let body = serde_json::json!({"reset-password": {"new_password": PASSWORD}}).to_string();
    let single = |id: &str| format!("/v1/{}/cloudservers/{id}/os-reset-password", t.project);
    assert_eq!(
        call(&t, &alice, "PUT", &single(&staging), Some(&body))
            .await
            .status,
        204
    );
    assert_eq!(
        call(&t, &alice, "PUT", &single(&prod), Some(&body))
            .await
            .status,
        403
    );
    // Detaching by the CLI takes effect on the running server's next call.
    let (ok, v, text) = admin(
        &t,
        &[
            "group",
            "detach",
            "--group",
            "staging-operators",
            "--project",
            &t.project,
            "--policy",
            "staging-resets",
        ],
    );
    assert!(ok && v["removed"] == true, "{text}");
    assert_eq!(
        call(&t, &alice, "PUT", &single(&staging), Some(&body))
            .await
            .status,
        403
    );
}

/// The matrix's last two callers of issue #10: a revoked (disabled) access
/// key and an expired token are refused with 401 `APIGW.0301` on every
/// public operation — the rows come from the same table, so a new route is
/// covered as soon as it has its row.
#[tokio::test]
async fn a_revoked_key_and_an_expired_token_are_refused_on_every_public_route() {
    // Two failed authentications per route from one address: above the
    // default throttle (30 a minute) since the escrow routes came.
    let f = fixture_with(|c| c.auth_failures_per_minute = 1000).await;
    // A revoked key: an admin's, disabled.
    let (ak, sk) = ecsd::admin::create_access_key(&f.t.state, &f.t.project, Role::Admin)
        .await
        .unwrap();
    ecsd::lifecycle::change_access_key(&f.t.state, &ak, ecsd::lifecycle::KeyChange::Disable)
        .await
        .unwrap();
    let revoked = Key {
        ak,
        sk: sk.expose_secret().to_owned(),
    };
    // An expired token: an admin user's token whose expiry has passed.
    let pw = secret("Admin-Token-77!");
    ecsd::admin::create_user(
        &f.t.state,
        "default",
        "expiring-admin",
        &pw,
        Some(ecsd::store::identity::UserRole::Admin),
        Some(&f.t.project),
    )
    .await
    .unwrap();
    let token = ecs_client::login(
        &f.t.base,
        ecs_client::Trust::System,
        "default",
        "expiring-admin",
        &pw,
        ecs_client::ProjectScope::Id(f.t.project.clone()),
    )
    .await
    .unwrap()
    .token;
    let c = rusqlite::Connection::open(f.t.db_path()).unwrap();
    let expired = c
        .execute(
            "UPDATE tokens SET expires_at = '2000-01-01T00:00:00.000Z'",
            [],
        )
        .unwrap();
    assert_eq!(expired, 1);
    let mut wrong = Vec::new();
    for row in rows() {
        let (path, body) = (row.call)(&f, 0);
        let by_key = call(&f.t, &revoked, row.method, &path, body.as_deref()).await;
        let mut req = common::http()
            .request(row.method.parse().unwrap(), f.t.url(&path))
            .header("X-Auth-Token", token.expose_secret());
        if let Some(b) = &body {
            req = req
                .header("content-type", "application/json")
                .body(b.clone());
        }
        let by_token = f.t.raw(req).await;
        for (who, r, tail) in [
            ("revoked key", &by_key, "ak not exist"),
            ("expired token", &by_token, "token expires"),
        ] {
            if r.status != 401 {
                wrong.push(format!(
                    "{} {} as {who}: {}",
                    row.method, row.template, r.status
                ));
                continue;
            }
            let e = assert_gateway(r, 401, "APIGW.0301");
            if !e.error_msg.contains(tail) {
                wrong.push(format!(
                    "{} {} as {who}: {}",
                    row.method, row.template, e.error_msg
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
