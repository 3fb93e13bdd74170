//! The web console against a real ecsd (issue #14): sign-in and its cookie,
//! the CSP and other headers, CSRF on every API call made with the session
//! cookie, sign-out, idle and absolute expiry, authorization through the
//! console, and the Server-Sent Events streams. The browser end to end is
//! tests/console/ (Playwright driving Debian's chromium).

mod common;

use std::time::Duration;

use common::*;
use ecsd::store::identity::UserRole;

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

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A signed-in browser, as far as the server can tell: the cookie and the
/// CSRF token the page carries.
struct Browser {
    cookie: String,
    csrf: String,
}

async fn sign_in_raw(t: &TestServer, name: &str, password: &str) -> reqwest::Response {
    no_redirects()
        .post(t.url("/console/login"))
        .header("origin", &t.base)
        .form(&[
            ("domain", "default"),
            ("user", name),
            ("password", password),
            ("project", "test"),
        ])
        .send()
        .await
        .unwrap()
}

async fn sign_in(t: &TestServer, name: &str) -> Browser {
    let r = sign_in_raw(t, name, PW).await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/console/servers");
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    let cookie = set.split(';').next().unwrap().to_owned();
    let page = page(t, &cookie, "/console/servers").await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let csrf = html
        .split("<meta name=\"ecsd-csrf\" content=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the page carries its CSRF token")
        .to_owned();
    Browser { cookie, csrf }
}

async fn page(t: &TestServer, cookie: &str, path: &str) -> reqwest::Response {
    no_redirects()
        .get(t.url(path))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
}

/// An API call the way the console's script makes it.
async fn api(
    t: &TestServer,
    b: &Browser,
    csrf: Option<&str>,
    method: reqwest::Method,
    path: &str,
    body: Option<String>,
) -> Resp {
    let mut req = reqwest::Client::new()
        .request(method, t.url(path))
        .header("cookie", &b.cookie);
    if let Some(c) = csrf {
        req = req.header("x-csrf-token", c);
    }
    if let Some(body) = body {
        req = req.header("content-type", "application/json").body(body);
    }
    t.raw(req).await
}

fn list_path(t: &TestServer) -> String {
    format!("/v1/{}/cloudservers/detail", t.project)
}

#[tokio::test]
async fn sign_in_sets_a_strict_session_cookie_and_every_page_a_strict_csp() {
    let t = TestServer::start().await;
    user(&t, "alice", UserRole::Admin).await;
    let login = no_redirects()
        .get(t.url("/console/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    assert_eq!(
        login.headers()["content-security-policy"],
        ecsd::console::CSP
    );
    let csp = ecsd::console::CSP;
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
    let html = login.text().await.unwrap();
    assert!(html.contains("type=\"password\""));
    assert!(!html.contains("<script>") && !html.contains("style="));

    let r = sign_in_raw(&t, "alice", PW).await;
    assert_eq!(r.status(), 303);
    let set = r.headers()["set-cookie"].to_str().unwrap();
    assert!(set.starts_with("__Host-ecsd-session=SES"), "{set}");
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(set.split("; ").any(|a| a == attr), "{attr} in {set}");
    }
    assert!(!set.contains("Domain="), "{set}");

    let b = sign_in(&t, "alice").await;
    for path in [
        "/console/servers",
        "/console/reset",
        "/console/watch",
        "/console/audit",
    ] {
        let r = page(&t, &b.cookie, path).await;
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        assert_eq!(h["content-security-policy"], ecsd::console::CSP, "{path}");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["cache-control"], "no-store");
        assert!(h.contains_key("x-request-id"));
        let html = r.text().await.unwrap();
        assert!(html.contains("<script src=\"/console/assets/console.js\" defer></script>"));
        assert!(!html.contains("<script>") && !html.contains("style="));
        assert!(html.contains("Signed in as <strong>alice</strong>"));
    }
    for (asset, ty) in [
        ("console.js", "text/javascript; charset=utf-8"),
        ("console.css", "text/css; charset=utf-8"),
    ] {
        let r = page(&t, "", &format!("/console/assets/{asset}")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], ty);
        assert_eq!(r.headers()["content-security-policy"], ecsd::console::CSP);
    }
    // Without a session, a page sends the browser to sign in.
    let r = page(&t, "", "/console/servers").await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/console/login");
}

