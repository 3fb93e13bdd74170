//! The cold path and sustained load (issue 13, items 5 and 6), against the
//! real `ecsd` binary (its allocator and runtime settings are main.rs's),
//! over HTTPS on loopback, in one run:
//!
//! - the machine's floor: one `fdatasync` of a 4 KiB append (a durable reset
//!   cannot be faster) and `GET /health` (an unsigned, storeless round trip);
//! - a single-server reset (`PUT .../os-reset-passwords` with one server, as
//!   ecsctl sends it) back to back (median/p99), and after 0.5 s and 5 s of
//!   idleness (medians), on a keep-alive connection and on a new connection
//!   per call (an operator's CLI opens one: TCP + TLS handshake included);
//! - sustained server resets per second at batch sizes 1 (concurrency 1),
//!   100 and 1000.
//!
//! Several ecsd variants can run side by side (`BENCH_ECSD_VARIANTS`, e.g.
//! `decay-off:_RJEM_MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1`; entries
//! separated by `;`, settings within one by spaces; `BENCH_ECSD_BIN=path` runs
//! another build, e.g. a copy made before a change): every idle sample calls
//! each variant once, in rotating order, so they share the machine's noise.
//!
//! `cargo bench -p ecsd --bench idle` (BENCH_IDLE_SAMPLES, default 15 per
//! idle length; BENCH_B2B, default 200 back-to-back calls; BENCH_LOAD_SECS,
//! default 5 per sustained row, 0 skips them)

use std::time::{Duration, Instant};

use anyhow::Context;
use ecs_client::Request;

mod support;
use support::process::Ecsd;
use support::{Api, quantile_ms};

const SERVERS: usize = 1000;
const PASSWORD: &str = "Gx7!pLq2vR";

/// One ecsd under test.
struct Variant {
    label: String,
    ecsd: Ecsd,
    ids: Vec<String>,
    /// A new client (its own connection pool and TLS session cache): its
    /// first call opens a new connection, as an operator's CLI does.
    fresh: Box<dyn Fn() -> Api>,
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Registers `SERVERS` servers with agent keys in the dev project of a new
/// data directory, as `ecsd serve --dev` will find them.
async fn seed(dir: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let config = ecsd::config::Config {
        data_dir: dir.to_owned(),
        master_key: Some(ecsd::server::dev_master_key(dir)?),
        ..ecsd::config::Config::default()
    };
    let state = ecsd::server::open_state(config)?;
    let project = state.store.create_project("dev").await?;
    let ids = support::register_servers(&state, &project.id, SERVERS).await;
    Ok(ids)
}

fn start(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    label: &str,
    env: &[(String, String)],
) -> anyhow::Result<Variant> {
    let data = dir.join(label);
    let ids = rt.block_on(seed(&data))?;
    // The load rows go past the default 200 requests/s per user.
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.push(("ECSD_RATE_LIMIT_PER_SEC", "1000000"));
    let ecsd = Ecsd::start_with_env(&data, true, &env);
    let creds: ecsd::dev::DevCredentials =
        serde_json::from_slice(&std::fs::read(ecsd::dev::credentials_path(&data))?)?;
    let ca = std::fs::read(creds.ca_file.as_ref().context("a CA file over HTTPS")?)?;
    let fresh = move || {
        Api::new(
            &creds.endpoint,
            &creds.project_id,
            &creds.ak,
            &creds.sk,
            Some(ca.clone()),
        )
    };
    Ok(Variant {
        label: label.to_owned(),
        ecsd,
        ids,
        fresh: Box::new(fresh),
    })
}

/// One reset of `ids`, timed; panics on anything but 200.
async fn reset(api: &Api, ids: &[String]) -> Duration {
    let started = Instant::now();
    let r = api.send(api.reset(ids, PASSWORD)).await;
    let d = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    d
}

async fn health(api: &Api) -> Duration {
    let started = Instant::now();
    let r = api
        .send(Request::new(reqwest::Method::GET, "/health").unsigned())
        .await;
    let d = started.elapsed();
    assert_eq!(r.status, 200);
    d
}

/// What one idle sample measures.
#[derive(Clone, Copy, PartialEq)]
enum Call {
    Health,
    Reset,
    ResetFresh,
}

/// Minor page faults and context switches (voluntary and not, all
/// threads) of a process so far.
fn counters(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let minflt = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.split_whitespace().nth(7))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut switches = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        switches += status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    (minflt, switches)
}

