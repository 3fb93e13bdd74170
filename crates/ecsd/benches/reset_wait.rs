//! Issue 13 item 4: what an operator waits for. `ecsctl reset-password
//! --all --reboot --wait` — the real CLI as a process, its password on
//! stdin — against the real `ecsd --dev` (HTTPS) with 100 simulated Linux
//! servers whose agents run inside it: each reset is sealed, the servers
//! restart, every agent hashes the new password into its shadow file and
//! reports, and the CLI returns when all 100 are APPLIED.
//!
//! In the same run, the floor the hosts themselves set: the 100 SHA-512
//! crypt hashes the agents compute (the simulated servers' login.defs says
//! `ENCRYPT_METHOD SHA512`, default rounds), spread over the machine's
//! cores as the 100 agents are; and the floor of the CLI itself: `ecsctl
//! servers list` (a process start, a TLS handshake, one signed call).
//!
//! `cargo build --release -p ecsctl && cargo bench -p ecsd --bench reset_wait`
//! (BENCH_WAIT_RUNS, default 9; BENCH_WAIT_SERVERS, default 100;
//! BENCH_WAIT_ON=disk or tmpfs for one of the two fleet file systems)

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::process::{Ecsd, cpu_secs};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `ecsctl` of the same build (target/release/ecsctl beside this bench's
/// own directory, target/release/deps).
fn ecsctl() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join("ecsctl");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --release -p ecsctl` first",
        path.display()
    );
    path
}

/// One `ecsctl` command; the password, if any, on its stdin. Its wall time.
fn run(
    cli: &std::path::Path,
    creds: &std::path::Path,
    args: &[&str],
    password: Option<&str>,
) -> Duration {
    let started = Instant::now();
    let mut child = Command::new(cli)
        .arg("--dev-credentials")
        .arg(creds)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        if let Some(p) = password {
            writeln!(stdin, "{p}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "ecsctl {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

/// The hosts' hashing floor: `n` SHA-512 crypt hashes (the agents' method
/// and rounds) on `cores` threads.
fn hashing(n: usize, cores: usize) -> Duration {
    let password = secrecy::SecretString::from("Floor-Pass-2026!x".to_owned());
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..cores {
            let password = &password;
            s.spawn(move || {
                for _ in (t..n).step_by(cores) {
                    ecs_agent::shadow::hash(password, ecs_agent::shadow::Method::Sha512, None)
                        .unwrap();
                }
            });
        }
    });
    started.elapsed()
}

fn main() {
    let runs: usize = std::env::var("BENCH_WAIT_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9);
    let n: usize = std::env::var("BENCH_WAIT_SERVERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let cli = ecsctl();
    println!(
        "reset + restart + wait, {n} simulated servers over HTTPS, {runs} runs each (medians):"
    );
    // The simulated servers' root file systems (their shadow files, which
    // the agents write durably: two fsyncs each) on this machine's one disk
    // as `--dev` puts them, then on a tmpfs: real servers each sync their own
    // disk, in parallel; 100 of them queued on one virtual disk is an
    // artefact of the simulation. ecsd's own database stays on the disk.
    // BENCH_WAIT_ON=disk or tmpfs: one of them only.
    let places: Vec<bool> = match std::env::var("BENCH_WAIT_ON").as_deref() {
        Ok("disk") => vec![false],
        Ok("tmpfs") => vec![true],
        _ => vec![false, true],
    };
    for fleet_on_tmpfs in places {
        let dir = tempfile::tempdir().unwrap();
        let _shm = fleet_on_tmpfs.then(|| {
            let shm = tempfile::tempdir_in("/dev/shm").unwrap();
            std::os::unix::fs::symlink(shm.path(), dir.path().join("fleet")).unwrap();
            shm
        });
        let ecsd = Ecsd::start_with_fleet(dir.path(), true, n);
        measure(
            &cli,
            &ecsd,
            runs,
            n,
            cores,
            if fleet_on_tmpfs { "tmpfs" } else { "disk" },
        );
    }
}

fn measure(cli: &std::path::Path, ecsd: &Ecsd, runs: usize, n: usize, cores: usize, fleet: &str) {
    let creds = ecsd.credentials_file();
    let pid = ecsd.child.id().to_string();
    let reset = [
        "reset-password",
        "--all",
        "--reboot",
        "--wait",
        "--password-stdin",
    ];
    // Warm up: the first reset of each server, the first restart.
    run(cli, &creds, &reset, Some("Warm-Up-Pass-2026!a"));

    let mut e2e = Vec::new();
    let mut list = Vec::new();
    let mut floor = Vec::new();
    let mut floor_one = Vec::new();
    let mut cpu_e2e = 0.0;
    for i in 0..runs {
        // Interleaved, so that the machine's load falls on all of them alike.
        floor.push(hashing(n, cores));
        floor_one.push(hashing(n, 1));
        list.push(run(cli, &creds, &["servers", "list"], None));
        let cpu = cpu_secs(&pid);
        let password = format!("Run-{i}-Pass-2026!b");
        e2e.push(run(cli, &creds, &reset, Some(&password)));
        cpu_e2e += cpu_secs(&pid) - cpu;
        // Runs 2 s apart: each agent makes about eight calls a run, and
        // ecsd's per-agent rate limit (5/s, a burst of 20) must not be what
        // is measured.
        std::thread::sleep(Duration::from_secs(2));
    }
    let (e2e, list, floor, floor_one) =
        (median(e2e), median(list), median(floor), median(floor_one));
    println!("the simulated servers' file systems on {fleet}:");
    println!(
        "  ecsctl reset-password --all --reboot --wait       {:8.1} ms",
        ms(e2e)
    );
    println!(
        "  floor: {n} SHA-512 crypt hashes on {cores} threads     {:8.1} ms",
        ms(floor)
    );
    println!(
        "  info: the same hashes on one thread               {:8.1} ms",
        ms(floor_one)
    );
    println!(
        "  info: ecsctl servers list (process + TLS + 1 call) {:8.1} ms",
        ms(list)
    );
    println!(
        "  info: ecsd CPU (with the agents) per run          {:8.1} ms",
        cpu_e2e * 1e3 / runs as f64
    );
    println!(
        "  ratio ecsctl / hashing floor {:.2} (/ one-thread hashing {:.2})",
        e2e.as_secs_f64() / floor.as_secs_f64(),
        e2e.as_secs_f64() / floor_one.as_secs_f64()
    );
}
