//! The soak (issue #11): the real `ecsd` binary (`serve --dev`, HTTPS) with a
//! simulated fleet of agents long-polling it, driven at saturation for
//! BENCH_SOAK_SECS (default 600) by concurrent signed clients: single-server
//! resets (each superseding the server's previous one, which the agent then
//! fetches), a batch reset of the whole fleet every few seconds, and server
//! listings. Every BENCH_SOAK_REPORT_SECS (default 30) it prints the window's
//! requests, errors, p50/p99, ecsd's RSS and CPU, and the database and WAL
//! sizes; at the end the totals and the rows kept.
//!
//! `cargo bench -p ecsd --bench soak` (BENCH_SOAK_SECS, BENCH_SOAK_REPORT_SECS,
//! BENCH_SOAK_CLIENTS (default 8), BENCH_SOAK_SERVERS (default 200))

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ecs_agent::simulate::{Fleet, FleetSpec};
use ecs_api::{ResetPasswordOption, SingleResetRequest};
use secrecy::SecretString;
use support::process::{Ecsd, cpu_secs};

const PASSWORD: &str = "Ns4]kV9=tq";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the clients saw in one reporting window.
#[derive(Default)]
struct Window {
    latencies: Vec<Duration>,
    errors: usize,
    /// Status codes other than the expected ones, with a count.
    statuses: std::collections::BTreeMap<u16, usize>,
}

