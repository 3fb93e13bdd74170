//! Faults of a deployment on PostgreSQL (issue #12): the database restarted
//! under load, and an agent whose replica dies finding another through the
//! load balancer's address.
//!
//! The restart test runs a PostgreSQL server of its own (`initdb` and
//! `postgres` from `/usr/lib/postgresql/*/bin`, as the `postgres` user when
//! the test runs as root) on a free port, so that stopping it disturbs no
//! other test. `ECSD_TEST_POSTGRES=skip` skips both, as it does the other
//! PostgreSQL tests. The load balancer is a small TCP forwarder written
//! here (no load balancer package runs in the test environment): it sends
//! each new connection to the first backend that accepts one, as a
//! health-checked load balancer does once it has marked a backend down.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use ecs_api::{GatewayErrorBody, ResetState};
use ecs_policy::OsType::Linux;

fn skipped() -> bool {
    std::env::var("ECSD_TEST_POSTGRES").is_ok_and(|v| v.trim().eq_ignore_ascii_case("skip"))
}

/// The newest installed PostgreSQL's program directory.
fn pg_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's programs in /usr/lib/postgresql (or set ECSD_TEST_POSTGRES=skip)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop()
        .expect("an initdb under /usr/lib/postgresql/*/bin")
}

/// (uid, gid) of a user, from /etc/passwd.
fn user_ids(name: &str) -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let line = passwd
        .lines()
        .find(|l| l.split(':').next() == Some(name))
        .unwrap_or_else(|| panic!("no user {name}"));
    let f: Vec<&str> = line.split(':').collect();
    (f[2].parse().unwrap(), f[3].parse().unwrap())
}

/// A PostgreSQL server of this test's own, trust authentication, on a free
/// loopback port; stopped when dropped.
struct PrivatePostgres {
    _dir: tempfile::TempDir,
    data: PathBuf,
    port: u16,
    bin: PathBuf,
    /// Run as `postgres` (PostgreSQL refuses to run as root).
    as_user: Option<(u32, u32)>,
    child: Option<Child>,
}

