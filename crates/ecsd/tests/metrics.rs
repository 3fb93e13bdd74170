//! `GET /metrics` (issue #12): scraped for real, and the counters move with
//! the work done between two scrapes: a batch reset applied by real agent
//! code, a failed authentication, a power job.

mod common;

use std::time::Duration;

use common::*;
use ecs_api::ResetState;

/// The sum of the samples of `name` whose labels contain every one of
/// `labels` (e.g. `state="applied"`).
fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, r)) => (m, r),
                None => (series, ""),
            };
            (metric == name && labels.iter().all(|want| rest.contains(want)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

async fn scrape(base: &str) -> (u16, String, String) {
    let r = reqwest::get(format!("{base}/metrics")).await.unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ct, r.text().await.unwrap())
}

async fn wait_applied(t: &TestServer, rid: &str, n: usize) {
    for _ in 0..300 {
        let o = t.outcome(rid).await;
        if o.servers
            .iter()
            .filter(|s| s.state == ResetState::Applied)
            .count()
            == n
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never {n} APPLIED: {:?}", t.outcome(rid).await);
}

#[tokio::test]
async fn a_scrape_shows_the_counters_move_with_resets_agents_and_failures() {
    let t = TestServer::start().await;
    let f = fleet(&t, 2).await;
    let (status, ct, before) = scrape(&t.base).await;
    assert_eq!(status, 200, "{before}");
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    assert!(before.trim_end().ends_with("# EOF"));
    // The fleet is counted by version, up.
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        sample(
            &before,
            "ecsd_agents",
            &[&format!("version=\"{version}\""), "status=\"up\""]
        ),
        2.0,
        "{before}"
    );

    let ids: Vec<String> = f.list().into_iter().map(|s| s.server_id).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let r = t
        .call(
            "PUT",
            &t.batch_path(),
            Some(&ids_body(Some("Gx7!pLq2vR"), None, &refs)),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let rid = r.request_id.clone().unwrap();
    for s in f.list() {
        f.restart(&s.name).await.unwrap();
    }
    wait_applied(&t, &rid, 2).await;
    // A failed authentication.
    let bad = t
        .call_as(
            &t.ak,
            "not-the-secret-key",
            "GET",
            &format!("/v1/{}/cloudservers/detail", t.project),
            None,
            &[],
        )
        .await;
    assert_eq!(bad.status, 401, "{}", bad.text);

    let (_, _, after) = scrape(&t.base).await;
    let delta =
        |name: &str, labels: &[&str]| sample(&after, name, labels) - sample(&before, name, labels);
    assert_eq!(delta("ecsd_resets_total", &[]), 1.0, "{after}");
    assert_eq!(
        delta("ecsd_reset_targets_total", &["state=\"accepted\""]),
        2.0
    );
    assert!(delta("ecsd_reset_targets_total", &["state=\"delivered\""]) >= 2.0);
    assert_eq!(
        delta("ecsd_reset_targets_total", &["state=\"applied\""]),
        2.0
    );
    assert_eq!(delta("ecsd_reset_apply_duration_seconds_count", &[]), 2.0);
    assert_eq!(delta("ecsd_seal_duration_seconds_count", &[]), 1.0);
    assert!(delta("ecsd_store_duration_seconds_count", &["op=\"write\""]) >= 3.0);
    assert_eq!(delta("ecsd_auth_failures_total", &["api=\"public\""]), 1.0);
    // Requests by route template (never by raw path) and status.
    let route = "route=\"/v1/{project_id}/cloudservers/os-reset-passwords\"";
    assert_eq!(
        delta(
            "ecsd_http_requests_total",
            &["method=\"PUT\"", route, "status=\"200\""]
        ),
        1.0
    );
    assert!(
        !after.contains(&t.project),
        "a project id became a label value"
    );
    assert_eq!(
        delta(
            "ecsd_http_request_duration_seconds_count",
            &["method=\"PUT\"", route]
        ),
        1.0
    );
    assert!(delta("ecsd_http_requests_total", &["status=\"401\""]) >= 1.0);
    // The agents' long polls are open on this replica.
    assert!(sample(&after, "ecsd_agents_polling", &[]) >= 1.0, "{after}");
}

#[tokio::test]
async fn power_sub_jobs_are_counted_when_accepted_and_when_done() {
    let t = TestServer::start().await;
    let f = fleet(&t, 1).await;
    let id = f.list()[0].server_id.clone();
    let (_, _, before) = scrape(&t.base).await;
    let r = t
        .call(
            "POST",
            &t.action_path(),
            Some(&format!(
                r#"{{"reboot": {{"type": "SOFT", "servers": [{{"id": "{id}"}}]}}}}"#
            )),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let job: ecs_api::JobResult = r.json();
    let done = wait_job(&t, &job.job_id).await;
    let (_, _, after) = scrape(&t.base).await;
    let delta = |labels: &[&str]| {
        sample(&after, "ecsd_power_sub_jobs_total", labels)
            - sample(&before, "ecsd_power_sub_jobs_total", labels)
    };
    assert_eq!(delta(&["state=\"accepted\""]), 1.0, "{after}");
    let finished = delta(&["state=\"success\""]) + delta(&["state=\"fail\""]);
    assert_eq!(finished, 1.0, "job {:?}: {after}", done.status);
}

#[tokio::test]
async fn metrics_are_for_loopback_clients_on_the_api_listener() {
    // A non-loopback address of this machine to connect from, if it has one.
    let Some(ip) = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("192.0.2.200:9")?;
            s.local_addr()
        })
        .ok()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
    else {
        eprintln!("SKIPPED: this machine has no non-loopback address to connect from");
        return;
    };
    let t = TestServer::start_with(|c| {
        c.listen = "0.0.0.0:0".parse().unwrap();
        c.insecure_http_non_loopback = true;
    })
    .await;
    let port = t.host.rsplit_once(':').unwrap().1;
    let r = send(reqwest::Client::new().get(format!("http://{ip}:{port}/metrics"))).await;
    let e = assert_gateway(&r, 403, "APIGW.0302");
    assert!(e.error_msg.contains("loopback"), "{}", r.text);
    // From loopback it answers.
    let (status, _, _) = scrape(&format!("http://127.0.0.1:{port}")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn metrics_listen_serves_metrics_on_its_own_address_only() {
    let t =
        TestServer::start_with(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let addr = t.metrics_addr.expect("metrics_listen bound");
    let (status, ct, text) = scrape(&format!("http://{addr}")).await;
    assert_eq!(status, 200, "{text}");
    assert!(ct.starts_with("application/openmetrics-text"));
    assert!(text.contains("# TYPE ecsd_http_requests counter"), "{text}");
    // Nothing else there (not the API: read without the contract check).
    let r = reqwest::get(format!("http://{addr}/health")).await.unwrap();
    assert_eq!(r.status(), 404);
    let e: ecs_api::GatewayErrorBody = r.json().await.unwrap();
    assert_eq!(e.error_code, "APIGW.0101");
    // And not on the API listener any more.
    let r = send(reqwest::Client::new().get(t.url("/metrics"))).await;
    assert_gateway(&r, 404, "APIGW.0101");
}

/// On PostgreSQL every store call is timed (`op="call"`: from asking the
/// pool for a connection to giving it back). (`ecsd_housekeeper` is
/// process-wide and every SQLite test server in this binary sets it, so it
/// is checked through each replica's state in tests/postgres.rs.)
#[tokio::test]
async fn on_postgres_store_calls_are_timed() {
    let Some(schema) = ecsd::store::postgres::testing::TestSchema::create() else {
        return;
    };
    let url = schema.url.clone();
    let t = TestServer::start_with(|c| c.database = Some(url)).await;
    let (_, _, before) = scrape(&t.base).await;
    let r = t
        .call(
            "GET",
            &format!("/v1/{}/cloudservers/detail", t.project),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let (_, _, after) = scrape(&t.base).await;
    let calls = |text: &str| sample(text, "ecsd_store_duration_seconds_count", &["op=\"call\""]);
    assert!(
        calls(&after) - calls(&before) >= 2.0,
        "an authenticated listing is at least two store calls (key, servers): {after}"
    );
}
