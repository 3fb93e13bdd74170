//! ecsd replicas on one PostgreSQL (issue 12), the real `ecsd` binary as
//! child processes (`ecsd --database URL serve --insecure-http`, the same
//! `ECSD_MASTER_KEY`), one schema of their own (dropped afterwards):
//!
//! 1. sustained signed batch resets (`PUT .../os-reset-passwords`) with one
//!    replica, then with three, the same clients spread over the replicas
//!    (worker `w` calls replica `w % replicas`); `BENCH_LOAD_SECS` (default
//!    10) per line;
//! 2. wake-up latency: an agent long-polls replica B (`GET /agent/v1/work?wait=20`)
//!    while a reset is accepted by replica A; the time from A's 200 to B's
//!    answer (PostgreSQL `NOTIFY`), against the same with the poll on A
//!    itself; `BENCH_WAKE_N` (default 200) samples of each, interleaved.
//!
//! Skipped when PostgreSQL is not reachable (`ECSD_TEST_POSTGRES` as the
//! tests; `=skip` skips).
//!
//! `cargo bench -p ecsd --bench pg_replicas`

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ecsd::config::Config;
use ecsd::secrets::MasterKey;
use ecsd::store::Role;
use ecsd::store::postgres::PgStore;
use secrecy::{ExposeSecret, SecretString};

mod support;
use support::{Api, quantile_ms};