/// One timed call, with the minor faults and context switches ecsd had
/// during it.
#[derive(Clone, Copy)]
struct Sample {
    took: Duration,
    faults: u64,
    switches: u64,
}

async fn call(v: &Variant, what: Call, n: usize) -> Sample {
    let pid = v.ecsd.child.id();
    let (f0, s0) = counters(pid);
    let took = call_once(v, what, n).await;
    let (f1, s1) = counters(pid);
    Sample {
        took,
        faults: f1.saturating_sub(f0),
        switches: s1.saturating_sub(s0),
    }
}

/// Medians of a set of samples: (ms, faults, context switches).
fn medians(samples: &[Sample]) -> (f64, u64, u64) {
    let mut f: Vec<u64> = samples.iter().map(|s| s.faults).collect();
    let mut c: Vec<u64> = samples.iter().map(|s| s.switches).collect();
    f.sort();
    c.sort();
    (
        median_ms(samples.iter().map(|s| s.took).collect()),
        f[f.len() / 2],
        c[c.len() / 2],
    )
}

async fn call_once(v: &Variant, what: Call, n: usize) -> Duration {
    let id = std::slice::from_ref(&v.ids[n % v.ids.len()]);
    match what {
        Call::Health => health(&v.ecsd.api).await,
        Call::Reset => reset(&v.ecsd.api, id).await,
        Call::ResetFresh => {
            // The client is made before the clock starts: an operator's CLI
            // pays its own start-up, not ecsd's.
            let api = (v.fresh)();
            reset(&api, id).await
        }
    }
}

fn median_ms(mut v: Vec<Duration>) -> f64 {
    v.sort();
    quantile_ms(&v, 0.5)
}

/// The fsync floor: 4 KiB appended then `fdatasync` (what SQLite does per
/// WAL commit with synchronous=FULL), back to back and after 0.5 s idle.
fn fsync_floor(dir: &std::path::Path) -> anyhow::Result<(f64, f64)> {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("fsync-probe"))?;
    let page = [7u8; 4096];
    let mut once = || -> anyhow::Result<Duration> {
        let started = Instant::now();
        f.write_all(&page)?;
        f.sync_data()?;
        Ok(started.elapsed())
    };
    let b2b = (0..200)
        .map(|_| once())
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut idle = Vec::new();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(500));
        idle.push(once()?);
    }
    Ok((median_ms(b2b), median_ms(idle)))
}

