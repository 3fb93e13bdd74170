//! ecsd on PostgreSQL end to end: the real `ecsd serve --dev --database
//! postgres://...` and an in-process server on the PostgreSQL store, each on
//! a schema of its own (dropped afterwards). Batch resets go through the
//! public API and the agents apply them. PostgreSQL must be reachable (see
//! `ecsd::store::postgres::testing`; `ECSD_TEST_POSTGRES=skip` skips).

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use ecs_api::{BatchResetRequest, ResetOutcome, ResetState};
use ecsd::store::postgres::testing::TestSchema;

/// The real ecsd, killed when dropped.
struct Ecsd(Child);

impl Drop for Ecsd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ecsd serve --dev --insecure-http` on `database`; returns it and its
/// credentials file.
fn serve_dev(data: &Path, database: &str) -> (Ecsd, PathBuf) {
    serve_dev_with(data, database, &["--insecure-http"])
}

/// `ecsd serve --dev` on `database` with `extra` serve flags.
fn serve_dev_with(data: &Path, database: &str, extra: &[&str]) -> (Ecsd, PathBuf) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ecsd"))
        .args(["--data-dir", data.to_str().unwrap(), "--database", database])
        .args(["serve", "--dev"])
        .args(extra)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--dev-linux",
            "2",
            "--dev-windows",
            "0",
        ])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(data.with_extension("log")).unwrap())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let creds = loop {
        let Some(line) = lines.next() else {
            let log = std::fs::read_to_string(data.with_extension("log")).unwrap_or_default();
            panic!("ecsd exited before it was ready:\n{log}");
        };
        if let Some(p) = line.unwrap().strip_prefix("credentials: ") {
            break PathBuf::from(p);
        }
    };
    (Ecsd(child), creds)
}

/// Polls `GET /health` of `endpoint` until it answers (or 60 s).
async fn wait_healthy(http: &reqwest::Client, endpoint: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{endpoint}/health")).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{endpoint} never became healthy"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `serve --dev --database postgres://...` writes `replica.toml`, and
/// `ecsd serve --config replica.toml --data-dir <another> --listen
/// <another>` is a second replica of the same dev deployment: the same
/// database, master key, certificate (its clients verify it against the
/// dev CA) and work-signing key. A reset accepted by the second replica is
/// applied by the dev agents, which are connected to the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replica_from_replica_toml_serves_the_same_dev_deployment() {
    let Some(schema) = TestSchema::create() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_a, creds) = serve_dev_with(&data, &schema.url, &[]);
    let creds: ecsd::dev::DevCredentials =
        serde_json::from_slice(&std::fs::read(creds).unwrap()).unwrap();
    assert!(creds.endpoint.starts_with("https://"), "{}", creds.endpoint);
    let replica_toml = data.join("replica.toml");
    let text = std::fs::read_to_string(&replica_toml).expect("replica.toml beside the credentials");
    assert!(text.contains(&schema.url), "{text}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&replica_toml)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "replica.toml may hold a database password"
        );
    }
    // The second replica, on its own data directory and address.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let b_data = dir.path().join("b");
    let b_log = std::fs::File::create(dir.path().join("b.log")).unwrap();
    let _b = Ecsd(
        Command::new(env!("CARGO_BIN_EXE_ecsd"))
            .args(["--config", replica_toml.to_str().unwrap()])
            .args(["--data-dir", b_data.to_str().unwrap()])
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(b_log)
            .spawn()
            .unwrap(),
    );
    let b = format!("https://127.0.0.1:{port}");
    let ca = std::fs::read(creds.ca_file.as_ref().expect("--dev serves HTTPS")).unwrap();
    let verified = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap();
    wait_healthy(&verified, &b).await;
    let mut config = ecs_client::Config::new(&b, &creds.project_id, &creds.ak, secret(&creds.sk));
    config.trust = ecs_client::Trust::SystemAnd(ca);
    let client = ecs_client::Client::new(config).unwrap();
    let ids: Vec<&str> = creds.servers.iter().map(|s| s.id.as_str()).collect();
    let req = BatchResetRequest {
        apply: Some("now".into()),
        ..reset_request(Some("Rp7!cQx2mW"), None, &ids)
    };
    let reply = client
        .call::<serde_json::Value>(
            reqwest::Method::PUT,
            "/cloudservers/os-reset-passwords",
            Some(&req),
        )
        .await
        .expect("the second replica accepts the batch reset");
    let rid = reply.request_id;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let o = client
            .call::<ResetOutcome>(
                reqwest::Method::GET,
                &format!("/cloudservers/os-reset-passwords/{rid}"),
                None::<&()>,
            )
            .await
            .unwrap()
            .body;
        if o.servers.iter().all(|s| s.state == ResetState::Applied) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{o:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for e in std::fs::read_dir(&creds.fleet_dir).unwrap() {
        let root = e.unwrap().path();
        if root.join("etc/shadow").exists() {
            assert!(verifies(&root_hash(&root), "Rp7!cQx2mW"), "{root:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_ecsd_on_postgres_resets_its_dev_fleet_through_the_api() {
    let Some(schema) = TestSchema::create() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_ecsd, creds) = serve_dev(&data, &schema.url);
    let creds: ecsd::dev::DevCredentials =
        serde_json::from_slice(&std::fs::read(creds).unwrap()).unwrap();
    let client = ecs_client::Client::new(ecs_client::Config::new(
        &creds.endpoint,
        &creds.project_id,
        &creds.ak,
        secret(&creds.sk),
    ))
    .unwrap();
    let ids: Vec<&str> = creds.servers.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids.len(), 2);
    let req = BatchResetRequest {
        apply: Some("now".into()),
        ..reset_request(Some("Pg5!tRw8qZ"), None, &ids)
    };
    let reply = client
        .call::<serde_json::Value>(
            reqwest::Method::PUT,
            "/cloudservers/os-reset-passwords",
            Some(&req),
        )
        .await
        .expect("the batch reset is accepted");
    let rid = reply.request_id;
    let mut last = None;
    for _ in 0..600 {
        let o = client
            .call::<ResetOutcome>(
                reqwest::Method::GET,
                &format!("/cloudservers/os-reset-passwords/{rid}"),
                None::<&()>,
            )
            .await
            .unwrap()
            .body;
        if o.servers.iter().all(|s| s.state == ResetState::Applied) {
            last = Some(o);
            break;
        }
        last = Some(o);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let o = last.unwrap();
    assert!(
        o.servers.iter().all(|s| s.state == ResetState::Applied),
        "{o:?}"
    );
    let mut roots = 0;
    for e in std::fs::read_dir(&creds.fleet_dir).unwrap() {
        let root = e.unwrap().path();
        if root.join("etc/shadow").exists() {
            assert!(verifies(&root_hash(&root), "Pg5!tRw8qZ"), "{root:?}");
            roots += 1;
        }
    }
    assert_eq!(roots, 2);
    // The data is in PostgreSQL, in this test's schema: the reset is there.
    let store = schema.store();
    let found = ecsd::store::Store::reset_outcome(&store, &creds.project_id, &rid)
        .await
        .unwrap()
        .expect("stored in PostgreSQL");
    assert_eq!(found.targets.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_ecsd_on_postgres_resets_and_keeps_its_data_across_a_restart() {
    let Some(schema) = TestSchema::create() else {
        return;
    };
    let url = schema.url.clone();
    let mut t = TestServer::start_with(|c| c.database = Some(url)).await;
    let f = fleet(&t, 2).await;
    let servers = f.list();
    let ids: Vec<&str> = servers.iter().map(|s| s.server_id.as_str()).collect();
    let req = BatchResetRequest {
        apply: Some("now".into()),
        ..reset_request(Some("Qm4@vXe9pL"), None, &ids)
    };
    let r = t.call("PUT", &t.batch_path(), Some(&body(&req))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let rid = r.request_id.unwrap();
    let mut states = vec![];
    for _ in 0..600 {
        states = t
            .outcome(&rid)
            .await
            .servers
            .iter()
            .map(|s| s.state)
            .collect::<Vec<_>>();
        if states == [ResetState::Applied, ResetState::Applied] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(states, [ResetState::Applied, ResetState::Applied]);
    for s in &servers {
        assert!(verifies(&root_hash(&s.root), "Qm4@vXe9pL"));
    }
    f.stop();
    // Another ecsd process on the same database sees everything.
    t.restart_with(|_| {}).await;
    let o = t.outcome(&rid).await;
    assert_eq!(o.servers.len(), 2);
    assert!(o.servers.iter().all(|s| s.state == ResetState::Applied));
    assert!(t.db_path().to_str().is_some());
    assert!(!t.db_path().exists(), "no SQLite file was made");
}

/// A second replica of `t`: the same configuration (database, master key)
/// on another port; stopped when the returned sender is dropped.
async fn replica(t: &TestServer) -> (String, tokio::sync::oneshot::Sender<()>) {
    let (base, _, stop) = replica_state(t).await;
    (base, stop)
}

/// [`replica`], with its state.
async fn replica_state(
    t: &TestServer,
) -> (
    String,
    ecsd::state::AppState,
    tokio::sync::oneshot::Sender<()>,
) {
    let config = ecsd::config::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..(*t.state.config).clone()
    };
    let state = ecsd::server::open_state(config).unwrap();
    let server = ecsd::server::Server::bind(state.clone()).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = server
            .run(async {
                let _ = rx.await;
            })
            .await;
    });
    (base, state, tx)
}

/// The replicas among `states` running the housekeeping now.
fn housekeepers(states: &[&ecsd::state::AppState]) -> Vec<usize> {
    states
        .iter()
        .enumerate()
        .filter(|(_, s)| s.housekeeper.load(std::sync::atomic::Ordering::Relaxed))
        .map(|(i, _)| i)
        .collect()
}

/// Waits (up to 15 s) until exactly one of `states` runs the housekeeping.
async fn one_housekeeper(states: &[&ecsd::state::AppState]) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let h = housekeepers(states);
        if h.len() == 1 {
            return h[0];
        }
        assert!(
            std::time::Instant::now() < deadline,
            "housekeepers: {h:?} (want exactly one)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The job sweeper and retention run on one replica at a time (a
/// PostgreSQL advisory lock held by that replica's session); when it stops,
/// another takes over within a sweep period, and a timed-out power job is
/// still failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_at_a_time_sweeps_jobs_and_another_takes_over_when_it_stops() {
    let Some(schema) = TestSchema::create() else {
        return;
    };
    let url = schema.url.clone();
    let a = TestServer::start_with(|c| {
        c.database = Some(url);
        c.job_timeout_secs = 2;
    })
    .await;
    let mut a = a;
    let (base_b, b, stop_b) = replica_state(&a).await;
    let (_c, c, stop_c) = replica_state(&a).await;
    let first = one_housekeeper(&[&a.state, &b, &c]).await;
    // It stays one for a few sweep periods.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(housekeepers(&[&a.state, &b, &c]), vec![first]);
    }
    // Stop the housekeeper: a replica that stops ends its database session.
    let mut stops = vec![Some(stop_b), Some(stop_c)];
    if first == 0 {
        a.stop().await;
        // The rest of the test goes through replica b (same database).
        a.host = base_b.trim_start_matches("http://").to_owned();
        a.base = base_b;
    } else {
        drop(stops[first - 1].take());
    }
    let (remaining, names): (Vec<&ecsd::state::AppState>, [&str; 2]) = match first {
        0 => (vec![&b, &c], ["b", "c"]),
        1 => (vec![&a.state, &c], ["a", "c"]),
        _ => (vec![&a.state, &b], ["a", "b"]),
    };
    let next = one_housekeeper(&remaining).await;
    eprintln!(
        "housekeeping moved from replica {} to replica {}",
        ["a", "b", "c"][first],
        names[next]
    );
    // The new housekeeper sweeps: a power job whose agent never answers is
    // failed after job_timeout_secs.
    let dir = tempfile::tempdir().unwrap();
    let e = enroll(
        &a.base,
        &token(&a, 1).await,
        dir.path(),
        "m-j",
        "h",
        "Linux",
    )
    .await
    .unwrap();
    ecs_agent::client::Client::new(common::http(), &a.base, Some(secret(&e.credential)))
        .heartbeat(&ecs_agent_proto::HeartbeatRequest {
            agent_version: "test".into(),
            boot_id: "b".into(),
            uptime_secs: 1,
            power_driver: false,
            start_up: false,
        })
        .await
        .unwrap();
    let r = a
        .call(
            "POST",
            &format!("/v1/{}/cloudservers/action", a.project),
            Some(&format!(
                r#"{{"os-stop":{{"type":"SOFT","servers":[{{"id":"{}"}}]}}}}"#,
                e.server_id
            )),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let job: ecs_api::JobResult = r.json();
    let j = wait_job(&a, &job.job_id).await;
    assert_eq!(j.status, ecs_api::JobStatus::Fail, "{j:?}");
    drop(stops);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_accepted_by_one_replica_wakes_an_agent_polling_another() {
    let Some(schema) = TestSchema::create() else {
        return;
    };
    let url = schema.url.clone();
    let a = TestServer::start_with(|c| c.database = Some(url)).await;
    let (b, _stop_b) = replica(&a).await;
    let dir = tempfile::tempdir().unwrap();
    let enrolled = enroll(
        &a.base,
        &token(&a, 1).await,
        dir.path(),
        "m-1",
        "h",
        "Linux",
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    // Give replica B's LISTEN connection a moment to be up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut latencies = Vec::new();
    let mut have = String::new();
    for round in 0..5 {
        // The agent long-polls replica B (up to 20 s) for work newer than
        // what it has ...
        let poll = http
            .get(format!("{b}/agent/v1/work?wait=20&have={have}"))
            .bearer_auth(&enrolled.credential)
            .send();
        let poll = tokio::spawn(async move {
            let r = poll.await.unwrap();
            let at = std::time::Instant::now();
            (r.status().as_u16(), r.text().await.unwrap(), at)
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        // ... and the reset is accepted by replica A.
        let password = format!("Qm4@vXe9p{round}");
        let r = a
            .call(
                "PUT",
                &a.batch_path(),
                Some(&ids_body(Some(&password), None, &[&enrolled.server_id])),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let accepted = std::time::Instant::now();
        let (status, text, woke) = tokio::time::timeout(Duration::from_secs(10), poll)
            .await
            .expect("the poll on replica B returned well before its 20 s")
            .unwrap();
        assert_eq!(status, 200, "{text}");
        let p: ecs_agent_proto::Poll = serde_json::from_str(&text).unwrap();
        let rid = r.request_id.unwrap();
        assert_eq!(p.reset.expect("reset work").request_id, rid);
        have = rid;
        latencies.push(woke.saturating_duration_since(accepted));
    }
    latencies.sort();
    eprintln!("cross-replica wake-up after the 200 of replica A: {latencies:?}");
    assert!(
        latencies[latencies.len() - 1] < Duration::from_secs(1),
        "{latencies:?}"
    );
}

/// The console's sessions live in the shared database: signed in through
/// one replica, used through another, signed out there, refused on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_session_works_on_every_replica_and_ends_on_all() {
    let Some(schema) = TestSchema::create() else {
        return;
    };
    let url = schema.url.clone();
    let a = TestServer::start_with(|c| c.database = Some(url)).await;
    let (b, _stop_b) = replica(&a).await;
    ecsd::admin::create_user(
        &a.state,
        "default",
        "alice",
        &secret("Correct-Horse-9"),
        Some(ecsd::store::identity::UserRole::Admin),
        Some(&a.project),
    )
    .await
    .unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = http
        .post(format!("{}/console/login", a.base))
        .form(&[
            ("domain", "default"),
            ("user", "alice"),
            ("password", "Correct-Horse-9"),
            ("project", "test"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    // The page on replica B carries the same session's CSRF token.
    let html = http
        .get(format!("{b}/console/servers"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = html
        .split("<meta name=\"ecsd-csrf\" content=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("replica B knows the session")
        .to_owned();
    let list = format!("/v1/{}/cloudservers/detail", a.project);
    let get = |base: String| {
        let (cookie, csrf, list) = (cookie.clone(), csrf.clone(), list.clone());
        async move {
            send(
                reqwest::Client::new()
                    .get(format!("{base}{list}"))
                    .header("cookie", cookie)
                    .header("x-csrf-token", csrf),
            )
            .await
        }
    };
    assert_eq!(get(a.base.clone()).await.status, 200);
    assert_eq!(get(b.clone()).await.status, 200);
    let r = http
        .post(format!("{b}/console/logout"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_gateway(&get(a.base.clone()).await, 401, "APIGW.0301");
    assert_gateway(&get(b.clone()).await, 401, "APIGW.0301");
}
