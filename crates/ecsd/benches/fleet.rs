//! The agent side at fleet scale, with the real `ecsd` binary as a separate
//! process and the fleet simulator (the same agent code as real servers):
//!
//! 1. 1000 simulated servers: a batch reset, then a restart of all of them;
//!    time until the API shows every server APPLIED.
//! 2. ecsd's resident memory with 10,000 idle agents long-polling.
//!
//! Both over HTTPS (what `--dev` serves, agents pinned to its CA) and over
//! plain HTTP (`--insecure-http`), one after the other in the same run.
//!
//! `cargo bench -p ecsd --bench fleet` (BENCH_FLEET_N, BENCH_IDLE_N to change
//! the sizes; BENCH_TRANSPORT=https or http for one of them)

mod support;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ecs_agent::simulate::{Fleet, FleetSpec};
use ecs_api::{EnrollTokenResponse, ResetOutcome, ResetState, ResetSummary};
use support::Api;

struct Ecsd {
    child: Child,
    api: Api,
    endpoint: String,
    data: std::path::PathBuf,
    tls: bool,
}

impl Ecsd {
    fn start(data: &std::path::Path, tls: bool) -> Ecsd {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ecsd"))
            .args([
                "--data-dir",
                data.to_str().unwrap(),
                "serve",
                "--dev",
                "--dev-linux",
                "0",
                "--dev-windows",
                "0",
            ])
            .args(["--listen", "127.0.0.1:0"])
            .args(if tls {
                &[][..]
            } else {
                &["--insecure-http"][..]
            })
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut cred_path = None;
        for line in out.lines() {
            let line = line.unwrap();
            if let Some(p) = line.strip_prefix("credentials: ") {
                cred_path = Some(p.to_owned());
                break;
            }
        }
        let creds: ecsd::dev::DevCredentials =
            serde_json::from_slice(&std::fs::read(cred_path.unwrap()).unwrap()).unwrap();
        let ca_pem = creds.ca_file.as_ref().map(|ca| std::fs::read(ca).unwrap());
        Ecsd {
            child,
            tls,
            api: Api::new(
                &creds.endpoint,
                &creds.project_id,
                &creds.ak,
                &creds.sk,
                ca_pem,
            ),
            endpoint: creds.endpoint,
            data: data.to_owned(),
        }
    }

    fn token(&self, uses: usize) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_ecsd"))
            .args([
                "--data-dir",
                self.data.to_str().unwrap(),
                "admin",
                "enroll-token-create",
            ])
            .args(["--project", &self.api.project, "--uses", &uses.to_string()])
            .output()
            .unwrap();
        let v: EnrollTokenResponse = serde_json::from_slice(&out.stdout).unwrap();
        // Over HTTPS, the join token carries the CA pin.
        if self.tls {
            v.join_token.expect("a join token over HTTPS")
        } else {
            v.token
        }
    }

    fn rss_mib(&self) -> f64 {
        rss_mib(&self.child.id().to_string())
    }
}

/// Resident memory of a process (`self` or a pid), in MiB.
fn rss_mib(pid: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024.0
}

