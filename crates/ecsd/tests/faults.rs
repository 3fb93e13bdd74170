//! Faults (issue #11 item 5): a full disk during batch resets, a read-only
//! or damaged database at start-up, start-up without the master key, and
//! jumps of the wall clock. Real SQLite files throughout; the disk tests
//! put the data directory on a size-limited tmpfs, which needs root (or
//! CAP_SYS_ADMIN): without it they print why and skip.
//!
//! `cargo test -p ecsd --test faults` (docs/reliability.md, "Faults").

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use ecs_api::{ActionKind, JobResult, JobStatus, ServerAction};
use ecs_policy::OsType::Linux;
use secrecy::{ExposeSecret, SecretString};

const PW: &str = "Fault=2026.ok";

/// A tmpfs mounted on a temporary directory, unmounted when dropped (also
/// when the test fails).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=`), or prints why not and
    /// returns `None` (not root).
    fn mount(size: &str, test: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED {test}: mounting a tmpfs is not permitted here (needs root): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED {test}: cannot run mount: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `mount -o remount,ro` (or `rw`).
    fn remount(&self, mode: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(self.path())
            .status()
            .unwrap();
        assert!(st.success(), "remount,{mode} failed");
    }

    /// Writes a file until the file system is full; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        for chunk in [1 << 20, 4096, 512, 1] {
            let buf = vec![0xa5u8; chunk];
            loop {
                match f.write_all(&buf).and_then(|()| f.flush()) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                    Err(e) => panic!("filling the tmpfs: {e}"),
                }
            }
        }
        let _ = f.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: an in-process ecsd may still hold its files open.
        let _ = Command::new("mount")
            .args(["-o", "remount,rw"])
            .arg(self.path())
            .status();
        let st = Command::new("umount").arg("-l").arg(self.path()).status();
        if !st.is_ok_and(|s| s.success()) {
            eprintln!("warning: could not unmount {}", self.path().display());
        }
    }
}

