//! Identity end to end against a real ecsd and real SQLite: IAM users,
//! `POST/GET/DELETE /v3/auth/tokens`, `X-Auth-Token` on the public API,
//! temporary AK/SK with `X-Security-Token`, and the user lifecycle.

mod common;

use std::time::Duration;

use common::*;
use ecs_api::iam::{SecurityTokenResponse, TokenResponse};
use ecs_client::{Client, Config, ProjectScope, Trust};
use ecsd::store::identity::UserRole;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

const PW: &str = "Correct-Horse-9";

async fn user(t: &TestServer, name: &str, role: UserRole) {
    ecsd::admin::create_user(
        &t.state,
        "default",
        name,
        &secret(PW),
        Some(role),
        Some(&t.project),
    )
    .await
    .unwrap();
}

fn login_body(domain: &str, name: &str, password: &str, project: serde_json::Value) -> String {
    json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "domain": {"name": domain}, "name": name, "password": password}}},
        "scope": {"project": project}
    }})
    .to_string()
}

/// `POST /v3/auth/tokens` over plain reqwest (the response is checked
/// against the OpenAPI document); returns the response and the token.
async fn login_raw(t: &TestServer, body: String) -> (Resp, Option<String>) {
    let resp = reqwest::Client::new()
        .post(t.url("/v3/auth/tokens"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let token = resp
        .headers()
        .get("x-subject-token")
        .map(|v| v.to_str().unwrap().to_owned());
    let status = resp.status().as_u16();
    let request_id = resp
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = resp.text().await.unwrap();
    contract::check("POST", "/v3/auth/tokens", status, &text);
    (
        Resp {
            status,
            request_id,
            text,
        },
        token,
    )
}

async fn login(t: &TestServer, name: &str) -> SecretString {
    ecs_client::login(
        &t.base,
        Trust::System,
        "default",
        name,
        &secret(PW),
        ProjectScope::Id(t.project.clone()),
    )
    .await
    .unwrap()
    .token
}

fn token_client(t: &TestServer, token: &SecretString) -> Client {
    Client::new(Config::with_token(&t.base, &t.project, token.clone())).unwrap()
}

/// A call with these headers and no signature, checked against the document.
async fn with_headers(t: &TestServer, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = reqwest::Client::new().request(method.parse().unwrap(), t.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    t.raw(req).await
}

fn list_path(t: &TestServer) -> String {
    format!("/v1/{}/cloudservers/detail", t.project)
}

#[tokio::test]
async fn a_password_login_answers_as_huawei_iam_and_the_token_lists_servers() {
    let t = TestServer::start().await;
    user(&t, "alice", UserRole::Operator).await;
    t.server(&t.project, "web-1", ecs_policy::OsType::Linux, true)
        .await;

    let (r, token) = login_raw(
        &t,
        login_body("default", "alice", PW, json!({"id": t.project})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let token = token.expect("X-Subject-Token");
    assert!(token.len() >= 64, "{token}");
    let tok = r.json::<TokenResponse>().token;
    assert_eq!(tok.methods, vec!["password"]);
    assert_eq!(tok.user.name, "alice");
    assert_eq!(tok.user.domain.name, "default");
    assert_eq!(tok.project.id, t.project);
    assert_eq!(tok.project.name, "test");
    assert_eq!(tok.project.domain, tok.user.domain);
    assert_eq!(tok.roles[0].name, "operator");
    assert!(tok.catalog.is_empty());
    let issued = chrono::DateTime::parse_from_rfc3339(&tok.issued_at).unwrap();
    let expires = chrono::DateTime::parse_from_rfc3339(&tok.expires_at).unwrap();
    assert_eq!((expires - issued).num_seconds(), 24 * 3600);
    // By project name within the domain too.
    let (r, _) = login_raw(
        &t,
        login_body("default", "alice", PW, json!({"name": "test"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);

    // The token replaces the signature on the public API.
    let r = with_headers(&t, "GET", &list_path(&t), &[("X-Auth-Token", &token)]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json::<ecs_api::ListServersResponse>().count, 1);
    // And through the client.
    let c = token_client(&t, &SecretString::from(token.clone()));
    assert_eq!(c.all_servers().await.unwrap().len(), 1);
}

#[tokio::test]
async fn wrong_password_unknown_user_and_unknown_domain_get_the_same_401() {
    let t = TestServer::start().await;
    user(&t, "alice", UserRole::Admin).await;
    let p = json!({"id": t.project});
    let mut messages = Vec::new();
    for body in [
        login_body("default", "alice", "Wrong-Horse-9", p.clone()),
        login_body("default", "mallory", PW, p.clone()),
        login_body("nowhere", "alice", PW, p.clone()),
    ] {
        let (r, token) = login_raw(&t, body).await;
        assert_gateway(&r, 401, "APIGW.0301");
        assert!(token.is_none());
        messages.push(r.json::<ecs_api::GatewayErrorBody>().error_msg);
    }
    assert!(messages.iter().all(|m| m == &messages[0]), "{messages:?}");
    assert!(
        messages[0].contains("username or password"),
        "{}",
        messages[0]
    );
    assert!(!messages[0].contains("Wrong-Horse"));
    // No project scope, or not the password method: 400.
    let r = login_raw(
        &t,
        json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "domain": {"name": "default"}, "name": "alice", "password": PW}}}}})
        .to_string(),
    )
    .await
    .0;
    assert_ecs(&r, 400, "Ecs.0005");
    let r = login_raw(&t, "{\"auth\": 5}".into()).await.0;
    assert_ecs(&r, 400, "Ecs.0005");
    assert!(!r.text.contains(PW));
}

#[tokio::test]
async fn tokens_validate_and_revoke_and_a_revoked_token_is_refused() {
    let t = TestServer::start().await;
    user(&t, "alice", UserRole::Admin).await;
    user(&t, "bob", UserRole::ReadOnly).await;
    let a = login(&t, "alice").await;
    let a = a.expose_secret();
    let b = login(&t, "bob").await;
    let b = b.expose_secret();

    let r = with_headers(
        &t,
        "GET",
        "/v3/auth/tokens",
        &[("X-Auth-Token", a), ("X-Subject-Token", a)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json::<TokenResponse>().token.user.name, "alice");
    // An admin of the project may inspect bob's token; bob may not see alice's.
    let r = with_headers(
        &t,
        "GET",
        "/v3/auth/tokens",
        &[("X-Auth-Token", a), ("X-Subject-Token", b)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json::<TokenResponse>().token.user.name, "bob");
    let r = with_headers(
        &t,
        "GET",
        "/v3/auth/tokens",
        &[("X-Auth-Token", b), ("X-Subject-Token", a)],
    )
    .await;
    assert_gateway(&r, 403, "APIGW.0302");
    // No caller token.
    let r = with_headers(&t, "GET", "/v3/auth/tokens", &[("X-Subject-Token", a)]).await;
    assert_gateway(&r, 401, "APIGW.0301");
    assert!(r.text.contains("x-auth-token not found"), "{}", r.text);

    // Revoke alice's own token: it stops working everywhere.
    let r = with_headers(
        &t,
        "DELETE",
        "/v3/auth/tokens",
        &[("X-Auth-Token", a), ("X-Subject-Token", a)],
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = with_headers(&t, "GET", &list_path(&t), &[("X-Auth-Token", a)]).await;
    assert_gateway(&r, 401, "APIGW.0301");
    assert!(r.text.contains("decrypt token fail"), "{}", r.text);
    // Bob's token is untouched; the client's logout revokes it.
    let c = token_client(&t, &SecretString::from(b.to_owned()));
    assert_eq!(
        c.validate_token().await.unwrap().body.token.user.name,
        "bob"
    );
    c.revoke_token().await.unwrap();
    assert!(c.all_servers().await.is_err());
    // An unknown token.
    let r = with_headers(&t, "GET", &list_path(&t), &[("X-Auth-Token", "MIInothing")]).await;
    assert_gateway(&r, 401, "APIGW.0301");
}

#[tokio::test]
async fn tokens_expire_after_token_ttl_secs() {
    let t = TestServer::start_with(|c| c.token_ttl_secs = 1).await;
    user(&t, "alice", UserRole::Admin).await;
    let tok = login(&t, "alice").await;
    let r = with_headers(
        &t,
        "GET",
        &list_path(&t),
        &[("X-Auth-Token", tok.expose_secret())],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let r = with_headers(
        &t,
        "GET",
        &list_path(&t),
        &[("X-Auth-Token", tok.expose_secret())],
    )
    .await;
    assert_gateway(&r, 401, "APIGW.0301");
    assert!(r.text.contains("token expires, expires_at: "), "{}", r.text);
}

#[tokio::test]
async fn a_token_is_refused_on_another_projects_url() {
    let t = TestServer::start().await;
    user(&t, "alice", UserRole::Admin).await;
    let (other, _) = ecsd::admin::create_project_in(&t.state, "other", None)
        .await
        .unwrap();
    ecsd::admin::assign_role(&t.state, "default", "alice", "other", UserRole::Admin)
        .await
        .unwrap();
    let tok = login(&t, "alice").await;
    let r = with_headers(
        &t,
        "GET",
        &format!("/v1/{}/cloudservers/detail", other.id),
        &[("X-Auth-Token", tok.expose_secret())],
    )
    .await;
    assert_ecs(&r, 400, "Ecs.0023");
    // A project of another domain cannot be logged into at all.
    let (foreign, _) = ecsd::admin::create_project_in(&t.state, "foreign", Some("acme"))
        .await
        .unwrap();
    let (r, _) = login_raw(
        &t,
        login_body("default", "alice", PW, json!({"id": foreign.id})),
    )
    .await;
    assert_gateway(&r, 401, "APIGW.0301");
}

#[tokio::test]
async fn a_readonly_users_token_cannot_reset() {
    let t = TestServer::start().await;
    user(&t, "reader", UserRole::ReadOnly).await;
    let (id, _) = t
        .server(&t.project, "web-1", ecs_policy::OsType::Linux, true)
        .await;
    let tok = login(&t, "reader").await;
    let r = t
        .raw(
            reqwest::Client::new()
                .put(t.url(&t.batch_path()))
                .header("X-Auth-Token", tok.expose_secret())
                .header("content-type", "application/json")
                .body(ids_body(Some("Gx7!pLq2vR"), None, &[&id])),
        )
        .await;
    assert_gateway(&r, 403, "APIGW.0302");
    let r = with_headers(
        &t,
        "GET",
        &list_path(&t),
        &[("X-Auth-Token", tok.expose_secret())],
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn tokens_are_stored_only_as_hashes() {
    let t = TestServer::start().await;
    user(&t, "alice", UserRole::Admin).await;
    let tok = login(&t, "alice").await;
    let c = token_client(&t, &tok);
    let st = c.security_token(None).await.unwrap().body.credential;
    // A reset by the token's user: its audit actor is the token's id, not the token.
    let (id, _) = t
        .server(&t.project, "web-1", ecs_policy::OsType::Linux, true)
        .await;
    let r = t
        .raw(
            reqwest::Client::new()
                .put(t.url(&t.batch_path()))
                .header("X-Auth-Token", tok.expose_secret())
                .header("content-type", "application/json")
                .body(ids_body(Some("Gx7!pLq2vR"), None, &[&id])),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    let mut bytes = std::fs::read(t.db_path()).unwrap();
    let wal = t.db_path().with_extension("db-wal");
    if let Ok(w) = std::fs::read(&wal) {
        bytes.extend(w);
    }
    let hay = String::from_utf8_lossy(&bytes);
    for secret in [
        tok.expose_secret(),
        st.securitytoken.expose(),
        st.secret.expose(),
        PW,
    ] {
        assert!(!hay.contains(secret), "a secret is in the database");
    }
    let db = rusqlite::Connection::open(t.db_path()).unwrap();
    let hash: String = db
        .query_row("SELECT token_hash FROM tokens", [], |r| r.get(0))
        .unwrap();
    assert_eq!(hash, ecs_sign::sha256_hex(tok.expose_secret().as_bytes()));
    let phc: String = db
        .query_row("SELECT password_hash FROM users", [], |r| r.get(0))
        .unwrap();
    assert!(phc.starts_with("$argon2id$"), "{phc}");
    // The login, the temporary credentials and the reset are audited, by the token's id.
    let mut st = db
        .prepare("SELECT actor, action FROM audit ORDER BY id")
        .unwrap();
    let rows: Vec<(String, String)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(rows[0].1, "create-token");
    assert!(
        rows[1].1.starts_with("create-temporary-credentials "),
        "{rows:?}"
    );
    for (actor, _) in &rows {
        assert!(actor.starts_with("tok-"), "{actor}");
        assert_eq!(actor, &rows[0].0);
    }
}

/// A client of the temporary AK/SK, with or without its security token.
fn temp_client(t: &TestServer, ak: &str, sk: &str, st: Option<&str>) -> Client {
    let mut cfg = Config::new(&t.base, &t.project, ak, secret(sk));
    if let Some(st) = st {
        cfg = cfg.with_security_token(secret(st));
    }
    Client::new(cfg).unwrap()
}

async fn temp_list(c: &Client, t: &TestServer) -> Resp {
    let r = c
        .send(ecs_client::Request::new(reqwest::Method::GET, list_path(t)))
        .await
        .unwrap();
    let text = r.text();
    contract::check("GET", &list_path(t), r.status, &text);
    Resp {
        status: r.status,
        request_id: Some(r.request_id),
        text,
    }
}

#[tokio::test]
async fn temporary_credentials_work_only_with_their_signed_security_token() {
    let t = TestServer::start().await;
    user(&t, "alice", UserRole::Admin).await;
    t.server(&t.project, "web-1", ecs_policy::OsType::Linux, true)
        .await;
    let tok = login(&t, "alice").await;
    // The raw answer, checked against the document.
    let r = t
        .raw(
            reqwest::Client::new()
                .post(t.url("/v3.0/OS-CREDENTIAL/securitytokens"))
                .header("X-Auth-Token", tok.expose_secret())
                .header("content-type", "application/json")
                .body(
                    json!({"auth": {"identity": {"methods": ["token"],
                        "token": {"duration_seconds": 900}}}})
                    .to_string(),
                ),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let cred = r.json::<SecurityTokenResponse>().credential;
    let (ak, sk, st) = (
        cred.access.as_str(),
        cred.secret.expose(),
        cred.securitytoken.expose(),
    );
    let expires = chrono::DateTime::parse_from_rfc3339(&cred.expires_at).unwrap();
    let left = expires
        .signed_duration_since(chrono::Utc::now())
        .num_seconds();
    assert!((890..=900).contains(&left), "{left}");

    let r = temp_list(&temp_client(&t, ak, sk, Some(st)), &t).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json::<ecs_api::ListServersResponse>().count, 1);
    // Without the security token, or with another one: refused.
    let r = temp_list(&temp_client(&t, ak, sk, None), &t).await;
    assert_gateway(&r, 401, "APIGW.0301");
    let r = temp_list(&temp_client(&t, ak, sk, Some("STwrong")), &t).await;
    assert_gateway(&r, 401, "APIGW.0301");
    // Present but not signed (not in SignedHeaders): refused.
    let date = chrono::Utc::now().format(ecs_sign::DATE_FORMAT).to_string();
    let signed = vec![
        ("Host".to_owned(), t.host.clone()),
        ("X-Sdk-Date".to_owned(), date.clone()),
        ("X-Project-Id".to_owned(), t.project.clone()),
    ];
    let auth = ecs_sign::sign(ak, sk.as_bytes(), "GET", &list_path(&t), "", &signed, b"").unwrap();
    let r = t
        .raw(
            reqwest::Client::new()
                .get(t.url(&list_path(&t)))
                .header("X-Sdk-Date", date)
                .header("X-Project-Id", &t.project)
                .header("X-Security-Token", st)
                .header("Authorization", auth),
        )
        .await;
    assert_gateway(&r, 401, "APIGW.0301");
    assert!(
        r.text.contains("x-security-token must be signed"),
        "{}",
        r.text
    );
    // A wrong SK with the right security token: refused.
    let r = temp_list(&temp_client(&t, ak, "x".repeat(40).as_str(), Some(st)), &t).await;
    assert_gateway(&r, 401, "APIGW.0301");

    // Durations outside 900..86400 and anonymous callers are refused.
    let r = t
        .raw(
            reqwest::Client::new()
                .post(t.url("/v3.0/OS-CREDENTIAL/securitytokens"))
                .header("X-Auth-Token", tok.expose_secret())
                .header("content-type", "application/json")
                .body(
                    json!({"auth": {"identity": {"methods": ["token"],
                        "token": {"duration_seconds": 60}}}})
                    .to_string(),
                ),
        )
        .await;
    assert_ecs(&r, 400, "Ecs.0005");
    let r = t
        .raw(
            reqwest::Client::new()
                .post(t.url("/v3.0/OS-CREDENTIAL/securitytokens"))
                .header("content-type", "application/json")
                .body(json!({"auth": {"identity": {"methods": ["token"]}}}).to_string()),
        )
        .await;
    assert_gateway(&r, 401, "APIGW.0301");

    // Disabling the user stops them at once.
    ecsd::admin::set_user_enabled(&t.state, "default", "alice", false)
        .await
        .unwrap();
    let r = temp_list(&temp_client(&t, ak, sk, Some(st)), &t).await;
    assert_gateway(&r, 401, "APIGW.0301");
}

#[tokio::test]
async fn temporary_credentials_stop_at_expiry() {
    let t = TestServer::start().await;
    user(&t, "alice", UserRole::Admin).await;
    let tok = login(&t, "alice").await;
    let cred = token_client(&t, &tok)
        .security_token(Some(900))
        .await
        .unwrap()
        .body
        .credential;
    let c = temp_client(
        &t,
        &cred.access,
        cred.secret.expose(),
        Some(cred.securitytoken.expose()),
    );
    assert_eq!(temp_list(&c, &t).await.status, 200);
    // 15 minutes later (the clock of the stored row, moved back).
    let db = rusqlite::Connection::open(t.db_path()).unwrap();
    let past = ecsd::store::fmt_time(chrono::Utc::now() - chrono::Duration::seconds(1));
    db.execute(
        "UPDATE temporary_credentials SET expires_at = ?1 WHERE ak = ?2",
        [past.as_str(), cred.access.as_str()],
    )
    .unwrap();
    let r = temp_list(&c, &t).await;
    assert_gateway(&r, 401, "APIGW.0301");
    assert!(r.text.contains("token expires"), "{}", r.text);
}

#[tokio::test]
async fn user_lifecycle_disable_enable_delete() {
    let t = TestServer::start().await;
    user(&t, "alice", UserRole::Admin).await;
    // The same name twice in a domain is refused.
    assert!(
        ecsd::admin::create_user(
            &t.state,
            "default",
            "alice",
            &secret(PW),
            Some(UserRole::Admin),
            None
        )
        .await
        .is_err()
    );
    // A too short password is refused.
    assert!(
        ecsd::admin::create_user(
            &t.state,
            "default",
            "shorty",
            &secret("short"),
            Some(UserRole::Admin),
            None
        )
        .await
        .is_err()
    );
    let users = ecsd::admin::list_users(&t.state, "default").await.unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].roles.len(), 1);
    assert_eq!(users[0].roles[0].project, "test");
    assert_eq!(users[0].roles[0].project_id, t.project);
    assert_eq!(users[0].roles[0].role, "admin");
    assert!(users[0].enabled);

    let tok = login(&t, "alice").await;
    let c = token_client(&t, &tok);
    assert!(c.all_servers().await.is_ok());
    // Disabled: the token stops, and logging in fails as a wrong password does.
    ecsd::admin::set_user_enabled(&t.state, "default", "alice", false)
        .await
        .unwrap();
    assert!(c.all_servers().await.is_err());
    let (r, _) = login_raw(
        &t,
        login_body("default", "alice", PW, json!({"id": t.project})),
    )
    .await;
    assert_gateway(&r, 401, "APIGW.0301");
    assert!(r.text.contains("username or password"), "{}", r.text);
    // Enabled again: logging in works.
    ecsd::admin::set_user_enabled(&t.state, "default", "alice", true)
        .await
        .unwrap();
    let tok2 = login(&t, "alice").await;
    let c2 = token_client(&t, &tok2);
    assert!(c2.all_servers().await.is_ok());
    // Deleted: tokens gone, no login.
    ecsd::admin::delete_user(&t.state, "default", "alice")
        .await
        .unwrap();
    assert!(c2.all_servers().await.is_err());
    let (r, _) = login_raw(
        &t,
        login_body("default", "alice", PW, json!({"id": t.project})),
    )
    .await;
    assert_gateway(&r, 401, "APIGW.0301");
    assert!(
        ecsd::admin::list_users(&t.state, "default")
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn the_dev_user_is_written_to_the_dev_credentials_and_kept_across_restarts() {
    let t = TestServer::start().await;
    let fleet = ecsd::dev::DevFleet {
        linux: 0,
        windows: 0,
    };
    let (f1, path) = ecsd::dev::bootstrap(&t.state, &t.base, fleet, None)
        .await
        .unwrap();
    f1.stop();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let read =
        || -> serde_json::Value { serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap() };
    let first = read();
    assert_eq!(first["user"], "dev-admin");
    assert_eq!(first["domain"], "default");
    let pw = first["password"].as_str().unwrap().to_owned();
    assert!(pw.len() >= 20, "a random password");
    // The dev user is an admin of the dev project and can log in.
    let login = |pw: String| {
        let base = t.base.clone();
        let project = first["project_id"].as_str().unwrap().to_owned();
        async move {
            ecs_client::login(
                &base,
                Trust::System,
                "default",
                "dev-admin",
                &secret(&pw),
                ProjectScope::Id(project),
            )
            .await
        }
    };
    let l = login(pw.clone()).await.unwrap();
    assert_eq!(l.body.token.roles[0].name, "admin");
    // A second start keeps the user and its password.
    let (f2, _) = ecsd::dev::bootstrap(&t.state, &t.base, fleet, None)
        .await
        .unwrap();
    f2.stop();
    assert_eq!(read()["password"], pw.as_str());
    assert!(login(pw).await.is_ok());
}
