//! The real `ecsctl` binary against a real `ecsd --dev` (with its simulated
//! fleet running the real agent code).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

const PASSWORD: &str = "Tq6]vL3=nz";

struct Dev {
    child: Child,
    dir: tempfile::TempDir,
    creds: PathBuf,
}

impl Dev {
    fn start() -> Dev {
        Dev::start_with_env(&[])
    }

    /// `ecsd --dev` with these environment variables; its standard error goes
    /// to `ecsd.log` in the test directory.
    fn start_with_env(env: &[(&str, &str)]) -> Dev {
        let dir = tempfile::tempdir().unwrap();
        let ecsd = Path::new(env!("CARGO_BIN_EXE_ecsctl")).with_file_name("ecsd");
        assert!(
            ecsd.exists(),
            "build the workspace binaries first (cargo build --workspace --bins)"
        );
        let mut child = Command::new(ecsd)
            .args([
                "--data-dir",
                dir.path().join("data").to_str().unwrap(),
                "serve",
                "--dev",
                "--listen",
                "127.0.0.1:0",
            ])
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("ecsd.log")).unwrap())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let creds = loop {
            let line = lines.next().expect("ecsd printed its credentials").unwrap();
            if let Some(p) = line.strip_prefix("credentials: ") {
                break PathBuf::from(p);
            }
        };
        Dev { child, dir, creds }
    }

    fn ecsctl(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ecsctl"));
        c.env("ECS_DEV_CREDENTIALS", &self.creds)
            .env("ECSCTL_CONFIG", self.dir.path().join("config.toml"))
            .env_remove("ECS_ENDPOINT")
            .env_remove("ECS_SECRET_KEY");
        c
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = self
            .ecsctl()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(s) = stdin {
            child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        } else {
            drop(child.stdin.take());
        }
        child.wait_with_output().unwrap()
    }

    fn fleet_roots(&self) -> Vec<PathBuf> {
        let base = self.dir.path().join("data/fleet");
        let mut v: Vec<PathBuf> = std::fs::read_dir(base)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect();
        v.sort();
        v
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn first_hash(root: &Path) -> String {
    let t = std::fs::read_to_string(root.join("etc/shadow")).unwrap();
    t.lines()
        .next()
        .unwrap()
        .split(':')
        .nth(1)
        .unwrap()
        .to_owned()
}

#[test]
fn reset_reboot_wait_applies_on_every_server_and_leaks_nothing() {
    let dev = Dev::start_with_env(&[("RUST_LOG", "debug")]);
    // Watch the process list while the command runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen_in_argv = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (stop, seen) = (stop.clone(), seen_in_argv.clone());
        std::thread::spawn(move || {
            let mut scans = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for e in std::fs::read_dir("/proc").unwrap().flatten() {
                    if let Ok(cmd) = std::fs::read(e.path().join("cmdline"))
                        && cmd
                            .windows(PASSWORD.len())
                            .any(|w| w == PASSWORD.as_bytes())
                    {
                        seen.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                }
                scans += 1;
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            scans
        })
    };
    let o = dev.run(
        &[
            "reset-password",
            "--all",
            "--password-stdin",
            "--reboot",
            "--wait",
            "--timeout",
            "60",
        ],
        Some(&format!("{PASSWORD}\n")),
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let scans = watcher.join().unwrap();
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "stdout: {out}\nstderr: {err}");
    assert!(out.contains("4 applied, 0 failed"), "{out}");
    assert!(scans > 0);
    assert!(
        !seen_in_argv.load(std::sync::atomic::Ordering::SeqCst),
        "the password appeared in a command line"
    );
    assert!(!out.contains(PASSWORD) && !err.contains(PASSWORD));
    assert!(
        !out.contains('\x1b') && !err.contains('\x1b'),
        "colours or bars on a non-terminal"
    );
    use yescrypt::PasswordVerifier;
    for root in dev.fleet_roots() {
        let h = first_hash(&root);
        sha_crypt::ShaCrypt::default()
            .verify_password(PASSWORD.as_bytes(), h.as_str())
            .unwrap_or_else(|_| panic!("{root:?} does not verify"));
    }
    // `configure` writes a 0600 profile that holds no password.
    let o = dev.run(
        &["configure", "--from-dev", dev.creds.to_str().unwrap()],
        None,
    );
    assert_eq!(o.status.code(), Some(0));
    let cfg = dev.dir.path().join("config.toml");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&cfg).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(!std::fs::read_to_string(&cfg).unwrap().contains(PASSWORD));
    // The profile alone is enough.
    let o = dev.run(&["servers", "list"], None);
    assert_eq!(o.status.code(), Some(0));
    // No file ecsd or the fleet wrote (database, WAL, agent state, shadow
    // files, the profile) and not ecsd's debug log holds the password.
    let mut files = Vec::new();
    let mut dirs = vec![dev.dir.path().to_owned()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                files.push(p);
            }
        }
    }
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "ecsd.db",
        "ecsd.db-wal",
        "ecsd.log",
        "shadow",
        "config.toml",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    assert!(
        std::fs::metadata(dev.dir.path().join("ecsd.log"))
            .unwrap()
            .len()
            > 10_000,
        "ecsd's debug log is suspiciously short"
    );
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        assert!(
            !bytes
                .windows(PASSWORD.len())
                .any(|w| w == PASSWORD.as_bytes()),
            "the password is in {f:?}"
        );
    }
}