fn size(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn main() {
    let secs = env_or("BENCH_SOAK_SECS", 600);
    let every = env_or("BENCH_SOAK_REPORT_SECS", 30);
    let clients = env_or("BENCH_SOAK_CLIENTS", 8) as usize;
    let n = env_or("BENCH_SOAK_SERVERS", 200) as usize;
    let _ = ecsd::conn_limits::raise_nofile_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // At saturation, not at the per-AK limit (200/s by default, which the
    // clients would otherwise hit at once and be answered 429).
    let ecsd = Ecsd::start_with_env(&data, true, &[("ECSD_RATE_LIMIT_PER_SEC", "1000000")]);
    let pid = ecsd.child.id().to_string();
    let token = ecsd.token(n);
    rt.block_on(async {
        let (token, pin) = ecs_agent::agent::split_join_token(&token).unwrap();
        let fleet = Fleet::start(FleetSpec {
            endpoint: ecsd.endpoint.clone(),
            token: Some(token),
            trust: ecs_agent::agent::EnrollTrust::Pin(pin.expect("a pin over HTTPS")),
            root_base: dir.path().join("fleet"),
            linux: n,
            windows: 0,
            prefix: "soak-".into(),
            poll: Duration::from_secs(25),
            heartbeat: Duration::from_secs(60),
        })
        .await
        .unwrap();
        let ids: Arc<Vec<String>> = Arc::new(fleet.list().into_iter().map(|s| s.server_id).collect());
        println!(
            "soak: {secs} s, {clients} clients (single resets; one of them also a batch of all {n} every 5 s and a listing), {n} simulated agents, HTTPS; report every {every} s"
        );
        println!("window_end_s  requests  req/s  errors  p50_ms  p99_ms  ecsd_rss_mib  ecsd_cpu_s  db_mib  wal_mib");
        let stop = Arc::new(AtomicBool::new(false));
        let window = Arc::new(Mutex::new(Window::default()));
        let mut workers = Vec::new();
        for c in 0..clients {
            let api = ecsd.api.clone();
            let ids = ids.clone();
            let stop = stop.clone();
            let window = window.clone();
            workers.push(tokio::spawn(async move {
                let mut i = c;
                let mut last_batch = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let (r, ok) = if c == 0 && last_batch.elapsed() >= Duration::from_secs(5) {
                        last_batch = Instant::now();
                        (api.client.send(api.reset(&ids, PASSWORD)).await, 200)
                    } else if c == 0 && i % 10 == 0 {
                        let req = ecs_client::Request::new(
                            reqwest::Method::GET,
                            api.path("/cloudservers/detail?limit=100"),
                        );
                        (api.client.send(req).await, 200)
                    } else {
                        let id = &ids[i % ids.len()];
                        let body = SingleResetRequest {
                            reset_password: ResetPasswordOption {
                                new_password: Some(SecretString::from(PASSWORD.to_owned()).into()),
                                generate: None,
                                is_check_password: None,
                            },
                        };
                        let req = ecs_client::Request::new(
                            reqwest::Method::PUT,
                            api.path(&format!("/cloudservers/{id}/os-reset-password")),
                        )
                        .json(&body)
                        .unwrap();
                        (api.client.send(req).await, 204)
                    };
                    let took = t.elapsed();
                    let mut w = window.lock().unwrap();
                    match r {
                        Ok(r) if r.status == ok => w.latencies.push(took),
                        Ok(r) => {
                            w.errors += 1;
                            *w.statuses.entry(r.status).or_default() += 1;
                        }
                        Err(_) => {
                            w.errors += 1;
                            *w.statuses.entry(0).or_default() += 1;
                        }
                    }
                    i += clients;
                }
            }));
        }
        let started = Instant::now();
        let (mut total, mut total_errors) = (0usize, 0usize);
        let mut all = Vec::new();
        let mut rss_max: f64 = 0.0;
        let mut rss_first = None;
        let db = data.join("ecsd.db");
        let wal = data.join("ecsd.db-wal");
        let mut wal_max = 0;
        while started.elapsed() < Duration::from_secs(secs) {
            let end = Duration::from_secs(every).min(Duration::from_secs(secs) - started.elapsed());
            let t0 = Instant::now();
            // Sample RSS and the WAL size every second of the window.
            while t0.elapsed() < end {
                tokio::time::sleep(Duration::from_secs(1).min(end)).await;
                rss_max = rss_max.max(ecsd.rss_mib());
                wal_max = wal_max.max(size(&wal));
            }
            let w = std::mem::take(&mut *window.lock().unwrap());
            let mut lat = w.latencies;
            lat.sort();
            let requests = lat.len() + w.errors;
            total += requests;
            total_errors += w.errors;
            let rss = ecsd.rss_mib();
            rss_first.get_or_insert(rss);
            println!(
                "{:>12.0}  {:>8}  {:>5.0}  {:>6}  {:>6.1}  {:>6.1}  {:>12.1}  {:>10.1}  {:>6.1}  {:>7.2}{}",
                started.elapsed().as_secs_f64(),
                requests,
                requests as f64 / t0.elapsed().as_secs_f64(),
                w.errors,
                support::quantile_ms(&lat, 0.5),
                support::quantile_ms(&lat, 0.99),
                rss,
                cpu_secs(&pid),
                size(&db) as f64 / 1048576.0,
                size(&wal) as f64 / 1048576.0,
                if w.statuses.is_empty() { String::new() } else { format!("  errors by status: {:?}", w.statuses) }
            );
            all.extend(lat);
        }
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            let _ = w.await;
        }
        all.sort();
        println!(
            "total: {total} requests in {:.0} s ({:.0} req/s), {total_errors} errors; p50 {:.1} ms, p99 {:.1} ms; ecsd RSS first window {:.1} MiB, last {:.1} MiB, max {:.1} MiB; WAL max {:.2} MiB",
            started.elapsed().as_secs_f64(),
            total as f64 / started.elapsed().as_secs_f64(),
            support::quantile_ms(&all, 0.5),
            support::quantile_ms(&all, 0.99),
            rss_first.unwrap_or(f64::NAN),
            ecsd.rss_mib(),
            rss_max,
            wal_max as f64 / 1048576.0
        );
        let c = rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let count = |t: &str| -> i64 { c.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0)).unwrap() };
        let (resets, targets, audit) = (count("resets"), count("reset_targets"), count("audit"));
        let db_bytes = size(&db);
        println!(
            "database: {:.1} MiB for {resets} resets, {targets} targets, {audit} audit records = {:.0} bytes per reset request kept (with its targets and audit record); WAL {:.2} MiB",
            db_bytes as f64 / 1048576.0,
            db_bytes as f64 / resets.max(1) as f64,
            size(&wal) as f64 / 1048576.0
        );
        fleet.stop();
    });
}
