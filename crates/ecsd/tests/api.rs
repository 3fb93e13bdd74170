//! The public API against a real server on port 0 with a fresh database: one
//! test per error code of the contract, and the success paths.

mod common;

use common::*;
use ecs_api::{
    BatchResetResponse, IdEntry, InternalError, ResetPasswordOption, ResetPwdFlag,
    ResetPwdFlagResponse, ResetState, ServerStatus, SingleResetRequest,
};
use ecs_policy::OsType::{Linux, Windows};

const GOOD: &str = "Gx7!pLq2vR";

/// The body of a single reset.
fn single_body(password: &str, is_check_password: Option<bool>) -> String {
    body(&SingleResetRequest {
        reset_password: ResetPasswordOption {
            new_password: Some(secret(password).into()),
            generate: None,
            is_check_password,
        },
    })
}

#[tokio::test]
async fn batch_reset_accepts_and_reports_pending_per_server() {
    let t = TestServer::start().await;
    let (a, _) = t.server(&t.project, "a", Linux, true).await;
    let (b, _) = t.server(&t.project, "b", Windows, true).await;
    let r = t
        .call(
            "PUT",
            &t.batch_path(),
            Some(&ids_body(Some(GOOD), None, &[&b, &a])),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.json::<BatchResetResponse>(),
        BatchResetResponse {
            response: vec![IdEntry { id: b.clone() }, IdEntry { id: a }],
            readiness: None,
        }
    );
    let rid = r.request_id.unwrap();
    let o = t.outcome(&rid).await;
    assert_eq!(o.servers[0].id, b);
    assert_eq!(o.servers[0].state, ResetState::Pending);
    assert_eq!(o.servers[1].state, ResetState::Pending);
    assert_eq!(o.summary.pending, 2);
    assert!(!o.complete);
}

#[tokio::test]
async fn a_newer_reset_supersedes_an_older_pending_one() {
    let t = TestServer::start().await;
    let (a, _) = t.server(&t.project, "a", Linux, true).await;
    let first = t
        .call(
            "PUT",
            &t.batch_path(),
            Some(&ids_body(Some(GOOD), None, &[&a])),
        )
        .await;
    let second = t
        .call(
            "PUT",
            &t.batch_path(),
            Some(&ids_body(Some("Hy8@qMr3wS"), None, &[&a])),
        )
        .await;
    assert_eq!(second.status, 200);
    let o1 = t.outcome(&first.request_id.unwrap()).await;
    assert_eq!(o1.servers[0].state, ResetState::Superseded);
    let o2 = t.outcome(&second.request_id.unwrap()).await;
    assert_eq!(o2.servers[0].state, ResetState::Pending);
}