/// Sustained resets of `batch` servers from `conc` keep-alive tasks for
/// `secs`: (server resets/s, p50 ms, p99 ms).
async fn sustained(v: &Variant, batch: usize, conc: usize, secs: u64) -> (f64, f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..conc {
        let api = v.ecsd.api.clone();
        let ids = v.ids.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0usize;
            while Instant::now() < deadline {
                // Disjoint slices per task when the batch allows.
                let start = (w * (ids.len() / conc) + i * batch) % (ids.len() - batch + 1);
                lat.push(reset(&api, &ids[start..start + batch]).await);
                i += 1;
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    (
        (all.len() * batch) as f64 / elapsed,
        quantile_ms(&all, 0.5),
        quantile_ms(&all, 0.99),
    )
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() -> anyhow::Result<()> {
    let samples: usize = env_num("BENCH_IDLE_SAMPLES", 15);
    let b2b: usize = env_num("BENCH_B2B", 200);
    let secs: u64 = env_num("BENCH_LOAD_SECS", 5);
    let mut specs = vec![("as-built".to_owned(), Vec::new())];
    for entry in std::env::var("BENCH_ECSD_VARIANTS")
        .unwrap_or_default()
        .split(';')
        .filter(|e| !e.trim().is_empty())
    {
        let (label, settings) = entry.split_once(':').context("label:KEY=VALUE ...")?;
        let env = settings
            .split_whitespace()
            .map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .context("KEY=VALUE")
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        specs.push((label.trim().to_owned(), env));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let (fsync_b2b, fsync_idle) = fsync_floor(dir.path())?;
    println!(
        "floor: fdatasync of a 4 KiB append {fsync_b2b:.3} ms back to back, {fsync_idle:.3} ms after 0.5 s idle (load {})",
        load_average()
    );
    let variants = specs
        .iter()
        .map(|(label, env)| start(&rt, dir.path(), label, env))
        .collect::<anyhow::Result<Vec<_>>>()?;
    println!(
        "{SERVERS} servers per ecsd, HTTPS on loopback; load average at start {}",
        load_average()
    );
    println!();
    println!(
        "| ecsd | call | back to back p50 ms | p99 ms | after 0.5 s idle p50 ms | ratio | after 5 s idle p50 ms | ratio | ecsd minor faults per call (b2b / 0.5 s / 5 s) | context switches per call |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for what in [Call::Health, Call::Reset, Call::ResetFresh] {
        let name = match what {
            Call::Health => "GET /health (floor), keep-alive",
            Call::Reset => "1-server reset, keep-alive",
            Call::ResetFresh => "1-server reset, new connection",
        };
        // Back to back, the variants take turns call by call: the virtual
        // disk throttles a stream of syncs, and a variant measured after
        // another would find the budget spent.
        let back = rt.block_on(async {
            for n in 0..20 {
                for v in &variants {
                    call(v, what, n).await;
                }
            }
            let mut all = vec![Vec::with_capacity(b2b); variants.len()];
            for n in 0..b2b {
                for (i, v) in variants.iter().enumerate() {
                    all[i].push(call(v, what, n).await);
                }
            }
            all
        });
        let mut rows = Vec::new();
        for back in &back {
            let mut lat: Vec<Duration> = back.iter().map(|s| s.took).collect();
            lat.sort();
            rows.push((medians(back), quantile_ms(&lat, 0.99)));
        }
        let mut idle = [
            vec![Vec::new(); variants.len()],
            vec![Vec::new(); variants.len()],
        ];
        for (k, pause) in [Duration::from_millis(500), Duration::from_secs(5)]
            .into_iter()
            .enumerate()
        {
            for s in 0..samples {
                std::thread::sleep(pause);
                // Rotating order: no variant is always the first to wake.
                for j in 0..variants.len() {
                    let i = (s + j) % variants.len();
                    let sample = rt.block_on(call(&variants[i], what, s));
                    idle[k][i].push(sample);
                }
            }
        }
        for (i, v) in variants.iter().enumerate() {
            let ((p50, f_b, s_b), p99) = rows[i];
            let (half, f_h, s_h) = medians(&idle[0][i]);
            let (five, f_f, s_f) = medians(&idle[1][i]);
            println!(
                "| {} | {name} | {p50:.2} | {p99:.2} | {half:.2} | {:.1}x | {five:.2} | {:.1}x | {f_b} / {f_h} / {f_f} | {s_b} / {s_h} / {s_f} |",
                v.label,
                half / p50,
                five / p50
            );
        }
    }
    println!("load average after the idle rows {}", load_average());
    if secs == 0 {
        return Ok(());
    }
    println!();
    println!("| ecsd | batch | concurrency | server resets/s | p50 ms | p99 ms | load |");
    println!("|---|---|---|---|---|---|---|");
    for (batch, conc) in [(1usize, 1usize), (1, 4), (100, 2), (1000, 2)] {
        for v in &variants {
            let (rate, p50, p99) = rt.block_on(sustained(v, batch, conc, secs));
            println!(
                "| {} | {batch} | {conc} | {rate:.0} | {p50:.2} | {p99:.2} | {} |",
                v.label,
                load_average()
            );
        }
    }
    Ok(())
}
