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
            new_password: Some(secret(GOOD).into()),
            generate: None,
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

/// One request on an open connection (keep-alive); returns the answer's
/// head and body, or `None` if nothing came within `wait`.
async fn request_on(
    s: &mut tokio::net::TcpStream,
    head: &str,
    wait: Duration,
) -> Option<(String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&out);
            if let Some((h, b)) = text.split_once("\r\n\r\n") {
                let len = h
                    .to_ascii_lowercase()
                    .split("\r\ncontent-length: ")
                    .nth(1)
                    .and_then(|v| v.split("\r\n").next())
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if b.len() >= len {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(wait, read).await.ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (h, b) = text.split_once("\r\n\r\n")?;
    Some((h.to_owned(), b.to_owned()))
}

fn get(path: &str, host: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n")
}

/// The refusal of a connection over `max_connections_per_source`.
#[track_caller]
fn assert_refused_connection(head: &str, body: &str) {
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("\r\nconnection: close"), "{head}");
    assert!(lower.contains("\r\nretry-after: 1"), "{head}");
    let rid = lower
        .split("\r\nx-request-id: ")
        .nth(1)
        .and_then(|r| r.get(..32))
        .expect("X-Request-Id");
    let e: ecs_api::GatewayErrorBody = serde_json::from_str(body).unwrap();
    assert_eq!(e.error_code, "APIGW.0308");
    assert!(e.error_msg.contains("too many connections"), "{body}");
    assert_eq!(e.request_id, rid);
}

#[tokio::test]
async fn a_source_over_its_connection_cap_is_answered_429_and_freed_places_are_reused() {
    let t = TestServer::start_with(|c| c.max_connections_per_source = 3).await;
    let wait = Duration::from_secs(5);
    let health = get("/health", &t.host, "");
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(&t.host).await.unwrap();
        let (h, _) = request_on(&mut s, &health, wait).await.expect("an answer");
        assert!(h.starts_with("HTTP/1.1 200"), "{h}");
        open.push(s);
    }
    // The fourth connection from the same address gets one answer and is closed.
    let mut fourth = tokio::net::TcpStream::connect(&t.host).await.unwrap();
    let (h, b) = request_on(&mut fourth, &health, wait)
        .await
        .expect("an answer");
    assert_refused_connection(&h, &b);
    // The three admitted connections still work.
    for s in &mut open {
        let (h, _) = request_on(s, &health, wait).await.expect("an answer");
        assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    }
    // Closing one frees its place.
    drop(open.pop());
    let deadline = Instant::now() + wait;
    loop {
        let mut s = tokio::net::TcpStream::connect(&t.host).await.unwrap();
        let (h, _) = request_on(&mut s, &health, wait).await.expect("an answer");
        if h.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed connection's place never came back: {h}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_connection_on_which_an_agent_authenticated_stops_counting_against_its_address() {
    let t = TestServer::start_with(|c| c.max_connections_per_source = 2).await;
    let wait = Duration::from_secs(5);
    let dir = tempfile::tempdir().unwrap();
    let tok = token(&t, 1).await;
    let enrolled = enroll(&t.base, &tok, dir.path(), "m-1", "h", "Linux")
        .await
        .unwrap();
    // The agent's long-lived connection: authenticated by its first request.
    let mut agent = tokio::net::TcpStream::connect(&t.host).await.unwrap();
    let poll = get(
        "/agent/v1/work?wait=0",
        &t.host,
        &format!("Authorization: Bearer {}\r\n", enrolled.credential),
    );
    let (h, _) = request_on(&mut agent, &poll, wait)
        .await
        .expect("an answer");
    assert!(h.starts_with("HTTP/1.1 204"), "no work: {h}");
    // Two more connections from the same address are admitted (without the
    // exemption the second would be refused) ...
    let health = get("/health", &t.host, "");
    let mut others = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(&t.host).await.unwrap();
        let (h, _) = request_on(&mut s, &health, wait).await.expect("an answer");
        assert!(h.starts_with("HTTP/1.1 200"), "{h}");
        others.push(s);
    }
    // ... and the cap still holds for the rest.
    let mut third = tokio::net::TcpStream::connect(&t.host).await.unwrap();
    let (h, b) = request_on(&mut third, &health, wait)
        .await
        .expect("an answer");
    assert_refused_connection(&h, &b);
    // The agent's connection keeps working.
    let (h, _) = request_on(&mut agent, &poll, wait)
        .await
        .expect("an answer");
    assert!(h.starts_with("HTTP/1.1 204"), "no work: {h}");
}

#[tokio::test]
async fn an_unknown_agent_credential_does_not_exempt_its_connection() {
    let t = TestServer::start_with(|c| c.max_connections_per_source = 1).await;
    let wait = Duration::from_secs(5);
    let mut s = tokio::net::TcpStream::connect(&t.host).await.unwrap();
    let poll = get(
        "/agent/v1/work?wait=0",
        &t.host,
        "Authorization: Bearer not-a-credential\r\n",
    );
    let (h, _) = request_on(&mut s, &poll, wait).await.expect("an answer");
    assert!(h.starts_with("HTTP/1.1 401"), "{h}");
    let mut other = tokio::net::TcpStream::connect(&t.host).await.unwrap();
    let (h, b) = request_on(&mut other, &get("/health", &t.host, ""), wait)
        .await
        .expect("an answer");
    assert_refused_connection(&h, &b);
}