/// Resets and reset targets in the database file.
fn counts(db: &Path) -> (i64, i64) {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let n = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    (
        n("SELECT COUNT(*) FROM resets"),
        n("SELECT COUNT(*) FROM reset_targets"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_stores_nothing_and_recovers_without_a_restart() {
    let Some(fs) = Tmpfs::mount("4m", "a_full_disk_answers_503") else {
        return;
    };
    let data = fs.path().join("data");
    let t = TestServer::start_with(|c| c.data_dir = data.clone()).await;
    assert!(t.db_path().starts_with(fs.path()));
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(
            t.server(&t.project, &format!("full-{i}"), Linux, true)
                .await
                .0,
        );
    }
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let batch = ids_body(Some(PW), None, &ids);
    let r = t.call("PUT", &t.batch_path(), Some(&batch)).await;
    assert_eq!(r.status, 200, "{}", r.text);

    // The WAL back to 0 bytes, so that the next commit must allocate.
    t.state.lifecycle.checkpoint().await.unwrap();
    let before = counts(&t.db_path());
    let filler = fs.fill();
    for _ in 0..3 {
        let r = t.call("PUT", &t.batch_path(), Some(&batch)).await;
        let e = assert_gateway(&r, 503, "APIGW.0503");
        assert!(
            e.error_msg.contains("storage full or unavailable"),
            "{}",
            e.error_msg
        );
        assert_eq!(counts(&t.db_path()), before, "a failed batch left rows");
    }
    // Reads still work on a full disk.
    let r = t
        .call(
            "GET",
            &format!("/v1/{}/cloudservers/detail", t.project),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    // Space again: the next request succeeds, no restart.
    std::fs::remove_file(&filler).unwrap();
    let r = t.call("PUT", &t.batch_path(), Some(&batch)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let rid = r.request_id.clone().unwrap();
    assert_eq!(t.outcome(&rid).await.servers.len(), 40);
    assert_eq!(
        counts(&t.db_path()),
        (before.0 + 1, before.1 + 40),
        "exactly the one new batch, whole"
    );
}

/// `ecsd --data-dir DIR admin ARGS...` with the master key: its JSON answer.
fn admin(data: &Path, key: &SecretString, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_ecsd"))
        .arg("--data-dir")
        .arg(data)
        .arg("admin")
        .args(args)
        .env("ECSD_MASTER_KEY", key.expose_secret())
        .env_remove("ECSD_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ecsd admin {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A data directory with a project and a few servers, made by `ecsd admin`
/// (which closes the database cleanly: no -wal left).
fn data_dir(data: &Path, key: &SecretString) {
    let project = admin(data, key, &["project-create", "--name", "faults"])["project_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 0..3 {
        admin(
            data,
            key,
            &[
                "server-register",
                "--project",
                &project,
                "--name",
                &format!("f{i}"),
            ],
        );
    }
}

/// `ecsd serve` on `data` (with RUST_BACKTRACE=1), which must exit on its
/// own within 30 s: its exit code and stderr.
fn serve_must_fail(data: &Path, key: Option<&SecretString>) -> (Option<i32>, String) {
    serve_as_must_fail(data, key, None)
}

/// [`serve_must_fail`] as user and group `uid`.
fn serve_as_must_fail(
    data: &Path,
    key: Option<&SecretString>,
    uid: Option<u32>,
) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ecsd"));
    if let Some(id) = uid {
        std::os::unix::process::CommandExt::uid(&mut cmd, id);
        std::os::unix::process::CommandExt::gid(&mut cmd, id);
    }
    cmd.arg("--data-dir")
        .arg(data)
        .args(["serve", "--insecure-http", "--listen", "127.0.0.1:0"])
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1")
        .env_remove("ECSD_CONFIG")
        .env_remove("ECSD_MASTER_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(k) = key {
        cmd.env("ECSD_MASTER_KEY", k.expose_secret());
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("ecsd serve kept running on {}", data.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status.code(), err)
}

/// Exit code 1, no panic, no backtrace, and the last line one `error: ...`
/// paragraph holding each of `wanted`; returns that line.
#[track_caller]
fn assert_clean_failure(code: Option<i32>, stderr: &str, wanted: &[&str]) -> String {
    assert_eq!(code, Some(1), "stderr: {stderr}");
    for bad in [
        "panicked",
        "stack backtrace",
        "Stack backtrace",
        "RUST_BACKTRACE",
    ] {
        assert!(!stderr.contains(bad), "{bad:?} on stderr: {stderr}");
    }
    let last = stderr
        .trim_end()
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    assert!(last.starts_with("error: "), "stderr: {stderr}");
    for w in wanted {
        assert!(last.contains(w), "{w:?} not in {last:?}");
    }
    last
}

#[test]
fn a_read_only_database_stops_start_up_with_a_clear_error() {
    let Some(fs) = Tmpfs::mount("16m", "a_read_only_database") else {
        return;
    };
    let data = fs.path().join("data");
    let key = ecsd::secrets::MasterKey::generate_base64();
    data_dir(&data, &key);
    let db = data.join("ecsd.db");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o400)).unwrap();
    // Root ignores file modes: the file system itself goes read-only.
    fs.remount("ro");
    let (code, err) = serve_must_fail(&data, Some(&key));
    let line = assert_clean_failure(
        code,
        &err,
        &[
            &db.display().to_string(),
            "cannot write the database",
            "writable",
        ],
    );
    eprintln!("{line}");
    fs.remount("rw");

    // Left by a killed ecsd (its -wal and -shm still there), then read-only:
    // SQLite opens it read-only without an error, and ecsd must refuse.
    let mut child = Command::new(env!("CARGO_BIN_EXE_ecsd"))
        .arg("--data-dir")
        .arg(&data)
        .args(["serve", "--insecure-http", "--listen", "127.0.0.1:0"])
        .env("ECSD_MASTER_KEY", key.expose_secret())
        .env_remove("ECSD_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let shm = data.join("ecsd.db-shm");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(shm.exists() && data.join("ecsd.db-wal").exists()) {
        assert!(Instant::now() < deadline, "ecsd made no -wal/-shm");
        assert!(child.try_wait().unwrap().is_none(), "ecsd exited");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(shm.exists());
    fs.remount("ro");
    let (code, err) = serve_must_fail(&data, Some(&key));
    let line = assert_clean_failure(
        code,
        &err,
        &[
            &db.display().to_string(),
            "cannot write the database",
            "writable",
        ],
    );
    eprintln!("{line}");
}

/// A 0400 database in a directory its (unprivileged) user may write:
/// SQLite opens it read-only without an error, and ecsd must refuse at once
/// rather than at its first write. Run as uid 65534 (root ignores modes);
/// skipped when the test cannot switch users.
#[test]
fn a_database_file_its_user_may_not_write_stops_start_up() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    let key = ecsd::secrets::MasterKey::generate_base64();
    data_dir(&data, &key);
    let db = data.join("ecsd.db");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o400)).unwrap();
    let nobody = 65534;
    if std::os::unix::fs::chown(&data, Some(nobody), Some(nobody))
        .and_then(|()| std::os::unix::fs::chown(&db, Some(nobody), Some(nobody)))
        .is_err()
    {
        eprintln!("SKIPPED a_database_file_its_user_may_not_write: cannot chown (not root)");
        return;
    }
    let (code, err) = serve_as_must_fail(&data, Some(&key), Some(nobody));
    let line = assert_clean_failure(
        code,
        &err,
        &[
            &db.display().to_string(),
            "cannot write the database",
            "the file or its file system is read-only",
        ],
    );
    eprintln!("{line}");
}

#[test]
fn a_garbage_or_truncated_database_stops_start_up_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let key = ecsd::secrets::MasterKey::generate_base64();

    // Garbage: 64 KiB that are not SQLite.
    let garbage = dir.path().join("garbage");
    std::fs::create_dir(&garbage).unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let bytes: Vec<u8> = (0..65536)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let db = garbage.join("ecsd.db");
    std::fs::write(&db, &bytes).unwrap();
    let (code, err) = serve_must_fail(&garbage, Some(&key));
    let line = assert_clean_failure(
        code,
        &err,
        &[&db.display().to_string(), "damaged", "backup"],
    );
    eprintln!("{line}");
    assert_eq!(std::fs::read(&db).unwrap(), bytes, "the file was changed");

    // Truncated: a real database cut to half its size.
    let cut = dir.path().join("truncated");
    data_dir(&cut, &key);
    let db = cut.join("ecsd.db");
    assert!(!cut.join("ecsd.db-wal").exists());
    let len = std::fs::metadata(&db).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let (code, err) = serve_must_fail(&cut, Some(&key));
    let line = assert_clean_failure(
        code,
        &err,
        &[&db.display().to_string(), "damaged", "backup"],
    );
    eprintln!("{line}");
}

#[test]
fn start_up_without_the_master_key_is_one_clear_error_without_a_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = ecsd::secrets::MasterKey::generate_base64();
    data_dir(&data, &key);
    let (code, err) = serve_must_fail(&data, None);
    let line = assert_clean_failure(
        code,
        &err,
        &["master_key is not configured", "ECSD_MASTER_KEY"],
    );
    eprintln!("{line}");
    // A wrong key (not base64 of 32 bytes) too.
    let (code, err) = serve_must_fail(&data, Some(&SecretString::from("nope".to_owned())));
    assert_clean_failure(code, &err, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_are_judged_by_the_server_clock_within_the_window_after_a_jump() {
    let t = TestServer::start().await;
    let path = format!("/v1/{}/cloudservers/detail", t.project);
    let (ak, sk) = (t.ak.clone(), t.sk.clone());
    let signed_at =
        |at: chrono::DateTime<chrono::Utc>| at.format(ecs_sign::DATE_FORMAT).to_string();
    for jump in [chrono::Duration::hours(1), chrono::Duration::hours(-1)] {
        t.state.clock.jump(jump);
        let server_now = t.state.clock.now();
        // Successes between the refusals: never five failures in a row
        // (that would lock the key).
        for (offset_min, ok) in [
            (0, true),
            (16, false),
            (14, true),
            (-16, false),
            (-14, true),
        ] {
            let date = signed_at(server_now + chrono::Duration::minutes(offset_min));
            let r = t
                .call_signed_at(&ak, &sk, &date, "GET", &path, None, &[])
                .await;
            if ok {
                assert_eq!(r.status, 200, "jump {jump}, {offset_min} min: {}", r.text);
            } else {
                let e = assert_gateway(&r, 401, "APIGW.0301");
                assert!(e.error_msg.contains("15 minutes"), "{}", e.error_msg);
            }
        }
        // Signed by the machine's own clock, an hour from the server's: refused.
        let date = signed_at(chrono::Utc::now());
        let r = t
            .call_signed_at(&ak, &sk, &date, "GET", &path, None, &[])
            .await;
        assert_gateway(&r, 401, "APIGW.0301");
        t.state.clock.jump(-jump);
        let r = t.call("GET", &path, None).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_jobs_expire_by_stored_wall_clock_times_across_clock_jumps() {
    let t = TestServer::start_with(|c| c.job_timeout_secs = 600).await;
    let (a, _) = t.server(&t.project, "clock", Linux, true).await;
    let body = body(&ServerAction::Reboot {
        servers: refs(&[&a]),
        kind: ActionKind::Soft,
    });
    let r = t.call("POST", &t.action_path(), Some(&body)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.json::<JobResult>().job_id;
    // Read the job signed by the server's clock (which has jumped).
    let show = async |t: &TestServer, id: &str| {
        let date = t
            .state
            .clock
            .now()
            .format(ecs_sign::DATE_FORMAT)
            .to_string();
        let path = format!("/v1/{}/jobs/{id}", t.project);
        let r = t
            .call_signed_at(&t.ak, &t.sk, &date, "GET", &path, None, &[])
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.json::<ecs_api::ShowJobResponse>()
    };
    let open =
        |j: &ecs_api::ShowJobResponse| !matches!(j.status, JobStatus::Fail | JobStatus::Success);

    // Forward by less than the timeout (5 of 10 minutes): not expired.
    t.state.clock.jump(chrono::Duration::minutes(5));
    assert_eq!(ecsd::server::expire_jobs(&t.state).await.unwrap(), 0);
    // Back by an hour: not expired either (expiry is only later).
    t.state.clock.jump(chrono::Duration::hours(-1));
    assert_eq!(ecsd::server::expire_jobs(&t.state).await.unwrap(), 0);
    assert!(open(&show(&t, &id).await));
    // Forward past the timeout as the stored begin time counts it (1 h back,
    // then 1 h 6 min forward: 11 minutes after the begin time): expired,
    // by this sweep or by the background sweeper that reads the same clock.
    t.state.clock.jump(chrono::Duration::minutes(66));
    let _ = ecsd::server::expire_jobs(&t.state).await.unwrap();
    let j = show(&t, &id).await;
    assert_eq!(j.status, JobStatus::Fail);
    assert_eq!(j.error_code.as_deref(), Some("Ecs.0227"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_file_shrinks_after_a_retention_round() {
    let t = TestServer::start().await;
    let mut servers = Vec::new();
    for i in 0..20 {
        servers.push(t.server(&t.project, &format!("v{i}"), Linux, true).await.0);
    }
    // 1000 resets of 20 servers, 40 days old, every one superseded by the
    // next but the last: all past reset_retention_days (30).
    let old = chrono::Utc::now() - chrono::Duration::days(40);
    for i in 0..1000 {
        let rid = uuid::Uuid::new_v4().simple().to_string();
        t.state
            .store
            .create_reset(ecsd::store::NewReset {
                request_id: rid.clone(),
                project_id: t.project.clone(),
                apply_now: false,
                created: old + chrono::Duration::milliseconds(i),
                targets: servers.iter().map(|s| (s.clone(), vec![3; 200])).collect(),
                audit: ecsd::store::AuditEntry {
                    at: chrono::Utc::now(),
                    request_id: rid,
                    project_id: t.project.clone(),
                    actor: "faults".into(),
                    action: "batch-reset-password".into(),
                    servers: servers.clone(),
                    dry_run: false,
                    outcome: "accepted".into(),
                    source: "test".into(),
                    user_id: None,
                    user_name: None,
                    error_code: None,
                    http_status: None,
                },
            })
            .await
            .unwrap();
    }
    t.state.lifecycle.checkpoint().await.unwrap();
    let size = || std::fs::metadata(t.db_path()).unwrap().len();
    let full = size();
    let pruned = ecsd::lifecycle::retention_round(
        &t.state,
        chrono::Utc::now(),
        ecsd::lifecycle::Retention::from_config(&t.state.config),
    )
    .await
    .unwrap();
    assert_eq!(pruned.resets, 999, "all but the open one");
    let after = size();
    assert!(pruned.pages > 0, "{pruned:?}");
    assert!(after < full / 2, "{full} -> {after} bytes ({pruned:?})");
    eprintln!("{full} -> {after} bytes ({pruned:?})");
    // The server still serves and takes new resets.
    let r = t
        .call(
            "PUT",
            &t.batch_path(),
            Some(&ids_body(Some(PW), None, &[servers[0].as_str()])),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}
