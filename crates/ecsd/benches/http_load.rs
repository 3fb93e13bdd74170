//! Sustained batch resets per second over HTTPS and over plain HTTP, in the
//! same run: a real ecsd on loopback (its own runtime) and a signing load
//! generator (another runtime, keep-alive connections), bounded in time.
//! Prints one line per scenario; batch size 1 at concurrency 1 is the
//! single-server latency (issue 13: p50 under 1 ms). `benches/idle.rs` runs
//! the real binary, after idleness too.
//!
//! `cargo bench -p ecsd --bench http_load` (BENCH_LOAD_SECS, default 10)

use std::sync::Arc;
use std::time::{Duration, Instant};

use ecsd::config::Config;
use ecsd::server::Server;
use ecsd::store::Role;
use secrecy::ExposeSecret;

mod support;
use support::Api;

struct Target {
    api: Api,
    ids: Vec<String>,
}

fn start_server(dir: &std::path::Path, servers: usize, tls: bool) -> Target {
    let (tx, rx) = std::sync::mpsc::channel();
    let dir = dir.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let pki = ecsd::tls::dev_pki(&dir).unwrap();
            let ca_pem = tls.then(|| std::fs::read(&pki.ca).unwrap());
            let config = Config {
                listen: "127.0.0.1:0".parse().unwrap(),
                data_dir: dir,
                master_key: Some(ecsd::secrets::MasterKey::generate_base64()),
                rate_limit_per_sec: 1_000_000,
                tls_cert: tls.then_some(pki.cert),
                tls_key: tls.then_some(pki.key),
                insecure_http: !tls,
                ..Config::default()
            };
            let state = ecsd::server::open_state(config).unwrap();
            let project = ecsd::admin::create_project(&state, "load").await.unwrap();
            let (ak, sk) = ecsd::admin::create_access_key(&state, &project.id, Role::Admin)
                .await
                .unwrap();
            let ids = support::register_servers(&state, &project.id, servers).await;
            let server = Server::bind(state).await.unwrap();
            let addr = server.local_addr();
            tx.send(Target {
                api: Api::new(
                    &format!("{}://{addr}", server.scheme()),
                    &project.id,
                    &ak,
                    sk.expose_secret(),
                    ca_pem,
                ),
                ids,
            })
            .unwrap();
            server.run(std::future::pending()).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

async fn one_reset(t: &Api, ids: &[String]) -> (u16, Duration) {
    let started = Instant::now();
    let r = t.send(t.reset(ids, "Gx7!pLq2vR")).await;
    (r.status, started.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let secs: u64 = std::env::var("BENCH_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "| transport | batch size | concurrency | requests | resets/s (requests) | server resets/s | p50 ms | p99 ms | non-200 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let dir = tempfile::tempdir().unwrap();
    let targets = [
        (
            "HTTPS",
            Arc::new(start_server(&dir.path().join("tls"), 1000, true)),
        ),
        (
            "HTTP",
            Arc::new(start_server(&dir.path().join("plain"), 1000, false)),
        ),
    ];
    for ((batch, conc), (transport, target)) in [(1usize, 1usize), (1, 4), (100, 4), (1000, 2)]
        .into_iter()
        .flat_map(|b| targets.iter().map(move |t| (b, t)))
    {
        let (lat, errors) = rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(secs);
            let mut tasks = Vec::new();
            for w in 0..conc {
                let t = target.clone();
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::new();
                    let mut errors = 0;
                    let mut i = 0usize;
                    while Instant::now() < deadline {
                        // Disjoint slices per worker when the batch allows.
                        let start = ((w * 7919 + i * batch) % (t.ids.len() - batch + 1))
                            .min(t.ids.len() - batch);
                        let (status, d) = one_reset(&t.api, &t.ids[start..start + batch]).await;
                        if status != 200 {
                            errors += 1;
                        }
                        lat.push(d);
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
            (all, errors)
        });
        let mut sorted = lat.clone();
        sorted.sort();
        let rps = lat.len() as f64 / secs as f64;
        println!(
            "| {transport} | {batch} | {conc} | {} | {:.1} | {:.0} | {:.1} | {:.1} | {errors} |",
            lat.len(),
            rps,
            rps * batch as f64,
            percentile(&sorted, 0.5),
            percentile(&sorted, 0.99)
        );
    }
}
