//! The real `ecsd` binary as a child process (`serve --dev`), and what the
//! benches read of it from /proc.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};

use ecs_api::EnrollTokenResponse;

use super::Api;

pub struct Ecsd {
    pub child: Child,
    pub api: Api,
    pub endpoint: String,
    pub data: std::path::PathBuf,
    pub tls: bool,
}

impl Ecsd {
    pub fn start(data: &std::path::Path, tls: bool) -> Ecsd {
        Self::start_with_env(data, tls, &[])
    }

    /// `env`: extra `ECSD_*` settings.
    pub fn start_with_env(data: &std::path::Path, tls: bool, env: &[(&str, &str)]) -> Ecsd {
        Self::start_on(data, tls, env, "127.0.0.1:0", 0)
    }

    /// With a dev fleet of `linux` simulated Linux servers inside the
    /// ecsd process (`--dev-linux`); answers once all of them reported in.
    pub fn start_with_fleet(data: &std::path::Path, tls: bool, linux: usize) -> Ecsd {
        Self::start_on(data, tls, &[], "127.0.0.1:0", linux)
    }

    /// The dev credentials file `ecsctl --dev-credentials` reads.
    pub fn credentials_file(&self) -> std::path::PathBuf {
        self.data.join("dev-credentials.json")
    }

    /// Kills this ecsd (SIGKILL, as a crash or a host restart would) and
    /// starts a new one on the same data and the same address (`env`:
    /// extra `ECSD_*` settings for the new one).
    pub fn restart(&mut self, env: &[(&str, &str)]) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let listen = self
            .endpoint
            .split_once("://")
            .map_or(self.endpoint.as_str(), |(_, rest)| rest)
            .trim_end_matches('/')
            .to_owned();
        // The old process's port may linger a moment in the kernel.
        let started = std::time::Instant::now();
        while std::net::TcpListener::bind(&listen).is_err() {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "{listen} stays taken"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let new = Self::start_on(&self.data, self.tls, env, &listen, 0);
        // Dropping the old one only waits for its (already killed) child.
        drop(std::mem::replace(self, new));
    }

    fn start_on(
        data: &std::path::Path,
        tls: bool,
        env: &[(&str, &str)],
        listen: &str,
        linux: usize,
    ) -> Ecsd {
        // BENCH_ECSD_BIN in `env`: another build of ecsd (an earlier one, to
        // compare before and after in one run); not passed on to it.
        let bin = env
            .iter()
            .find(|(k, _)| *k == "BENCH_ECSD_BIN")
            .map_or_else(ecsd_bin, |(_, v)| (*v).into());
        let env: Vec<_> = env.iter().filter(|(k, _)| *k != "BENCH_ECSD_BIN").collect();
        let mut child = Command::new(bin)
            .args([
                "--data-dir",
                data.to_str().unwrap(),
                "serve",
                "--dev",
                "--dev-windows",
                "0",
            ])
            .args(["--dev-linux", &linux.to_string()])
            .args(["--listen", listen])
            .args(if tls {
                &[][..]
            } else {
                &["--insecure-http"][..]
            })
            .env("RUST_LOG", "warn")
            // Every simulated agent connects from 127.0.0.1: no per-address
            // connection cap (real fleets have an address per server, and
            // agents are excepted once authenticated anyway).
            .env("ECSD_MAX_CONNECTIONS_PER_SOURCE", "0")
            .envs(env.iter().map(|&&(k, v)| (k, v)))
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

    pub fn token(&self, uses: usize) -> String {
        let out = Command::new(ecsd_bin())
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

    pub fn rss_mib(&self) -> f64 {
        rss_mib(&self.child.id().to_string())
    }
}

/// Resident memory of a process (`self` or a pid), in MiB.
pub fn rss_mib(pid: &str) -> f64 {
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
pub fn sockets(pid: &str) -> usize {
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

impl Drop for Ecsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `ecsd` binary benched: this build's, or BENCH_ECSD_BIN (to compare
/// another build with the same benchmark and simulator).
fn ecsd_bin() -> std::ffi::OsString {
    std::env::var_os("BENCH_ECSD_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_ecsd").into())
}

/// CPU seconds (user + system) a process has used.
pub fn cpu_secs(pid: &str) -> f64 {
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