#[tokio::test]
async fn dry_run_answers_readiness_and_stores_nothing() {
    let t = TestServer::start().await;
    let (a, _) = t.server(&t.project, "a", Linux, true).await;
    // Without a password.
    let r = t
        .call(
            "PUT",
            &t.batch_path(),
            Some(&ids_body(None, Some(true), &[&a])),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let dry: BatchResetResponse = r.json();
    assert_eq!(dry.response, [IdEntry { id: a.clone() }]);
    let readiness = dry.readiness.expect("a dry run answers readiness");
    assert!(readiness[0].plugin_installed);
    assert_eq!(readiness[0].status, ServerStatus::Active);
    let o = t
        .call(
            "GET",
            &format!("{}/{}", t.batch_path(), r.request_id.unwrap()),
            None,
        )
        .await;
    assert_ecs(&o, 400, "Common.0011");
    // With a bad password the dry run reports the rule.
    let r = t
        .call(
            "PUT",
            &t.batch_path(),
            Some(&ids_body(Some("short"), Some(true), &[&a])),
        )
        .await;
    assert_ecs(&r, 400, "Ecs.0011");
}

#[tokio::test]
async fn ecs_0005_malformed_bodies_change_nothing() {
    let t = TestServer::start().await;
    let (a, _) = t.server(&t.project, "a", Linux, true).await;
    let p = t.batch_path();
    let cases: Vec<String> = vec![
        "{not json".into(),
        "[]".into(),
        r#"{"new_password": 12345678, "servers": [{"id": "x"}]}"#.into(),
        format!(r#"{{"new_password": "{GOOD}", "dry_run": "yes", "servers": [{{"id": "{a}"}}]}}"#),
        format!(r#"{{"new_password": "{GOOD}", "servers": [{{"id": 5}}]}}"#),
        format!(r#"{{"new_password": "{GOOD}", "servers": {{"id": "{a}"}}}}"#),
        format!(r#"{{"new_password": "{GOOD}"}}"#),
        format!(r#"{{"new_password": "{GOOD}", "servers": []}}"#),
        format!(r#"{{"new_password": "{GOOD}", "servers": [{{"id": ""}}]}}"#),
        format!(r#"{{"new_password": "{GOOD}", "servers": [{{"id": "{a}"}}, {{"id": "{a}"}}]}}"#),
        format!(r#"{{"servers": [{{"id": "{a}"}}]}}"#),
        format!(r#"{{"dry_run": false, "servers": [{{"id": "{a}"}}]}}"#),
        format!(r#"{{"new_password": "{GOOD}", "servers": [{{"id": "{a}"}}], "apply": "later"}}"#),
        format!(
            r#"{{"new_password": "{GOOD}", "servers": [{{"id": "{}"}}]}}"#,
            "x".repeat(65)
        ),
    ];
    for body in &cases {
        let r = t.call("PUT", &p, Some(body)).await;
        assert_ecs(&r, 400, "Ecs.0005");
        assert!(!r.text.contains(GOOD), "the password is echoed: {}", r.text);
    }
    // The duplicate is named.
    let r = t.call("PUT", &p, Some(&cases[9])).await;
    assert!(assert_ecs(&r, 400, "Ecs.0005").error.message.contains(&a));
    // Non-UTF-8 bytes.
    let mut bytes = br#"{"new_password": ""#.to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe]);
    bytes.extend_from_slice(br#"", "servers": [{"id": "x"}]}"#);
    let (ak, sk) = (t.ak.clone(), t.sk.clone());
    let r = t
        .call_as(&ak, &sk, "PUT", &p, Some(("application/json", bytes)), &[])
        .await;
    assert_ecs(&r, 400, "Ecs.0005");
    // Wrong content type.
    let body = ids_body(Some(GOOD), None, &[&a]).into_bytes();
    let r = t
        .call_as(&ak, &sk, "PUT", &p, Some(("text/plain", body)), &[])
        .await;
    assert_ecs(&r, 400, "Ecs.0005");
    let s = t.state.store.servers_by_ids(&[a]).await.unwrap();
    assert!(
        s[0].last_reset.is_none(),
        "a rejected request changed the server"
    );
}

#[tokio::test]
async fn common_0002_empty_body() {
    let t = TestServer::start().await;
    let r = t.call("PUT", &t.batch_path(), Some("")).await;
    assert_ecs(&r, 400, "Common.0002");
}

#[tokio::test]
async fn ecs_0118_more_than_1000_servers() {
    let t = TestServer::start().await;
    let ids: Vec<String> = (0..1001).map(|i| format!("id-{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let r = t
        .call(
            "PUT",
            &t.batch_path(),
            Some(&ids_body(Some(GOOD), None, &refs)),
        )
        .await;
    assert_ecs(&r, 400, "Ecs.0118");
    // Exactly 1000 is allowed (and fails here only because the ids are unknown).
    let r = t
        .call(
            "PUT",
            &t.batch_path(),
            Some(&ids_body(Some(GOOD), None, &refs[..1000])),
        )
        .await;
    let e = assert_ecs(&r, 400, "Ecs.0114");
    assert_eq!(e.internal_error.unwrap().len(), 1000);
    assert!(e.error.message.contains("and 990 more"));
}

#[tokio::test]
async fn ecs_0011_password_rules_name_the_rule() {
    let t = TestServer::start().await;
    let (l, _) = t.server(&t.project, "l", Linux, true).await;
    let (w, _) = t.server(&t.project, "w", Windows, true).await;
    for (pw, needle) in [
        ("Ab1!", "length"),
        ("Gx7!pLq2v#", "special characters"),
        ("abcdefgh12", "three of"),
        ("P@ssw0rd", "weak"),
    ] {
        let r = t
            .call(
                "PUT",
                &t.batch_path(),
                Some(&ids_body(Some(pw), None, &[&l, &w])),
            )
            .await;
        let e = assert_ecs(&r, 400, "Ecs.0011");
        assert!(e.internal_error.is_none(), "{}", r.text);
        let msg = e.error.message;
        assert!(msg.contains(needle), "{msg}");
        assert!(!msg.contains(pw));
    }
    // A Windows-only rule in a mixed batch fails only the Windows server.
    let r = t
        .call(
            "PUT",
            &t.batch_path(),
            Some(&ids_body(Some("Qmin7!pLx2"), None, &[&l, &w])),
        )
        .await;
    let e = assert_ecs(&r, 400, "Ecs.0011");
    assert_eq!(
        e.internal_error,
        Some(vec![InternalError {
            id: w,
            error_code: "Ecs.0011".into(),
            error_message:
                "The password must not contain three consecutive characters of Administrator."
                    .into(),
        }])
    );
    // The same password on the Linux server alone is fine.
    let r = t
        .call(
            "PUT",
            &t.batch_path(),
            Some(&ids_body(Some("Qmin7!pLx2"), None, &[&l])),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // A Linux username rule for Linux servers only.
    let r = t
        .call(
            "PUT",
            &t.batch_path(),
            Some(&ids_body(Some("xRoot12!ab"), None, &[&l])),
        )
        .await;
    assert_ecs(&r, 400, "Ecs.0011");
}

#[tokio::test]
async fn ecs_0114_unknown_and_foreign_servers_look_the_same() {
    let t = TestServer::start().await;
    let (mine, _) = t.server(&t.project, "mine", Linux, true).await;
    let other = ecsd::admin::create_project(&t.state, "other")
        .await
        .unwrap();
    let (foreign, _) = t.server(&other.id, "theirs", Linux, true).await;
    let r = t
        .call(
            "PUT",
            &t.batch_path(),
            Some(&ids_body(Some(GOOD), None, &[&mine, "nope", &foreign])),
        )
        .await;
    let e = assert_ecs(&r, 400, "Ecs.0114");
    let internal = e.internal_error.unwrap();
    assert_eq!(internal.len(), 2);
    assert_eq!(internal[0].id, "nope");
    assert_eq!(internal[1].id, foreign);
    assert_eq!(internal[0].error_code, "Ecs.0114");
    assert_eq!(internal[1].error_code, "Ecs.0114");
    let shape = |m: &str, id: &str| m.replace(id, "ID");
    assert_eq!(
        shape(&internal[0].error_message, "nope"),
        shape(&internal[1].error_message, &foreign)
    );
    let msg = e.error.message;
    assert!(
        msg.contains("2 of 3") && msg.contains("nope") && msg.contains(&foreign),
        "{msg}"
    );
    // All or nothing: the valid server was not reset.
    let s = t
        .state
        .store
        .servers_by_ids(std::slice::from_ref(&mine))
        .await
        .unwrap();
    assert!(s[0].last_reset.is_none());
    // Single reset and flag: 404.
    let body = single_body(GOOD, None);
    for id in ["nope", foreign.as_str()] {
        let r = t
            .call(
                "PUT",
                &format!("/v1/{}/cloudservers/{id}/os-reset-password", t.project),
                Some(&body),
            )
            .await;
        assert_ecs(&r, 404, "Ecs.0114");
        let r = t.flag(id).await;
        assert_ecs(&r, 404, "Ecs.0114");
    }
}

#[tokio::test]
async fn ecs_0100_plugin_missing_or_state_forbids() {
    let t = TestServer::start().await;
    let (bare, _) = t.server(&t.project, "bare", Linux, false).await;
    let (err, _) = t.server(&t.project, "err", Linux, true).await;
    let (off, _) = t.server(&t.project, "off", Linux, true).await;
    t.set_status(&err, "ERROR");
    t.set_status(&off, "SHUTOFF");
    let r = t
        .call(
            "PUT",
            &t.batch_path(),
            Some(&ids_body(Some(GOOD), None, &[&bare, &err, &off])),
        )
        .await;
    let internal = assert_ecs(&r, 400, "Ecs.0100").internal_error.unwrap();
    assert_eq!(internal.len(), 2, "{}", r.text);
    assert!(internal[0].error_message.contains("plug-in"));
    assert!(internal[1].error_message.contains("ERROR"));
    // SHUTOFF is accepted.
    let r = t
        .call(
            "PUT",
            &t.batch_path(),
            Some(&ids_body(Some(GOOD), None, &[&off])),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let body = single_body(GOOD, None);
    let r = t
        .call(
            "PUT",
            &format!("/v1/{}/cloudservers/{bare}/os-reset-password", t.project),
            Some(&body),
        )
        .await;
    assert_ecs(&r, 400, "Ecs.0100");
}

#[tokio::test]
async fn ecs_0023_project_mismatch() {
    let t = TestServer::start().await;
    let other = ecsd::admin::create_project(&t.state, "other")
        .await
        .unwrap();
    let path = format!("/v1/{}/cloudservers/os-reset-passwords", other.id);
    let r = t
        .call("PUT", &path, Some(&ids_body(Some(GOOD), None, &["x"])))
        .await;
    assert_ecs(&r, 400, "Ecs.0023");
    // A project that does not exist answers the same.
    let r = t
        .call(
            "PUT",
            "/v1/0000/cloudservers/os-reset-passwords",
            Some(&ids_body(Some(GOOD), None, &["x"])),
        )
        .await;
    assert_ecs(&r, 400, "Ecs.0023");
}

#[tokio::test]
async fn common_0011_unknown_reset_request() {
    let t = TestServer::start().await;
    for id in ["0123456789abcdef0123456789abcdef", "not-an-id"] {
        let r = t
            .call("GET", &format!("{}/{id}", t.batch_path()), None)
            .await;
        assert_ecs(&r, 400, "Common.0011");
    }
}

#[tokio::test]
async fn single_reset_answers_204_and_checks_complexity_only_when_asked() {
    let t = TestServer::start().await;
    let (a, _) = t.server(&t.project, "a", Linux, true).await;
    let path = format!("/v1/{}/cloudservers/{a}/os-reset-password", t.project);
    let body = single_body;
    let r = t.call("PUT", &path, Some(&body("abcdefgh", None))).await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert!(r.text.is_empty());
    let r = t
        .call("PUT", &path, Some(&body("abcdefgh", Some(true))))
        .await;
    assert_ecs(&r, 400, "Ecs.0011");
    let r = t.call("PUT", &path, Some(&body("abc", Some(false)))).await;
    assert_ecs(&r, 400, "Ecs.0011");
    let r = t
        .call("PUT", &path, Some(r#"{"reset-password": {}}"#))
        .await;
    assert_ecs(&r, 400, "Ecs.0005");
    let s = t.state.store.servers_by_ids(&[a]).await.unwrap();
    assert!(s[0].last_reset.is_some());
}

#[tokio::test]
async fn resetpwd_flag_is_a_string_and_needs_an_agent_that_reported() {
    let t = TestServer::start().await;
    let flag = |id: String| {
        let t = &t;
        async move {
            let r = t.flag(&id).await;
            assert_eq!(r.status, 200, "{}", r.text);
            // A string, "True" or "False" (the type serializes it so).
            r.json::<ResetPwdFlagResponse>().resetpwd_flag
        }
    };
    // No agent at all.
    let (bare, _) = t.server(&t.project, "bare", Linux, false).await;
    assert_eq!(flag(bare).await, ResetPwdFlag::False);
    // Enrolled through the real path, but not reported in yet.
    let dir = tempfile::tempdir().unwrap();
    let e = common::enroll(
        &t.base,
        &token(&t, 1).await,
        dir.path(),
        "flag-m",
        "flag",
        "Linux",
    )
    .await
    .unwrap();
    assert_eq!(flag(e.server_id.clone()).await, ResetPwdFlag::False);
    // Its first heartbeat turns it to the string "True".
    ecs_agent::client::Client::new(common::http(), &t.base, Some(secret(&e.credential)))
        .heartbeat(&ecs_agent_proto::HeartbeatRequest {
            agent_version: "test".into(),
            boot_id: "boot-1".into(),
            uptime_secs: 1,
            power_driver: false,
            start_up: false,
        })
        .await
        .unwrap();
    assert_eq!(flag(e.server_id).await, ResetPwdFlag::True);
}

#[tokio::test]
async fn apigw_0301_authentication_failures() {
    let t = TestServer::start().await;
    let p = t.batch_path();
    let body = ids_body(Some(GOOD), None, &["x"]);
    // No Authorization at all.
    let r = t
        .raw(reqwest::Client::new().put(t.url(&p)).body(body.clone()))
        .await;
    assert_gateway(&r, 401, "APIGW.0301");
    // An unknown X-Auth-Token is refused (decrypt token fail).
    let r = t
        .raw(
            reqwest::Client::new()
                .put(t.url(&p))
                .header("X-Auth-Token", "abc")
                .body(body.clone()),
        )
        .await;
    assert_gateway(&r, 401, "APIGW.0301");
    // Wrong secret key.
    let ak = t.ak.clone();
    let r = t
        .call_as(
            &ak,
            "wrong-secret",
            "PUT",
            &p,
            Some(("application/json", body.clone().into_bytes())),
            &[],
        )
        .await;
    let e = assert_gateway(&r, 401, "APIGW.0301");
    assert!(e.error_msg.contains("verify aksk signature fail"));
    // Unknown access key.
    let r = t
        .call_as(
            "NOSUCHAK",
            "x",
            "PUT",
            &p,
            Some(("application/json", body.clone().into_bytes())),
            &[],
        )
        .await;
    assert_gateway(&r, 401, "APIGW.0301");
    // A signature an hour old.
    let old = (chrono::Utc::now() - chrono::Duration::hours(1))
        .format(ecs_sign::DATE_FORMAT)
        .to_string();
    let sk = t.sk.clone();
    let r = t
        .call_signed_at(
            &ak,
            &sk,
            &old,
            "PUT",
            &p,
            Some(("application/json", body.clone().into_bytes())),
            &[],
        )
        .await;
    assert_gateway(&r, 401, "APIGW.0301");
    // 14 minutes is within the window.
    let recent = (chrono::Utc::now() - chrono::Duration::minutes(14))
        .format(ecs_sign::DATE_FORMAT)
        .to_string();
    let r = t
        .call_signed_at(
            &ak,
            &sk,
            &recent,
            "GET",
            &format!("{p}/0123456789abcdef0123456789abcdef"),
            None,
            &[],
        )
        .await;
    assert_ecs(&r, 400, "Common.0011");
    // A body changed after signing.
    let auth = {
        let date = chrono::Utc::now().format(ecs_sign::DATE_FORMAT).to_string();
        let headers = vec![
            ("Host".to_string(), t.host.clone()),
            ("X-Sdk-Date".to_string(), date.clone()),
        ];
        (
            ecs_sign::sign(&ak, sk.as_bytes(), "PUT", &p, "", &headers, body.as_bytes()).unwrap(),
            date,
        )
    };
    let r = t
        .raw(
            reqwest::Client::new()
                .put(t.url(&p))
                .header("Authorization", auth.0)
                .header("X-Sdk-Date", auth.1)
                .header("Content-Type", "application/json")
                .body(ids_body(Some("Hy8@qMr3wS"), None, &["x"])),
        )
        .await;
    assert_gateway(&r, 401, "APIGW.0301");
}

#[tokio::test]
async fn apigw_0301_the_date_window_message_names_the_configured_window() {
    for (skew, late, words) in [
        (15 * 60, chrono::Duration::hours(1), "more than 15 minutes"),
        (120, chrono::Duration::minutes(3), "more than 2 minutes"),
        (90, chrono::Duration::minutes(2), "more than 90 seconds"),
    ] {
        let t = TestServer::start_with(|c| c.clock_skew_secs = skew).await;
        let (ak, sk) = (t.ak.clone(), t.sk.clone());
        let date = (chrono::Utc::now() - late)
            .format(ecs_sign::DATE_FORMAT)
            .to_string();
        let r = t
            .call_signed_at(
                &ak,
                &sk,
                &date,
                "GET",
                &format!("{}/0123456789abcdef0123456789abcdef", t.batch_path()),
                None,
                &[],
            )
            .await;
        let msg = assert_gateway(&r, 401, "APIGW.0301").error_msg;
        assert!(msg.ends_with(words), "{skew}: {msg}");
    }
}

#[tokio::test]
async fn apigw_0302_read_only_key_cannot_reset() {
    let t = TestServer::start().await;
    let (a, _) = t.server(&t.project, "a", Linux, true).await;
    let (ak, sk) =
        ecsd::admin::create_access_key(&t.state, &t.project, ecsd::store::Role::ReadOnly)
            .await
            .unwrap();
    let sk = secrecy::ExposeSecret::expose_secret(&sk).to_owned();
    let body = ids_body(Some(GOOD), None, &[&a]).into_bytes();
    let r = t
        .call_as(
            &ak,
            &sk,
            "PUT",
            &t.batch_path(),
            Some(("application/json", body)),
            &[],
        )
        .await;
    assert_gateway(&r, 403, "APIGW.0302");
    let r = t
        .call_as(
            &ak,
            &sk,
            "GET",
            &format!("/v1/{}/cloudservers/{a}/os-resetpwd-flag", t.project),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn apigw_0308_throttled_per_access_key() {
    let t = TestServer::start_with(|c| c.rate_limit_per_sec = 3).await;
    let (a, _) = t.server(&t.project, "a", Linux, true).await;
    let path = format!("/v1/{}/cloudservers/{a}/os-resetpwd-flag", t.project);
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let r = t.call("GET", &path, None).await;
        if r.status == 429 {
            assert_gateway(&r, 429, "APIGW.0308");
        }
        statuses.push(r.status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_eq!(statuses[0], 200);
}

#[tokio::test]
async fn apigw_0201_body_too_large() {
    let t = TestServer::start_with(|c| c.max_body_bytes = 64 * 1024).await;
    let big = format!(
        r#"{{"new_password": "{GOOD}", "servers": [{{"id": "{}"}}]}}"#,
        "x".repeat(70 * 1024)
    );
    let r = t.call("PUT", &t.batch_path(), Some(&big)).await;
    assert_gateway(&r, 413, "APIGW.0201");
}

#[tokio::test]
async fn apigw_0101_unknown_route_and_method() {
    let t = TestServer::start().await;
    let r = t
        .raw(reqwest::Client::new().get(t.url("/v2/nothing/here")))
        .await;
    assert_gateway(&r, 404, "APIGW.0101");
    let r = t
        .raw(reqwest::Client::new().delete(t.url(&t.batch_path())))
        .await;
    assert_gateway(&r, 404, "APIGW.0101");
}

#[tokio::test]
async fn every_response_has_a_request_id() {
    let t = TestServer::start_with(|c| c.max_body_bytes = 1024).await;
    let (a, _) = t.server(&t.project, "a", Linux, true).await;
    let flag = format!("/v1/{}/cloudservers/{a}/os-resetpwd-flag", t.project);
    let single = format!("/v1/{}/cloudservers/{a}/os-reset-password", t.project);
    let c = reqwest::Client::new;
    let responses = vec![
        ("health", t.raw(c().get(t.url("/health"))).await),
        ("signed GET 200", t.call("GET", &flag, None).await),
        (
            "batch 200",
            t.call(
                "PUT",
                &t.batch_path(),
                Some(&ids_body(Some(GOOD), None, &[&a])),
            )
            .await,
        ),
        (
            "single 204",
            t.call("PUT", &single, Some(&single_body(GOOD, None))).await,
        ),
        (
            "ECS 400",
            t.call("PUT", &t.batch_path(), Some("{not json")).await,
        ),
        (
            "ECS 404",
            t.call("GET", &flag.replace(&a, "nope"), None).await,
        ),
        ("gateway 401", t.raw(c().get(t.url(&flag))).await),
        (
            "gateway 413",
            t.call("PUT", &t.batch_path(), Some(&"x".repeat(2048)))
                .await,
        ),
        ("gateway 404", t.raw(c().get(t.url("/v2/nothing"))).await),
        (
            "agent API 401",
            t.raw(c().get(t.url("/agent/v1/work")).bearer_auth("ecsac_x"))
                .await,
        ),
    ];
    let mut seen = std::collections::HashSet::new();
    for (what, r) in &responses {
        let rid = r
            .request_id
            .as_deref()
            .unwrap_or_else(|| panic!("{what}: no X-Request-Id ({})", r.status));
        assert!(
            rid.len() == 32
                && rid
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{what}: {rid}"
        );
        assert!(seen.insert(rid.to_owned()), "{what}: {rid} reused");
        if r.shape_keys().error_code.is_some() {
            assert_eq!(
                r.json::<ecs_api::GatewayErrorBody>().request_id,
                rid,
                "{what}"
            );
        }
    }
    let statuses: Vec<u16> = responses.iter().map(|(_, r)| r.status).collect();
    assert_eq!(statuses, [200, 200, 200, 204, 400, 404, 401, 413, 404, 401]);
}

#[tokio::test]
async fn audit_records_mutating_calls_without_passwords() {
    const REJECTED: &str = "Qz7!kWp";
    const SINGLE: &str = "Lm4=rTs9uV";
    let t = TestServer::start().await;
    let (a, _) = t.server(&t.project, "a", Linux, true).await;
    t.call(
        "PUT",
        &t.batch_path(),
        Some(&ids_body(Some(GOOD), None, &[&a])),
    )
    .await;
    t.call(
        "PUT",
        &t.batch_path(),
        Some(&ids_body(Some(REJECTED), None, &[&a])),
    )
    .await;
    t.call(
        "PUT",
        &t.batch_path(),
        Some(&ids_body(None, Some(true), &[&a])),
    )
    .await;
    let r = t
        .call(
            "PUT",
            &format!("/v1/{}/cloudservers/{a}/os-reset-password", t.project),
            Some(&single_body(SINGLE, None)),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    // A read is not audited.
    t.call(
        "GET",
        &format!("/v1/{}/cloudservers/{a}/os-resetpwd-flag", t.project),
        None,
    )
    .await;
    let c = rusqlite::Connection::open(t.db_path()).unwrap();
    let rows: Vec<(String, String, String, bool, String)> = c
        .prepare("SELECT actor, action, servers, dry_run, outcome FROM audit ORDER BY id")
        .unwrap()
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert_eq!(rows[0].0, t.ak);
    assert_eq!(rows[0].1, "batch-reset-password");
    assert!(rows[0].2.contains(&a));
    assert_eq!(rows[0].4, "accepted");
    assert_eq!(rows[1].4, "rejected Ecs.0011");
    assert!(rows[2].3);
    assert!(
        rows[3].2.contains(&a) && rows[3].4 == "accepted",
        "{rows:?}"
    );
    // No column of any audit row holds any of the passwords.
    let mut stmt = c.prepare("SELECT * FROM audit").unwrap();
    let columns = stmt.column_count();
    let cells: Vec<String> = stmt
        .query_map([], |r| {
            (0..columns)
                .map(|i| {
                    Ok(match r.get_ref(i)? {
                        rusqlite::types::ValueRef::Text(b) | rusqlite::types::ValueRef::Blob(b) => {
                            String::from_utf8_lossy(b).into_owned()
                        }
                        other => format!("{other:?}"),
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap()
        .flat_map(Result::unwrap)
        .collect();
    assert!(cells.len() >= 4 * 10, "{cells:?}");
    for pw in [GOOD, REJECTED, SINGLE] {
        assert!(
            !cells.iter().any(|c| c.contains(pw)),
            "{pw} is in the audit: {cells:?}"
        );
    }
}

#[tokio::test]
async fn a_panicking_handler_answers_a_json_500_with_a_request_id() {
    async fn boom() -> &'static str {
        panic!("boom")
    }
    let app =
        ecsd::api::with_common_layers(axum::Router::new().route("/boom", axum::routing::get(boom)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let r = send(reqwest::Client::new().get(format!("http://{addr}/boom"))).await;
    assert_ecs(&r, 500, "Common.0001");
    assert!(!r.text.contains("boom"));
}