const SERVERS: usize = 1000;
const PASSWORD: &str = "Gx7!pLq2vR";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// One `ecsd serve` child process; killed when dropped.
struct Replica {
    child: Child,
    base: String,
    _data: tempfile::TempDir,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `ecsd --database URL serve --insecure-http --listen 127.0.0.1:PORT`,
/// returned once it answers `/health` (a port taken meanwhile: another).
async fn replica(url: &str, key: &SecretString) -> Replica {
    let http = reqwest::Client::new();
    for _ in 0..5 {
        let data = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let mut child = Command::new(env!("CARGO_BIN_EXE_ecsd"))
            .arg("--data-dir")
            .arg(data.path())
            .args(["--database", url])
            .args(["serve", "--insecure-http", "--listen", &addr])
            .env("ECSD_MASTER_KEY", key.expose_secret())
            // The load is one access key and one agent from 127.0.0.1.
            .env("ECSD_RATE_LIMIT_PER_SEC", "1000000")
            .env("ECSD_AGENT_RATE_LIMIT_PER_SEC", "1000000")
            .env("ECSD_MAX_CONNECTIONS_PER_SOURCE", "0")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let base = format!("http://{addr}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("{base}/health")).send().await
                && r.status() == 200
            {
                return Replica {
                    child,
                    base,
                    _data: data,
                };
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "ecsd did not start in 30 s");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    panic!("ecsd exited at start five times");
}

/// `conc` workers sending batch resets of `batch` servers for `secs`
/// seconds, worker `w` to `apis[w % apis.len()]`: (latencies, non-200s).
async fn load(
    apis: &[Api],
    ids: &Arc<Vec<String>>,
    batch: usize,
    conc: usize,
    secs: u64,
) -> (Vec<Duration>, usize) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for w in 0..conc {
        let api = apis[w % apis.len()].clone();
        let ids = ids.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            let mut i = 0usize;
            while Instant::now() < deadline {
                // Disjoint slices per worker when the batch allows (as http_load).
                let start =
                    ((w * 7919 + i * batch) % (ids.len() - batch + 1)).min(ids.len() - batch);
                let started = Instant::now();
                let r = api
                    .send(api.reset(&ids[start..start + batch], PASSWORD))
                    .await;
                if r.status != 200 {
                    errors += 1;
                }
                lat.push(started.elapsed());
                i += 1;
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    all.sort();
    (all, errors)
}

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// One wake-up: the agent long-polls `poll_base`, the reset is accepted by
/// `reset_api`. (ms from the 200 to the poll's answer — negative when the
/// poll answered first —, ms from sending the PUT to the poll's answer, the
/// request id delivered.)
async fn wake_once(
    http: &reqwest::Client,
    poll_base: &str,
    credential: &str,
    have: &str,
    reset_api: &Api,
    server_id: &str,
) -> (f64, f64, String) {
    let poll = http
        .get(format!("{poll_base}/agent/v1/work?wait=20&have={have}"))
        .bearer_auth(credential)
        .send();
    let poll = tokio::spawn(async move {
        let r = poll.await.unwrap();
        let at = Instant::now();
        (r.status().as_u16(), r.text().await.unwrap(), at)
    });
    // Time for the poll to be parked on its replica.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent = Instant::now();
    let r = reset_api
        .send(reset_api.reset(&[server_id.to_owned()], PASSWORD))
        .await;
    let accepted = Instant::now();
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let (status, text, woke) = tokio::time::timeout(Duration::from_secs(15), poll)
        .await
        .expect("the long poll answered well before its 20 s")
        .unwrap();
    assert_eq!(status, 200, "{text}");
    let p: ecs_agent_proto::Poll = serde_json::from_str(&text).unwrap();
    let rid = p.reset.expect("reset work").request_id;
    assert_eq!(rid, r.request_id, "the poll delivered this reset");
    let signed_ms = |a: Instant, b: Instant| match b.checked_duration_since(a) {
        Some(d) => d.as_secs_f64() * 1e3,
        None => -(a.duration_since(b).as_secs_f64() * 1e3),
    };
    (signed_ms(accepted, woke), signed_ms(sent, woke), rid)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let secs = env_or("BENCH_LOAD_SECS", 10);
    let wake_n = env_or("BENCH_WAKE_N", 200) as usize;
    let Some(schema) = support::pg_schema() else {
        return;
    };
    let url = schema.url.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // The fixture, in process on the same schema with the same master
        // key (the replicas migrate nothing more: it is done here).
        let key = MasterKey::generate_base64();
        let config = Config {
            database: Some(url.clone()),
            ..Config::default()
        };
        let store = PgStore::connect(&url, 4).await.unwrap();
        let state = ecsd::state::AppState::new(
            Arc::new(store),
            MasterKey::from_base64(&key).unwrap(),
            config,
        );
        let started = Instant::now();
        let project = ecsd::admin::create_project(&state, "replicas")
            .await
            .unwrap();
        let (ak, sk) = ecsd::admin::create_access_key(&state, &project.id, Role::Admin)
            .await
            .unwrap();
        let ids = support::register_servers(&state, &project.id, SERVERS).await;
        let ids = Arc::new(ids);
        eprintln!(
            "{SERVERS} servers registered in {:?}",
            started.elapsed()
        );
        let api = |base: &str| Api::new(base, &project.id, &ak, sk.expose_secret(), None);

        let mut replicas = vec![replica(&url, &key).await];
        println!(
            "| replicas | batch size | concurrency | requests | requests/s | server resets/s | p50 ms | p99 ms | non-200 | load avg (1/5/15 min) |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        let scenarios = [(1usize, 6usize), (100, 6)];
        for n in [1usize, 3] {
            while replicas.len() < n {
                replicas.push(replica(&url, &key).await);
            }
            let apis: Vec<Api> = replicas.iter().map(|r| api(&r.base)).collect();
            for (batch, conc) in scenarios {
                // A second of warm-up (connections, prepared statements).
                let _ = load(&apis, &ids, batch, conc, 1).await;
                let (lat, errors) = load(&apis, &ids, batch, conc, secs).await;
                let rps = lat.len() as f64 / secs as f64;
                println!(
                    "| {n} | {batch} | {conc} | {} | {rps:.1} | {:.0} | {:.1} | {:.1} | {errors} | {} |",
                    lat.len(),
                    rps * batch as f64,
                    quantile_ms(&lat, 0.5),
                    quantile_ms(&lat, 0.99),
                    load_avg()
                );
            }
        }

        // Wake-up latency: one agent, enrolled through replica A.
        let dir = tempfile::tempdir().unwrap();
        let token = ecsd::api::issue_enroll_token(&state, &project.id, 1, 600)
            .await
            .unwrap()
            .token;
        let enrolled = ecs_agent::agent::enroll(ecs_agent::agent::EnrollParams {
            endpoint: &replicas[0].base,
            token: &SecretString::from(token),
            trust: ecs_agent::agent::EnrollTrust::PlainLoopback,
            state_dir: dir.path(),
            machine_id: "wake-1",
            hostname: "wake",
            os_type: "Linux",
        })
        .await
        .unwrap();
        let a = api(&replicas[0].base);
        let http = reqwest::Client::new();
        let mut have = String::new();
        // [same replica, other replica]: (after the 200, after the PUT was sent)
        let mut samples: [(Vec<f64>, Vec<f64>); 2] = Default::default();
        // A few unmeasured rounds first (connections, the LISTEN session).
        for i in 0..(wake_n + 5) * 2 {
            let poll_base = &replicas[i % 2].base;
            let (after_200, after_put, rid) = wake_once(
                &http,
                poll_base,
                &enrolled.credential,
                &have,
                &a,
                &enrolled.server_id,
            )
            .await;
            have = rid;
            if i >= 10 {
                samples[i % 2].0.push(after_200);
                samples[i % 2].1.push(after_put);
            }
        }
        println!();
        println!(
            "| poll on | reset accepted by | samples | wake-up after A's 200: p50 ms | p99 ms | max ms | answered before the 200 | from sending the PUT: p50 ms | p99 ms | load avg |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for (i, (after_200, after_put)) in samples.iter_mut().enumerate() {
            after_200.sort_by(f64::total_cmp);
            after_put.sort_by(f64::total_cmp);
            println!(
                "| {} | A | {} | {:.2} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {} |",
                if i == 0 { "A (same replica)" } else { "B (other replica)" },
                after_200.len(),
                quantile(after_200, 0.5),
                quantile(after_200, 0.99),
                after_200.last().copied().unwrap_or(f64::NAN),
                after_200.iter().filter(|v| **v < 0.0).count(),
                quantile(after_put, 0.5),
                quantile(after_put, 0.99),
                load_avg()
            );
        }
        drop(replicas);
        drop(state);
    });
    drop(rt);
    drop(schema);
}