/// Open sockets of a process (its connections and its listener).
fn sockets(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Lets every agent report in and settle into its long poll, then samples
/// ecsd's RSS five times a second apart: (median, max). Prints how many
/// sockets ecsd holds meanwhile (one per connected agent).
async fn settled_rss(ecsd: &Ecsd) -> (f64, f64) {
    tokio::time::sleep(Duration::from_secs(8)).await;
    let pid = ecsd.child.id().to_string();
    let mut samples = Vec::new();
    let mut socks = Vec::new();
    for _ in 0..5 {
        samples.push(ecsd.rss_mib());
        socks.push(sockets(&pid));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!("  (ecsd sockets while sampling: {socks:?})");
    samples.sort_by(f64::total_cmp);
    (samples[2], samples[4])
}

impl Drop for Ecsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds (user + system) a process has used.
fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

async fn summary(api: &Api, rid: &str) -> ResetSummary {
    let path = api.path(&format!("/cloudservers/os-reset-passwords/{rid}"));
    let r = api
        .send(ecs_client::Request::new(reqwest::Method::GET, path))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice::<ResetOutcome>(&r.body)
        .unwrap()
        .summary
}

async fn wait_state(api: &Api, rid: &str, state: ResetState, n: u32, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let s = summary(api, rid).await;
        if s.get(state) == n {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "timed out waiting for {n} {state}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn spec(ecsd: &Ecsd, token: String, root: &std::path::Path, n: usize) -> FleetSpec {
    let (token, pin) = ecs_agent::agent::split_join_token(&token).unwrap();
    FleetSpec {
        endpoint: ecsd.endpoint.clone(),
        token: Some(token),
        trust: match pin {
            Some(p) => ecs_agent::agent::EnrollTrust::Pin(p),
            None => ecs_agent::agent::EnrollTrust::PlainLoopback,
        },
        root_base: root.to_owned(),
        linux: n,
        windows: 0,
        prefix: "b-".into(),
        poll: Duration::from_secs(25),
        heartbeat: Duration::from_secs(60),
    }
}

fn main() {
    let n: usize = std::env::var("BENCH_FLEET_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let idle: usize = std::env::var("BENCH_IDLE_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let transports: Vec<bool> = match std::env::var("BENCH_TRANSPORT").as_deref() {
        Ok("https") => vec![true],
        Ok("http") => vec![false],
        _ => vec![true, false],
    };
    for tls in transports {
        println!(
            "=== {} ===",
            if tls {
                "HTTPS (TLS 1.3, pinned agents)"
            } else {
                "plain HTTP (--insecure-http)"
            }
        );
        run(&rt, tls, n, idle);
    }
}

fn run(rt: &tokio::runtime::Runtime, tls: bool, n: usize, idle: usize) {
    // 1. Reset then restart N servers.
    let dir = tempfile::tempdir().unwrap();
    let ecsd = Ecsd::start(&dir.path().join("data"), tls);
    let token = ecsd.token(n);
    rt.block_on(async {
        let started = Instant::now();
        let fleet = Fleet::start(spec(&ecsd, token, &dir.path().join("fleet"), n)).await.unwrap();
        println!("enrolled and started {n} simulated servers in {:.2} s", started.elapsed().as_secs_f64());
        let ids: Vec<String> = fleet.list().into_iter().map(|s| s.server_id).collect();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let t0 = Instant::now();
        let r = ecsd.api.send(ecsd.api.reset(&ids, "Ns4]kV9=tq")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let accepted = t0.elapsed();
        let rid = r.request_id;
        let delivered = wait_state(&ecsd.api, &rid, ResetState::Delivered, n as u32, Duration::from_secs(120)).await;
        let (server_cpu0, own_cpu0) = (cpu_secs(&ecsd.child.id().to_string()), cpu_secs("self"));
        let t1 = Instant::now();
        fleet.restart_all().await.unwrap();
        let restarted = t1.elapsed();
        let applied = wait_state(&ecsd.api, &rid, ResetState::Applied, n as u32, Duration::from_secs(300)).await;
        println!("batch reset of {n}: accepted in {:.0} ms, all DELIVERED after {:.0} ms", accepted.as_secs_f64() * 1e3, delivered.as_secs_f64() * 1e3);
        println!(
            "restart of all {n}: restarts issued in {:.0} ms; all APPLIED {:.2} s after the restart began",
            restarted.as_secs_f64() * 1e3,
            (restarted + applied).as_secs_f64()
        );
        println!(
            "CPU used meanwhile: ecsd {:.2} s, agents (simulator) {:.2} s",
            cpu_secs(&ecsd.child.id().to_string()) - server_cpu0,
            cpu_secs("self") - own_cpu0
        );
        fleet.stop();
    });
    drop(ecsd);
    drop(dir);

    // 2. Memory with many idle agents.
    let dir = tempfile::tempdir().unwrap();
    let ecsd = Ecsd::start(&dir.path().join("data"), tls);
    let before = ecsd.rss_mib();
    let token = ecsd.token(idle);
    rt.block_on(async {
        let started = Instant::now();
        let fleet = Fleet::start(spec(&ecsd, token, &dir.path().join("fleet"), idle)).await.unwrap();
        println!("enrolled and started {idle} simulated servers in {:.1} s", started.elapsed().as_secs_f64());
        let (median, max) = settled_rss(&ecsd).await;
        println!(
            "ecsd RSS: {before:.1} MiB before agents, median {median:.1} MiB (max {max:.1}) with {idle} idle agents long-polling; simulator process {:.1} MiB",
            rss_mib("self")
        );
        fleet.stop();
        drop(fleet);
        tokio::time::sleep(Duration::from_secs(3)).await;
        println!("ecsd RSS after the agents disconnected: {:.1} MiB", ecsd.rss_mib());
    });
    // The same fleet against a freshly started ecsd (no enrollment burst).
    drop(ecsd);
    let ecsd = Ecsd::start(&dir.path().join("data"), tls);
    rt.block_on(async {
        let mut s = spec(&ecsd, String::new(), &dir.path().join("fleet"), idle);
        s.token = None;
        let fleet = Fleet::start(s).await.unwrap();
        let (median, max) = settled_rss(&ecsd).await;
        println!(
            "ecsd restarted, same {idle} agents reconnected and long-polling: RSS median {median:.1} MiB (max {max:.1})"
        );
        fleet.stop();
    });
}