#[tokio::test]
async fn a_wrong_sign_in_is_refused_audited_and_throttled() {
    let t = TestServer::start_with(|c| c.auth_failures_per_minute = 2).await;
    user(&t, "alice", UserRole::Admin).await;
    let r = sign_in_raw(&t, "alice", "wrong-password").await;
    assert_eq!(r.status(), 401);
    assert!(!r.headers().contains_key("set-cookie"));
    let html = r.text().await.unwrap();
    assert!(html.contains("The domain, user name, password or project is wrong."));
    assert!(
        !html.contains("wrong-password"),
        "the password is never echoed"
    );
    let r = t
        .call(
            "GET",
            &format!("/v3/{}/traces?trace_name=console-sign-in", t.project),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let traces: ecs_api::ListTracesResponse = r.json();
    assert_eq!(traces.traces.len(), 1, "{}", r.text);
    assert_eq!(traces.traces[0].code.as_deref(), Some("401"));
    assert!(!r.text.contains("wrong-password"));
    let _ = sign_in_raw(&t, "alice", "wrong-password").await;
    // Over the failure budget: refused before the password is looked at.
    let r = sign_in_raw(&t, "alice", PW).await;
    assert_eq!(r.status(), 429);
    assert!(!r.headers().contains_key("set-cookie"));
}

#[tokio::test]
async fn api_calls_with_the_session_cookie_need_its_csrf_token() {
    let t = TestServer::start().await;
    user(&t, "alice", UserRole::Admin).await;
    let (id, _) = t
        .server(&t.project, "web-1", ecs_policy::OsType::Linux, true)
        .await;
    let b = sign_in(&t, "alice").await;
    let list = list_path(&t);
    let r = api(&t, &b, Some(&b.csrf), reqwest::Method::GET, &list, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let dry = ids_body(Some("Gx7!pLq2vR"), Some(true), &[&id]);
    let r = api(
        &t,
        &b,
        Some(&b.csrf),
        reqwest::Method::PUT,
        &t.batch_path(),
        Some(dry.clone()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // No token, a wrong one, another session's: refused with the gateway
    // body and the request id, on reads too.
    let other = sign_in(&t, "alice").await;
    for csrf in [None, Some("0".repeat(64)), Some(other.csrf.clone())] {
        for (method, path, body) in [
            (reqwest::Method::PUT, t.batch_path(), Some(dry.clone())),
            (reqwest::Method::GET, list.clone(), None),
        ] {
            let r = api(&t, &b, csrf.as_deref(), method, &path, body).await;
            let e = assert_gateway(&r, 403, "APIGW.0302");
            assert_eq!(Some(e.request_id), r.request_id);
        }
    }
    // A forged cross-site form POST: the browser sends the cookie (were it
    // not SameSite=Strict) but cannot add the header.
    let r = t
        .raw(
            reqwest::Client::new()
                .post(t.url(&t.action_path()))
                .header("cookie", &b.cookie)
                .header("origin", "https://evil.example")
                .header("content-type", "application/x-www-form-urlencoded")
                .body("reboot=1"),
        )
        .await;
    let e = assert_gateway(&r, 403, "APIGW.0302");
    assert_eq!(Some(e.request_id), r.request_id);
    // The refusals are in the audit trail, as any denied call.
    let r = t
        .call(
            "GET",
            &format!("/v3/{}/traces?trace_status=fail&limit=50", t.project),
            None,
        )
        .await;
    let traces: ecs_api::ListTracesResponse = r.json();
    assert!(
        traces
            .traces
            .iter()
            .any(|tr| tr.trace_name == "server-action" && tr.code.as_deref() == Some("403")),
        "{}",
        r.text
    );
    // A cross-site sign-in (login CSRF) is refused too.
    let r = no_redirects()
        .post(t.url("/console/login"))
        .header("origin", "https://evil.example")
        .form(&[
            ("domain", "default"),
            ("user", "alice"),
            ("password", PW),
            ("project", "test"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(!r.headers().contains_key("set-cookie"));
    let r = no_redirects()
        .post(t.url("/console/login"))
        .header("origin", &t.base)
        .header("sec-fetch-site", "cross-site")
        .form(&[
            ("domain", "default"),
            ("user", "alice"),
            ("password", PW),
            ("project", "test"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "Sec-Fetch-Site wins over a forged Origin");
    assert!(!r.headers().contains_key("set-cookie"));
}

#[tokio::test]
async fn a_session_is_not_an_api_token_and_an_api_token_is_not_a_session() {
    let t = TestServer::start().await;
    user(&t, "alice", UserRole::Admin).await;
    let b = sign_in(&t, "alice").await;
    let secret = b.cookie.split_once('=').unwrap().1.to_owned();
    let r = t
        .raw(
            reqwest::Client::new()
                .get(t.url(&list_path(&t)))
                .header("x-auth-token", &secret),
        )
        .await;
    assert_gateway(&r, 401, "APIGW.0301");
    let r = t
        .raw(
            reqwest::Client::new()
                .get(t.url(&list_path(&t)))
                .header("cookie", "__Host-ecsd-session=MIInotasession")
                .header("x-csrf-token", &b.csrf),
        )
        .await;
    assert_gateway(&r, 401, "APIGW.0301");
}

#[tokio::test]
async fn sign_out_ends_the_session_everywhere() {
    let t = TestServer::start().await;
    user(&t, "alice", UserRole::Admin).await;
    let b = sign_in(&t, "alice").await;
    // Without its CSRF token, sign-out is refused and the session lives on.
    let r = no_redirects()
        .post(t.url("/console/logout"))
        .header("cookie", &b.cookie)
        .form(&[("csrf", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let list = list_path(&t);
    let r = api(&t, &b, Some(&b.csrf), reqwest::Method::GET, &list, None).await;
    assert_eq!(r.status, 200);
    let r = no_redirects()
        .post(t.url("/console/logout"))
        .header("cookie", &b.cookie)
        .header("origin", &t.base)
        .form(&[("csrf", b.csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/console/login");
    let set = r.headers()["set-cookie"].to_str().unwrap();
    assert!(set.contains("Max-Age=0"), "{set}");
    let r = api(&t, &b, Some(&b.csrf), reqwest::Method::GET, &list, None).await;
    assert_gateway(&r, 401, "APIGW.0301");
    let r = page(&t, &b.cookie, "/console/servers").await;
    assert_eq!(r.status(), 303);
    let r = t
        .call(
            "GET",
            &format!("/v3/{}/traces?trace_name=console-sign-out", t.project),
            None,
        )
        .await;
    let traces: ecs_api::ListTracesResponse = r.json();
    assert_eq!(traces.traces.len(), 1, "{}", r.text);
}

#[tokio::test]
async fn an_idle_session_expires_and_use_keeps_it_alive() {
    let t = TestServer::start_with(|c| {
        c.console_idle_secs = 2;
        c.console_session_secs = 3600;
    })
    .await;
    user(&t, "alice", UserRole::Admin).await;
    let b = sign_in(&t, "alice").await;
    let list = list_path(&t);
    // Used every half second for four seconds: twice the idle period.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = api(&t, &b, Some(&b.csrf), reqwest::Method::GET, &list, None).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = api(&t, &b, Some(&b.csrf), reqwest::Method::GET, &list, None).await;
    let e = assert_gateway(&r, 401, "APIGW.0301");
    assert!(e.error_msg.contains("expired"), "{}", e.error_msg);
}

#[tokio::test]
async fn a_busy_session_still_ends_at_its_absolute_expiry() {
    let t = TestServer::start_with(|c| {
        c.console_idle_secs = 600;
        c.console_session_secs = 2;
    })
    .await;
    user(&t, "alice", UserRole::Admin).await;
    let b = sign_in(&t, "alice").await;
    let list = list_path(&t);
    let started = std::time::Instant::now();
    loop {
        let r = api(&t, &b, Some(&b.csrf), reqwest::Method::GET, &list, None).await;
        if r.status == 401 {
            assert_gateway(&r, 401, "APIGW.0301");
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(started.elapsed() < Duration::from_secs(5), "never expired");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(1500));
}

#[tokio::test]
async fn a_readonly_user_is_refused_a_reset_through_the_console() {
    let t = TestServer::start().await;
    user(&t, "reader", UserRole::ReadOnly).await;
    let (id, _) = t
        .server(&t.project, "web-1", ecs_policy::OsType::Linux, true)
        .await;
    let b = sign_in(&t, "reader").await;
    let r = api(
        &t,
        &b,
        Some(&b.csrf),
        reqwest::Method::PUT,
        &t.batch_path(),
        Some(ids_body(Some("Gx7!pLq2vR"), None, &[&id])),
    )
    .await;
    let e = assert_gateway(&r, 403, "APIGW.0302");
    assert_eq!(Some(e.request_id.clone()), r.request_id);
    let r = api(
        &t,
        &b,
        Some(&b.csrf),
        reqwest::Method::GET,
        &list_path(&t),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    // Denied and recorded as the API call, under the user's name.
    let r = t
        .call(
            "GET",
            &format!("/v3/{}/traces?trace_status=fail&user=reader", t.project),
            None,
        )
        .await;
    let traces: ecs_api::ListTracesResponse = r.json();
    assert_eq!(traces.traces.len(), 1, "{}", r.text);
    assert_eq!(traces.traces[0].request_id, e.request_id);
    assert_eq!(traces.traces[0].code.as_deref(), Some("403"));
}

#[tokio::test]
async fn the_reset_stream_sends_each_change_until_every_server_is_final() {
    let t = TestServer::start().await;
    let f = fleet(&t, 2).await;
    let ids: Vec<String> = f.list().into_iter().map(|s| s.server_id).collect();
    let body = serde_json::json!({
        "new_password": "Gx7!pLq2vR",
        "apply": "now",
        "servers": ids.iter().map(|i| serde_json::json!({"id": i})).collect::<Vec<_>>(),
    })
    .to_string();
    let r = t.call("PUT", &t.batch_path(), Some(&body)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let rid = r.request_id.unwrap();
    let r = t
        .call(
            "GET",
            &format!(
                "/v1/{}/cloudservers/os-reset-passwords/{rid}/events?seconds=60",
                t.project
            ),
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    let outcomes: Vec<ecs_api::ResetOutcome> = r
        .text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect();
    assert!(!outcomes.is_empty(), "{}", r.text);
    let last = outcomes.last().unwrap();
    assert!(last.complete, "{}", r.text);
    assert_eq!(last.summary.applied, 2, "{}", r.text);
    assert!(
        r.text.trim_end().ends_with("event: end\ndata: {}"),
        "{}",
        r.text
    );
    // Unknown ids and bad lifetimes answer as the GET does.
    let r = t
        .call(
            "GET",
            &format!(
                "/v1/{}/cloudservers/os-reset-passwords/{}/events",
                t.project,
                "0".repeat(32)
            ),
            None,
        )
        .await;
    assert_ecs(&r, 400, "Common.0011");
    let r = t
        .call(
            "GET",
            &format!(
                "/v1/{}/cloudservers/os-reset-passwords/{rid}/events?seconds=601",
                t.project
            ),
            None,
        )
        .await;
    assert_ecs(&r, 400, "Ecs.0005");
    f.stop();
}

#[tokio::test]
async fn event_streams_are_capped_per_replica_and_freed_when_closed() {
    let t = TestServer::start_with(|c| c.max_event_streams = 1).await;
    user(&t, "alice", UserRole::Admin).await;
    let (id, _) = t
        .server(&t.project, "web-1", ecs_policy::OsType::Linux, true)
        .await;
    let r = t
        .call(
            "PUT",
            &t.batch_path(),
            Some(&ids_body(Some("Gx7!pLq2vR"), None, &[&id])),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let rid = r.request_id.unwrap();
    let path = format!(
        "/v1/{}/cloudservers/os-reset-passwords/{rid}/events",
        t.project
    );
    // The console's stream (no agent: the reset stays PENDING, the stream open).
    let b = sign_in(&t, "alice").await;
    let open = reqwest::Client::new()
        .get(t.url(&format!("{path}?seconds=60")))
        .header("cookie", &b.cookie)
        .header("x-csrf-token", &b.csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), 200);
    assert_eq!(open.headers()["content-type"], "text/event-stream");
    let r = t.call("GET", &format!("{path}?seconds=0"), None).await;
    assert_gateway(&r, 429, "APIGW.0308");
    drop(open);
    let started = std::time::Instant::now();
    loop {
        let r = t.call("GET", &format!("{path}?seconds=0"), None).await;
        if r.status == 200 {
            assert!(r.text.contains("event: outcome"), "{}", r.text);
            assert!(r.text.contains("\"PENDING\""), "{}", r.text);
            break;
        }
        assert_gateway(&r, 429, "APIGW.0308");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a closed stream's place was not freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A PENDING reset (no agent) and its event stream's path: the stream
/// stays open until its life, its credential or the server ends it.
async fn pending_reset_stream(t: &TestServer) -> String {
    let (id, _) = t
        .server(&t.project, "web-1", ecs_policy::OsType::Linux, true)
        .await;
    let r = t
        .call(
            "PUT",
            &t.batch_path(),
            Some(&ids_body(Some("Gx7!pLq2vR"), None, &[&id])),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    format!(
        "/v1/{}/cloudservers/os-reset-passwords/{}/events?seconds=60",
        t.project,
        r.request_id.unwrap()
    )
}

/// Reads an open stream to its end (at most `within`); the text and how
/// long it took to end.
async fn read_to_end(open: reqwest::Response, within: Duration) -> (String, Duration) {
    let started = std::time::Instant::now();
    let body = tokio::time::timeout(within, open.bytes())
        .await
        .unwrap_or_else(|_| panic!("the stream was still open after {within:?}"))
        .unwrap();
    (String::from_utf8(body.to_vec()).unwrap(), started.elapsed())
}

fn ended_by_its_credential(text: &str) {
    assert!(text.contains("event: outcome"), "{text}");
    assert!(
        text.trim_end()
            .ends_with("event: error\ndata: \"APIGW.0301\""),
        "{text}"
    );
}

#[tokio::test]
async fn a_console_stream_ends_within_seconds_of_its_sign_out() {
    let t = TestServer::start().await;
    user(&t, "alice", UserRole::Admin).await;
    let path = pending_reset_stream(&t).await;
    let b = sign_in(&t, "alice").await;
    let open = reqwest::Client::new()
        .get(t.url(&path))
        .header("cookie", &b.cookie)
        .header("x-csrf-token", &b.csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), 200);
    let reader = tokio::spawn(read_to_end(open, Duration::from_secs(15)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !reader.is_finished(),
        "the stream ended before the sign-out"
    );
    let signed_out = std::time::Instant::now();
    let r = no_redirects()
        .post(t.url("/console/logout"))
        .header("cookie", &b.cookie)
        .header("origin", &t.base)
        .form(&[("csrf", b.csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let (text, _) = reader.await.unwrap();
    let after = signed_out.elapsed();
    assert!(
        after < Duration::from_secs(5),
        "ended {after:?} after the sign-out"
    );
    ended_by_its_credential(&text);
}

#[tokio::test]
async fn a_console_stream_ends_when_its_idle_session_expires() {
    // A stream is no use of the session: it does not keep it alive.
    let t = TestServer::start_with(|c| {
        c.console_idle_secs = 2;
        c.console_session_secs = 3600;
    })
    .await;
    user(&t, "alice", UserRole::Admin).await;
    let path = pending_reset_stream(&t).await;
    let b = sign_in(&t, "alice").await;
    let open = reqwest::Client::new()
        .get(t.url(&path))
        .header("cookie", &b.cookie)
        .header("x-csrf-token", &b.csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), 200);
    let (text, took) = read_to_end(open, Duration::from_secs(15)).await;
    assert!(took < Duration::from_secs(7), "ended after {took:?}");
    ended_by_its_credential(&text);
}

#[tokio::test]
async fn a_token_stream_ends_within_seconds_of_the_tokens_revocation() {
    let t = TestServer::start().await;
    user(&t, "alice", UserRole::Admin).await;
    let path = pending_reset_stream(&t).await;
    let login = serde_json::json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "domain": {"name": "default"}, "name": "alice", "password": PW}}},
        "scope": {"project": {"id": t.project}}
    }})
    .to_string();
    let r = reqwest::Client::new()
        .post(t.url("/v3/auth/tokens"))
        .header("content-type", "application/json")
        .body(login)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let token = r.headers()["x-subject-token"].to_str().unwrap().to_owned();
    let open = reqwest::Client::new()
        .get(t.url(&path))
        .header("x-auth-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), 200);
    let reader = tokio::spawn(read_to_end(open, Duration::from_secs(15)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !reader.is_finished(),
        "the stream ended before the revocation"
    );
    let revoked = std::time::Instant::now();
    let r = reqwest::Client::new()
        .delete(t.url("/v3/auth/tokens"))
        .header("x-auth-token", &token)
        .header("x-subject-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (text, _) = reader.await.unwrap();
    let after = revoked.elapsed();
    assert!(
        after < Duration::from_secs(5),
        "ended {after:?} after the revocation"
    );
    ended_by_its_credential(&text);
}

#[tokio::test]
async fn an_access_key_stream_ends_within_seconds_of_the_keys_disabling() {
    let t = TestServer::start().await;
    let path = pending_reset_stream(&t).await;
    let started = std::time::Instant::now();
    let (r, disabled) = tokio::join!(t.call("GET", &path, None), async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(
            t.state
                .lifecycle
                .set_access_key_enabled(&t.ak, false)
                .await
                .unwrap()
        );
        started.elapsed()
    });
    assert_eq!(r.status, 200, "{}", r.text);
    let after = started.elapsed() - disabled;
    assert!(
        after < Duration::from_secs(5),
        "ended {after:?} after the disabling"
    );
    ended_by_its_credential(&r.text);
}