#[tokio::test]
async fn the_listener_cap_holds_new_connections_until_one_closes() {
    let t = TestServer::start_with(|c| c.max_connections = 2).await;
    let wait = Duration::from_secs(5);
    let health = get("/health", &t.host, "");
    let mut a = tokio::net::TcpStream::connect(&t.host).await.unwrap();
    let mut b = tokio::net::TcpStream::connect(&t.host).await.unwrap();
    for s in [&mut a, &mut b] {
        let (h, _) = request_on(s, &health, wait).await.expect("an answer");
        assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    }
    // The kernel completes the third handshake, but ecsd does not serve it ...
    let mut c = tokio::net::TcpStream::connect(&t.host).await.unwrap();
    assert!(
        request_on(&mut c, &health, Duration::from_millis(500))
            .await
            .is_none(),
        "a third connection was served over max_connections = 2"
    );
    // ... until one of the two closes; then it is (its request was waiting).
    drop(a);
    use tokio::io::AsyncReadExt;
    let mut out = vec![0u8; 4096];
    let n = tokio::time::timeout(wait, c.read(&mut out))
        .await
        .expect("served once a place was free")
        .unwrap();
    let answer = String::from_utf8_lossy(&out[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn an_agent_over_its_request_rate_is_answered_429_with_retry_after_and_others_are_not() {
    let t = TestServer::start_with(|c| c.agent_rate_limit_per_sec = 2).await;
    let dir = tempfile::tempdir().unwrap();
    let tok = token(&t, 2).await;
    let noisy = enroll(&t.base, &tok, &dir.path().join("1"), "m-1", "h1", "Linux")
        .await
        .unwrap();
    let quiet = enroll(&t.base, &tok, &dir.path().join("2"), "m-2", "h2", "Linux")
        .await
        .unwrap();
    let poll = |cred: &str| {
        reqwest::Client::new()
            .get(t.url("/agent/v1/work?wait=0"))
            .bearer_auth(cred)
    };
    let mut statuses = Vec::new();
    let mut refused = None;
    // Rate 2/s: a burst of 8 (AGENT_BURST_FACTOR), then about 2 a second.
    for _ in 0..12 {
        let r = send(poll(&noisy.credential)).await;
        if r.status == 429 && refused.is_none() {
            refused = Some(r.request_id.clone());
            let e = assert_gateway(&r, 429, "APIGW.0308");
            assert_eq!(Some(e.request_id), r.request_id);
        }
        statuses.push(r.status);
    }
    let ok = statuses.iter().filter(|s| **s == 204).count();
    let throttled = statuses.iter().filter(|s| **s == 429).count();
    assert!((8..=9).contains(&ok), "{statuses:?}");
    assert_eq!(ok + throttled, 12, "{statuses:?}");
    let r = poll(&noisy.credential).send().await.unwrap();
    if r.status() == 429 {
        let secs: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=2).contains(&secs), "Retry-After {secs}");
    }
    // Another agent has its own budget.
    assert_eq!(send(poll(&quiet.credential)).await.status, 204);
    // And the noisy one gets its budget back with time.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(send(poll(&noisy.credential)).await.status, 204);
}

#[tokio::test]
async fn unknown_agent_credentials_are_throttled_per_source_before_any_lookup() {
    let t = TestServer::start_with(|c| c.auth_failures_per_minute = 3).await;
    let mut statuses = Vec::new();
    for i in 0..6 {
        let r = send(
            reqwest::Client::new()
                .get(t.url("/agent/v1/work?wait=0"))
                .bearer_auth(format!("guess-{i}")),
        )
        .await;
        statuses.push(r.status);
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429, 429]);
}

/// Each heartbeat tells the agent over how many seconds to spread its
/// reconnect should ecsd go away: the agents long-polling this replica
/// divided by `agent_reconnect_per_sec`, so that after a restart a large
/// fleet comes back at a rate the replica can take.
#[tokio::test]
async fn the_heartbeat_sizes_the_reconnect_spread_to_the_agents_polling() {
    let t = TestServer::start_with(|c| {
        c.agent_reconnect_per_sec = 1;
        c.agent_rate_limit_per_sec = 1000;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let tok = token(&t, 3).await;
    let mut clients = Vec::new();
    for i in 0..3 {
        let e = enroll(
            &t.base,
            &tok,
            &dir.path().join(i.to_string()),
            &format!("m-{i}"),
            "h",
            "Linux",
        )
        .await
        .unwrap();
        clients.push(std::sync::Arc::new(ecs_agent::client::Client::new(
            http(),
            &t.base,
            Some(secret(&e.credential)),
        )));
    }
    let hb = ecs_agent_proto::HeartbeatRequest {
        agent_version: "test".into(),
        boot_id: "boot-1".into(),
        uptime_secs: 1,
        power_driver: false,
        start_up: false,
    };
    let spread = |c: std::sync::Arc<ecs_agent::client::Client>| {
        let hb = hb.clone();
        async move { c.heartbeat(&hb).await.unwrap().reconnect_spread_secs }
    };
    assert_eq!(spread(clients[0].clone()).await, 1, "nobody polling yet");
    // Two agents long-poll; the third's heartbeat now says 2 s.
    let polls: Vec<_> = clients[1..]
        .iter()
        .map(|c| {
            let c = c.clone();
            tokio::spawn(async move { c.work(None, Duration::from_secs(5), false).await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = spread(clients[0].clone()).await;
        if s == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "spread stayed {s} with two agents polling"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // When their polls end, the spread shrinks again.
    for p in polls {
        p.abort();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = spread(clients[0].clone()).await;
        if s == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "spread stayed {s} after the polls ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