#[test]
fn a_policy_violation_is_caught_locally_and_nothing_is_sent() {
    let dev = Dev::start();
    let before = dev.run(&["resets", "show", "latest", "-o", "json"], None);
    assert_eq!(before.status.code(), Some(3), "no reset exists yet");
    let o = dev.run(
        &["reset-password", "--all", "--password-stdin"],
        Some("password\n"),
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("checked locally") && err.contains("three of"),
        "{err}"
    );
    // A Windows-only rule names the OS.
    let o = dev.run(
        &["reset-password", "--all", "--password-stdin"],
        Some("Qmin7!pLx2\n"),
    );
    assert!(text(&o).1.contains("for Windows servers"));
    let after = dev.run(&["resets", "show", "latest"], None);
    assert_eq!(after.status.code(), Some(3), "a reset reached the server");
    // Without a terminal and without --password-stdin, it refuses rather than hang.
    let o = dev.run(&["reset-password", "--all"], None);
    assert_eq!(o.status.code(), Some(3));
}

#[test]
fn a_rejected_batch_quotes_the_api_code_and_request_id() {
    let dev = Dev::start();
    let o = dev.run(
        &["reset-password", "no-such-server", "--password-stdin"],
        Some(&format!("{PASSWORD}\n")),
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("Ecs.0114") && err.contains("no-such-server") && err.contains("request "),
        "{err}"
    );
    // -v prints every call's request id.
    let o = dev.run(&["-v", "servers", "list"], None);
    assert!(text(&o).1.contains("GET /v1/") && text(&o).1.contains("request "));
}

