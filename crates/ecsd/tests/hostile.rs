//! Hostile input (issue #11): bodies with bytes after the JSON value,
//! `null` where a value is required, repeated credential headers, and bodies
//! that stop arriving. Each case shows the request was refused and that
//! nothing was stored.

mod common;

use common::*;
use ecs_policy::OsType::Linux;
use std::time::{Duration, Instant};

const GOOD: &str = "Gx7!pLq2vR";

/// What a trailing garbage test appends to a valid body.
const TRAILERS: [&[u8]; 5] = [b" trailing", b"]", b"{}", b"\x00garbage", b"\n{\"a\":1}"];

/// Rows of a table in the SQLite file.
fn rows(t: &TestServer, table: &str) -> i64 {
    let c = rusqlite::Connection::open(t.db_path()).unwrap();
    c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

async fn signed(t: &TestServer, method: &str, path: &str, body: Vec<u8>) -> Resp {
    let (ak, sk) = (t.ak.clone(), t.sk.clone());
    t.call_as(
        &ak,
        &sk,
        method,
        path,
        Some(("application/json", body)),
        &[],
    )
    .await
}

fn with(valid: &str, trailer: &[u8]) -> Vec<u8> {
    let mut b = valid.as_bytes().to_vec();
    b.extend_from_slice(trailer);
    b
}

#[track_caller]
fn trailing_refused(r: &Resp) {
    let e = assert_ecs(r, 400, "Ecs.0005");
    assert!(
        e.error.message.contains("after the JSON value"),
        "{}",
        r.text
    );
    assert!(!r.text.contains(GOOD), "the password is echoed: {}", r.text);
}

#[tokio::test]
async fn trailing_bytes_after_a_reset_body_are_refused_and_nothing_is_reset() {
    let t = TestServer::start().await;
    let (a, _) = t.server(&t.project, "a", Linux, true).await;
    let batch = ids_body(Some(GOOD), None, &[&a]);
    let single = body(&ecs_api::SingleResetRequest {
        reset_password: ecs_api::ResetPasswordOption {
            new_password: secret(GOOD).into(),
            is_check_password: None,
        },
    });
    let single_path = format!("/v1/{}/cloudservers/{a}/os-reset-password", t.project);
    for trailer in TRAILERS {
        trailing_refused(&signed(&t, "PUT", &t.batch_path(), with(&batch, trailer)).await);
        trailing_refused(&signed(&t, "PUT", &single_path, with(&single, trailer)).await);
    }
    assert_eq!(rows(&t, "resets"), 0);
    assert_eq!(rows(&t, "reset_targets"), 0);
    let s = t
        .state
        .store
        .servers_by_ids(std::slice::from_ref(&a))
        .await
        .unwrap();
    assert!(
        s[0].last_reset.is_none(),
        "a refused request reset the server"
    );
    // Trailing whitespace is not garbage.
    let r = signed(&t, "PUT", &t.batch_path(), with(&batch, b" \r\n\t")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(rows(&t, "resets"), 1);
}

#[tokio::test]
async fn trailing_bytes_are_refused_on_every_other_json_route() {
    let t = TestServer::start().await;
    let (a, _) = t.server(&t.project, "a", Linux, true).await;
    let action = serde_json::json!({"os-stop": {"servers": [{"id": a}]}}).to_string();
    let tags =
        serde_json::json!({"action": "create", "tags": [{"key": "k", "value": "v"}]}).to_string();
    let tags_path = format!("/v1/{}/cloudservers/{a}/tags/action", t.project);
    let tokens_path = format!("/v1/{}/enroll-tokens", t.project);
    for trailer in TRAILERS {
        trailing_refused(&signed(&t, "POST", &t.action_path(), with(&action, trailer)).await);
        trailing_refused(&signed(&t, "POST", &tags_path, with(&tags, trailer)).await);
        trailing_refused(&signed(&t, "POST", &tokens_path, with(r#"{"uses": 2}"#, trailer)).await);
        // IAM and the agent API (unauthenticated parsers).
        let token = r#"{"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "u", "password": "p", "domain": {"name": "d"}}}}, "scope": {"project": {"id": "x"}}}}"#;
        let r = send(
            http()
                .post(t.url("/v3/auth/tokens"))
                .header("content-type", "application/json")
                .body(with(token, trailer)),
        )
        .await;
        trailing_refused(&r);
        let r = send(
            http()
                .post(t.url("/agent/v1/rekey-challenge"))
                .header("content-type", "application/json")
                .body(with(&format!(r#"{{"server_id": "{a}"}}"#), trailer)),
        )
        .await;
        trailing_refused(&r);
    }
    assert_eq!(rows(&t, "jobs"), 0);
    assert_eq!(rows(&t, "sub_jobs"), 0);
    assert_eq!(rows(&t, "enroll_tokens"), 0);
    assert_eq!(rows(&t, "tokens"), 0);
    assert_eq!(rows(&t, "rekey_challenges"), 0);
    let s = t.state.store.servers_by_ids(&[a]).await.unwrap();
    assert!(s[0].tags.is_empty(), "a refused request tagged the server");
}

#[tokio::test]
async fn null_dry_run_or_apply_is_refused_not_taken_as_absent() {
    let t = TestServer::start().await;
    let (a, _) = t.server(&t.project, "a", Linux, true).await;
    for body in [
        format!(r#"{{"new_password": "{GOOD}", "dry_run": null, "servers": [{{"id": "{a}"}}]}}"#),
        format!(r#"{{"new_password": "{GOOD}", "apply": null, "servers": [{{"id": "{a}"}}]}}"#),
    ] {
        let r = t.call("PUT", &t.batch_path(), Some(&body)).await;
        let e = assert_ecs(&r, 400, "Ecs.0005");
        assert!(
            e.error.message.contains("dry_run") || e.error.message.contains("apply"),
            "{}",
            r.text
        );
    }
    assert_eq!(rows(&t, "resets"), 0);
    let s = t.state.store.servers_by_ids(&[a]).await.unwrap();
    assert!(s[0].last_reset.is_none());
}

#[tokio::test]
async fn enroll_token_bodies_of_only_unknown_fields_are_refused() {
    let t = TestServer::start().await;
    let p = format!("/v1/{}/enroll-tokens", t.project);
    for body in [
        r#"{"usez": 5}"#,
        r#"{"ttl": 60, "count": 2}"#,
        r#"{"uses": 2, "ttl": 60}"#,
    ] {
        let r = t.call("POST", &p, Some(body)).await;
        let e = assert_ecs(&r, 400, "Ecs.0005");
        assert!(e.error.message.contains("unknown field"), "{}", r.text);
    }
    assert_eq!(rows(&t, "enroll_tokens"), 0);
    // An empty body and an empty object still mean the defaults.
    for body in ["", "{}"] {
        let r = t.call("POST", &p, Some(body)).await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    assert_eq!(rows(&t, "enroll_tokens"), 2);
}

#[tokio::test]
async fn repeated_credential_or_content_type_headers_are_refused() {
    let t = TestServer::start().await;
    let (a, _) = t.server(&t.project, "a", Linux, true).await;
    let batch = ids_body(Some(GOOD), None, &[&a]);
    let date = chrono::Utc::now().format(ecs_sign::DATE_FORMAT).to_string();
    for (name, first, second) in [
        (
            "authorization",
            "SDK-HMAC-SHA256 Access=x",
            "SDK-HMAC-SHA256 Access=y",
        ),
        ("x-sdk-date", date.as_str(), date.as_str()),
        ("host", t.host.as_str(), "evil.example"),
    ] {
        let r = send(
            http()
                .put(t.url(&t.batch_path()))
                .header("content-type", "application/json")
                .header(name, first)
                .header(name, second)
                .body(batch.clone()),
        )
        .await;
        let e = assert_gateway(&r, 401, "APIGW.0301");
        assert!(e.error_msg.contains("repeated"), "{}", r.text);
    }
    // A second Content-Type.
    let r = send(
        http()
            .put(t.url(&t.batch_path()))
            .header("content-type", "application/json")
            .header("content-type", "text/plain")
            .body(ids_body(Some(GOOD), None, &[&a])),
    )
    .await;
    let e = assert_ecs(&r, 400, "Ecs.0005");
    assert!(e.error.message.contains("Content-Type"), "{}", r.text);
    assert_eq!(rows(&t, "resets"), 0);
}

/// Sends `head` and `body` on a raw connection, then reads until the server
/// closes it (at most `wait`); returns what came back and how long it took.
async fn raw_exchange(
    t: &TestServer,
    head: &str,
    body: &[u8],
    trickle: Option<Duration>,
    wait: Duration,
) -> (String, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(&t.host).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    match trickle {
        None => s.write_all(body).await.unwrap(),
        Some(gap) => {
            // A byte at a time until the server stops reading.
            let mut out = Vec::new();
            let (mut rd, mut wr) = s.into_split();
            let reader = tokio::spawn(async move {
                let _ = rd.read_to_end(&mut out).await;
                out
            });
            for b in body {
                if wr.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(gap).await;
            }
            let out = tokio::time::timeout(wait, reader)
                .await
                .expect("the connection is closed")
                .unwrap();
            return (
                String::from_utf8_lossy(&out).into_owned(),
                started.elapsed(),
            );
        }
    }
    let mut out = Vec::new();
    tokio::time::timeout(wait, s.read_to_end(&mut out))
        .await
        .expect("the connection is closed")
        .unwrap();
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

#[track_caller]
fn assert_408(answer: &str) {
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("\r\nconnection: close\r\n"), "{answer}");
    let rid = lower
        .split("\r\nx-request-id: ")
        .nth(1)
        .and_then(|r| r.get(..32))
        .expect("X-Request-Id");
    let (_, body) = answer.split_once("\r\n\r\n").unwrap();
    let e: ecs_api::GatewayErrorBody = serde_json::from_str(body).unwrap();
    assert_eq!(e.error_code, "APIGW.0408");
    assert_eq!(e.request_id, rid);
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_answered_408_and_the_connection_closed() {
    let t = TestServer::start_with(|c| c.request_timeout_secs = 1).await;
    let (a, _) = t.server(&t.project, "a", Linux, true).await;
    let wait = Duration::from_secs(10);
    for path in [
        t.batch_path(),
        "/v3/auth/tokens".to_owned(),
        "/agent/v1/enroll".to_owned(),
    ] {
        let head = format!(
            "PUT {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n",
            t.host
        );
        let head = if path.starts_with("/v1") {
            head
        } else {
            head.replacen("PUT", "POST", 1)
        };
        let (answer, took) = raw_exchange(&t, &head, b"{", None, wait).await;
        assert_408(&answer);
        assert!(took >= Duration::from_millis(900), "{took:?}");
    }
    // A body sent a byte at a time, each in time, but not all of it in time.
    let body = ids_body(Some(GOOD), None, &[&a]);
    let head = format!(
        "PUT {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        t.batch_path(),
        t.host,
        body.len()
    );
    let (answer, took) = raw_exchange(
        &t,
        &head,
        body.as_bytes(),
        Some(Duration::from_millis(100)),
        wait,
    )
    .await;
    assert_408(&answer);
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(rows(&t, "resets"), 0);
    // A head that stops arriving: the connection is closed.
    let (answer, took) =
        raw_exchange(&t, "PUT /v1/x HTTP/1.1\r\nHost: a\r\n", b"", None, wait).await;
    assert!(!answer.starts_with("HTTP/1.1 2"), "{answer}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // The server still answers.
    let r = t
        .call(
            "GET",
            &t.batch_path().replace("os-reset-passwords", "detail"),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

/// The gateway body of an answer read off the wire, checked against its
/// `X-Request-Id` and `Connection: close`; returns (status, error_code).
fn wire_gateway(answer: &str) -> (u16, String) {
    let status: u16 = answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("\r\nconnection: close\r\n"), "{answer}");
    assert!(
        lower.contains("\r\ncontent-type: application/json"),
        "{answer}"
    );
    let rid = lower
        .split("\r\nx-request-id: ")
        .nth(1)
        .and_then(|r| r.get(..32))
        .expect("X-Request-Id");
    let (_, body) = answer.split_once("\r\n\r\n").unwrap();
    let e: ecs_api::GatewayErrorBody = serde_json::from_str(body).unwrap();
    assert_eq!(e.request_id, rid);
    assert!(!e.error_msg.is_empty());
    (status, e.error_code)
}

#[tokio::test]
async fn requests_hyper_refuses_are_answered_in_the_gateway_shape_with_a_request_id() {
    let t = TestServer::start().await;
    let wait = Duration::from_secs(10);
    let many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let huge = format!("X-Huge: {}\r\n", "a".repeat(500 * 1024));
    let cases: Vec<(String, u16)> = vec![
        ("GET /health HTTP/1.1\r\nHost: a\r\nX-Bad: a\x01b\r\n\r\n".into(), 400),
        (
            "POST /agent/v1/ack HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n".into(),
            400,
        ),
        (
            "POST /agent/v1/ack HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n".into(),
            400,
        ),
        (format!("GET /health HTTP/1.1\r\nHost: a\r\n{many}\r\n"), 431),
        (format!("GET /health HTTP/1.1\r\nHost: a\r\n{huge}\r\n"), 431),
        ("GARBAGE\r\n\r\n".into(), 400),
    ];
    for (request, want) in &cases {
        let (answer, _) = raw_exchange(&t, request, b"", None, wait).await;
        let (status, code) = wire_gateway(&answer);
        assert_eq!(status, *want, "{answer}");
        assert_eq!(code, format!("APIGW.0{want}"), "{answer}");
    }
    // The application's own answers are untouched.
    let (answer, _) = raw_exchange(
        &t,
        "GET /nowhere HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"",
        None,
        wait,
    )
    .await;
    assert_eq!(wire_gateway(&answer), (404, "APIGW.0101".to_owned()));
}