impl PrivatePostgres {
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.as_user {
            use std::os::unix::process::CommandExt;
            c.uid(uid).gid(gid);
        }
        c.stdin(Stdio::null());
        c
    }

    fn init() -> PrivatePostgres {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
        let as_user = root.then(|| user_ids("postgres"));
        let data = dir.path().join("pg");
        std::fs::create_dir(&data).unwrap();
        if let Some((uid, gid)) = as_user {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            std::os::unix::fs::chown(&data, Some(uid), Some(gid)).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = PrivatePostgres {
            _dir: dir,
            data,
            port,
            bin: pg_bin(),
            as_user,
            child: None,
        };
        let out = pg
            .command("initdb")
            .args(["-D", pg.data.to_str().unwrap()])
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server and waits until it accepts sessions.
    async fn start(&mut self) {
        let log = std::fs::File::create(self.data.with_extension("log")).unwrap();
        let child = self
            .command("postgres")
            .args(["-D", self.data.to_str().unwrap()])
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args([
                "-c",
                &format!("unix_socket_directories={}", self.data.display()),
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
                .await
                .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the private PostgreSQL did not start: {}",
                std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A fast shutdown (SIGINT: sessions ended, a checkpoint, exit), as
    /// `pg_ctl restart -m fast` does first.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let ok = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status()
                .unwrap()
                .success();
            assert!(ok, "kill -INT");
            c.wait().unwrap();
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One batch reset as the load sent it.
struct Sent {
    at: Duration,
    took: Duration,
    status: u16,
    body: String,
    request_id: Option<String>,
    ids: Vec<String>,
}

/// PostgreSQL restarted (fast shutdown, 3 s down, started again) while two
/// clients send batch resets without pause: while it is down every call is
/// answered 503 in the gateway shape with a request id, each within 5 s
/// (nothing hangs for the pool's 30-s wait); once it is back calls succeed
/// again without anything done to ecsd; and every reset acknowledged
/// before, during or after is stored whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_under_load_fails_fast_with_503_and_recovers_by_itself() {
    if skipped() {
        return;
    }
    let mut pg = PrivatePostgres::init();
    pg.start().await;
    let url = pg.url();
    let t = Arc::new(TestServer::start_with(|c| c.database = Some(url)).await);
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(
            t.server(&t.project, &format!("pg-{i}"), Linux, true)
                .await
                .0,
        );
    }
    let sent = Arc::new(Mutex::new(Vec::<Sent>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..2 {
        let (t, sent, stop) = (t.clone(), sent.clone(), stop.clone());
        let ids: Vec<String> = ids[task * 5..task * 5 + 5].to_vec();
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
                let password = format!("Pg{task}!rst{n}x");
                let at = started.elapsed();
                let r = t
                    .call(
                        "PUT",
                        &t.batch_path(),
                        Some(&ids_body(Some(&password), None, &refs)),
                    )
                    .await;
                sent.lock().unwrap().push(Sent {
                    at,
                    took: started.elapsed() - at,
                    status: r.status,
                    body: r.text.clone(),
                    request_id: r.request_id.clone(),
                    ids: ids.clone(),
                });
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let down_at = started.elapsed();
    pg.stop();
    let stopped_at = started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restart_at = started.elapsed();
    pg.start().await;
    let up_at = started.elapsed();
    // Until calls succeed again (at most 30 s), then 1 s more.
    let deadline = Instant::now() + Duration::from_secs(30);
    let recovered_at = loop {
        let ok = sent
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.at > up_at && s.status == 200)
            .map(|s| s.at + s.took);
        if let Some(at) = ok {
            break at;
        }
        assert!(
            Instant::now() < deadline,
            "calls never succeeded again after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    eprintln!(
        "PostgreSQL stopped {:?}..{:?}, started {:?}..{:?}; calls succeed again at {:?} ({} calls)",
        down_at,
        stopped_at,
        restart_at,
        up_at,
        recovered_at,
        sent.len()
    );
    // Sent while the server was down (not at the edges): 503 in the
    // gateway shape, fast.
    let mut unavailable = 0;
    for s in &sent {
        if s.status == 200 {
            continue;
        }
        assert_eq!(
            s.status, 503,
            "only 503 while the database is away: {}",
            s.body
        );
        let body: GatewayErrorBody =
            serde_json::from_str(&s.body).expect("the gateway error shape");
        assert_eq!(body.error_code, "APIGW.0503", "{}", s.body);
        assert_eq!(
            Some(&body.request_id),
            s.request_id.as_ref(),
            "the body's id is the header's"
        );
        assert!(s.took < Duration::from_secs(5), "a 503 took {:?}", s.took);
        unavailable += 1;
    }
    let during: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.at > stopped_at && s.at + s.took < restart_at)
        .collect();
    assert!(
        !during.is_empty(),
        "no call fell while the database was down"
    );
    assert!(
        during.iter().all(|s| s.status == 503),
        "a call succeeded while the database was down"
    );
    assert!(
        recovered_at - up_at < Duration::from_secs(10),
        "recovery took {:?} after PostgreSQL was up",
        recovered_at - up_at
    );
    // Every acknowledged reset is there, whole.
    let acked: Vec<&Sent> = sent.iter().filter(|s| s.status == 200).collect();
    for s in &acked {
        let rid = s.request_id.as_deref().unwrap();
        let o = t.outcome(rid).await;
        let mut got: Vec<&str> = o.servers.iter().map(|x| x.id.as_str()).collect();
        got.sort();
        let mut want: Vec<&str> = s.ids.iter().map(String::as_str).collect();
        want.sort();
        assert_eq!(got, want, "reset {rid} is not whole");
    }
    eprintln!("{} acknowledged, {unavailable} answered 503", acked.len());
}

/// A TCP forwarder standing in for a load balancer: each new connection goes
/// to the first backend that accepts one.
async fn failover_proxy(backends: Vec<String>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                continue;
            };
            let backends = backends.clone();
            tokio::spawn(async move {
                for b in &backends {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(b).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

/// An agent that reaches ecsd through the load balancer's address keeps
/// working when the replica it was connected to dies: it reconnects through
/// the same address, lands on the other replica, and applies a reset
/// accepted there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_on_a_dead_replica_reconnects_to_another_through_the_load_balancer() {
    let Some(schema) = ecsd::store::postgres::testing::TestSchema::create() else {
        return;
    };
    let url = schema.url.clone();
    let mut a = TestServer::start_with(|c| {
        c.database = Some(url);
        // Small fleet: a reconnect spread of 1 s.
        c.agent_reconnect_per_sec = 1000;
    })
    .await;
    let config = ecsd::config::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..(*a.state.config).clone()
    };
    let b_state = ecsd::server::open_state(config).unwrap();
    let b_server = ecsd::server::Server::bind(b_state).await.unwrap();
    let b_addr = b_server.local_addr().to_string();
    let (stop_b, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = b_server
            .run(async {
                let _ = rx.await;
            })
            .await;
    });
    let lb = failover_proxy(vec![a.host.clone(), b_addr.clone()]).await;
    let fleet = ecs_agent::simulate::Fleet::start(ecs_agent::simulate::FleetSpec {
        endpoint: lb.clone(),
        token: Some(secret(&token(&a, 1).await)),
        trust: ecs_agent::agent::EnrollTrust::PlainLoopback,
        root_base: a.dir.path().join("fleet"),
        linux: 1,
        windows: 0,
        prefix: "lb-".into(),
        poll: Duration::from_secs(5),
        heartbeat: Duration::from_secs(30),
    })
    .await
    .unwrap();
    let server = fleet.list().remove(0);
    // The agent polls replica A (the balancer's first choice).
    let a_state = a.state.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while a_state.wakers.waiting() != 1 {
        assert!(
            Instant::now() < deadline,
            "the agent never polled replica A"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Replica A dies; the rest goes through B.
    a.stop().await;
    a.host = b_addr.clone();
    a.base = format!("http://{b_addr}");
    let r = a
        .call(
            "PUT",
            &a.batch_path(),
            Some(&body(&ecs_api::BatchResetRequest {
                apply: Some("now".into()),
                ..reset_request(Some("Lb4!vNq8sZ"), None, &[server.server_id.as_str()])
            })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let rid = r.request_id.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = a.outcome(&rid).await;
        if o.servers[0].state == ResetState::Applied {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never applied through replica B: {o:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(verifies(&root_hash(Path::new(&server.root)), "Lb4!vNq8sZ"));
    fleet.stop();
    drop(stop_b);
}