#[test]
fn json_output_parses_and_filters_work() {
    let dev = Dev::start();
    let o = dev.run(&["servers", "list", "-o", "json"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["count"], 4);
    let o = dev.run(&["servers", "list", "--os", "windows", "-o", "json"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["count"], 1);
    let id = v["servers"][0]["id"].as_str().unwrap().to_owned();
    let o = dev.run(&["servers", "show", &id, "-o", "json"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["metadata"]["os_type"], "Windows");
    // Stop and start by name pattern, waiting for the job.
    let o = dev.run(
        &[
            "servers",
            "stop",
            "--name",
            "dev-linux-000[12]",
            "-o",
            "json",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let job: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(job["status"], "SUCCESS");
    assert_eq!(job["entities"]["sub_jobs_total"], 2);
    let o = dev.run(
        &["servers", "list", "--status", "SHUTOFF", "-o", "json"],
        None,
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["count"],
        2
    );
    let o = dev.run(&["servers", "start", "--name", "dev-linux-000[12]"], None);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    // Dry run shows readiness as JSON.
    let o = dev.run(
        &[
            "reset-password",
            "--all",
            "--dry-run",
            "--password-stdin",
            "-o",
            "json",
        ],
        Some(&format!("{PASSWORD}\n")),
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["servers"].as_array().unwrap().len(), 4);
    assert!(
        v["servers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["plugin_installed"] == true)
    );
}

#[test]
fn waiting_without_a_restart_times_out_with_exit_code_5() {
    let dev = Dev::start();
    let o = dev.run(
        &[
            "reset-password",
            "--all",
            "--password-stdin",
            "--wait",
            "--timeout",
            "1",
        ],
        Some(&format!("{PASSWORD}\n")),
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(5), "{out}\n{err}");
    assert!(
        out.contains("4 delivered") || out.contains("pending"),
        "{out}"
    );
    // Targets from a file (ids or names), enroll tokens, completions.
    let file = dev.dir.path().join("targets.txt");
    std::fs::write(&file, "# web tier\ndev-linux-0001\n\ndev-linux-0002\n").unwrap();
    let o = dev.run(
        &[
            "reset-password",
            "--from-file",
            file.to_str().unwrap(),
            "--password-stdin",
            "--apply-now",
            "--wait",
            "--timeout",
            "30",
        ],
        Some(&format!("{PASSWORD}\n")),
    );
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    assert!(text(&o).0.contains("2 applied"));
    let o = dev.run(
        &["enroll-token", "create", "--uses", "3", "-o", "json"],
        None,
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["token"].as_str().unwrap().starts_with("ecset_"));
    assert_eq!(v["uses"], 3);
    let o = dev.run(&["completions", "bash"], None);
    assert!(String::from_utf8_lossy(&o.stdout).contains("ecsctl"));
}

/// The README's quick start exactly as a person types it: on a terminal
/// (a pseudo-terminal from `script`), the password asked twice without echo.
#[test]
fn the_readme_quick_start_on_a_terminal() {
    if !Path::new("/usr/bin/script").exists() {
        panic!("util-linux `script` is needed to give ecsctl a terminal");
    }
    let dev = Dev::start();
    let cmd = format!(
        "{} reset-password --all --reboot --wait --timeout 60",
        env!("CARGO_BIN_EXE_ecsctl")
    );
    let mut child = Command::new("/usr/bin/script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("ECS_DEV_CREDENTIALS", &dev.creds)
        .env("ECSCTL_CONFIG", dev.dir.path().join("config.toml"))
        .env_remove("NO_COLOR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Answer the two prompts, then keep the terminal open until ecsctl ends.
    let feeder = std::thread::spawn(move || {
        for _ in 0..2 {
            std::thread::sleep(std::time::Duration::from_millis(700));
            let _ = stdin.write_all(format!("{PASSWORD}\n").as_bytes());
            let _ = stdin.flush();
        }
        std::thread::sleep(std::time::Duration::from_secs(30));
    });
    let o = child.wait_with_output().unwrap();
    drop(feeder);
    let (out, _) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("New password:") && out.contains("Again:"),
        "{out}"
    );
    assert!(out.contains("4 applied, 0 failed"), "{out}");
    assert!(!out.contains(PASSWORD), "the password was echoed");
    use yescrypt::PasswordVerifier;
    for root in dev.fleet_roots() {
        let h = first_hash(&root);
        assert!(
            sha_crypt::ShaCrypt::default()
                .verify_password(PASSWORD.as_bytes(), h.as_str())
                .is_ok()
        );
    }
}

#[test]
fn servers_tag_adds_removes_and_the_list_filter_sees_it() {
    let dev = Dev::start();
    let o = dev.run(&["servers", "list", "-o", "json"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = v["servers"][0]["id"].as_str().unwrap().to_owned();
    let o = dev.run(
        &[
            "servers",
            "tag",
            &id,
            "--add",
            "env=staging",
            "--add",
            "team=db",
            "-o",
            "json",
        ],
        None,
    );
    assert!(o.status.success(), "{:?}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"tags": [{"key": "env", "value": "staging"}, {"key": "team", "value": "db"}]})
    );
    let o = dev.run(
        &["servers", "tag", &id, "--remove", "team", "-o", "json"],
        None,
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"tags": [{"key": "env", "value": "staging"}]})
    );
    let o = dev.run(&["servers", "show", &id, "-o", "json"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["tags"], serde_json::json!(["env=staging"]));
    // A bad key is the API's 400, named.
    let o = dev.run(&["servers", "tag", &id, "--add", "bad key=x"], None);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("tags[0].key"), "{:?}", text(&o));
}
