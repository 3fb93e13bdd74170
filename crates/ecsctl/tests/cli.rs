//! The real `ecsctl` binary against a real `ecsd --dev` (with its simulated
//! fleet running the real agent code).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use ecs_api::{
    EnrollTokenResponse, JobStatus, ListServersResponse, Readiness, ServerDetail, ShowJobResponse,
};

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

/// `ecsctl -o json` output as the `ecs-api` type it prints; panics with the
/// output when it is not one.
#[track_caller]
fn json<T: serde::de::DeserializeOwned>(o: &Output) -> T {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not a {}: {e}\n{:?}", std::any::type_name::<T>(), text(o)))
}

/// What `reset-password --dry-run -o json` prints.
#[derive(serde::Deserialize)]
struct DryRun {
    dry_run: bool,
    servers: Vec<Readiness>,
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
    assert_eq!(json::<ListServersResponse>(&o).count, 4);
    let o = dev.run(&["servers", "list", "--os", "windows", "-o", "json"], None);
    let v: ListServersResponse = json(&o);
    assert_eq!(v.count, 1);
    let id = v.servers[0].detail().expect("a listed server").id.clone();
    let o = dev.run(&["servers", "show", &id, "-o", "json"], None);
    let v: ServerDetail = json(&o);
    assert_eq!(
        v.metadata.get("os_type").map(String::as_str),
        Some("Windows")
    );
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
    let job: ShowJobResponse = json(&o);
    assert_eq!(job.status, JobStatus::Success);
    assert_eq!(job.entities.sub_jobs_total, 2);
    let o = dev.run(
        &["servers", "list", "--status", "SHUTOFF", "-o", "json"],
        None,
    );
    assert_eq!(json::<ListServersResponse>(&o).count, 2);
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
    let v: DryRun = json(&o);
    assert!(v.dry_run);
    assert_eq!(v.servers.len(), 4);
    assert!(v.servers.iter().all(|s| s.plugin_installed));
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
    let v: EnrollTokenResponse = json(&o);
    assert!(v.token.starts_with("ecset_"));
    assert_eq!(v.uses, 3);
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

/// `ecsd admin` against the running dev server's data directory.
fn ecsd_admin(dev: &Dev, args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let ecsd = Path::new(env!("CARGO_BIN_EXE_ecsctl")).with_file_name("ecsd");
    let data = dev.dir.path().join("data");
    let o = Command::new(ecsd)
        .args(["--data-dir", data.to_str().unwrap(), "admin"])
        .args(args)
        .output()
        .unwrap();
    let (out, err) = text(&o);
    (
        o.status.code(),
        serde_json::from_str(&out).unwrap_or(serde_json::Value::Null),
        format!("{out}{err}"),
    )
}

#[test]
fn audit_shows_changes_and_denials_and_admin_disables_a_key() {
    let dev = Dev::start();
    let creds: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&dev.creds).unwrap()).unwrap();
    let ak = creds["ak"].as_str().unwrap().to_owned();
    let sk = creds["sk"].as_str().unwrap().to_owned();
    let o = dev.run(
        &["reset-password", "--all", "--dry-run", "--password-stdin"],
        Some(&format!("{PASSWORD}\n")),
    );
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    // A wrong secret key: denied, and recorded.
    let o = dev
        .ecsctl()
        .env("ECS_SECRET_KEY", "W".repeat(40))
        .args(["servers", "list"])
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0));
    assert!(text(&o).1.contains("APIGW.0301"), "{:?}", text(&o));

    let o = dev.run(&["audit", "-o", "json"], None);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let (out, _) = text(&o);
    assert!(!out.contains(PASSWORD) && !out.contains(&sk));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let traces = v["traces"].as_array().unwrap();
    assert_eq!(v["count"], traces.len());
    let dry = traces
        .iter()
        .find(|t| t["trace_name"] == "batch-reset-password")
        .expect("the dry run");
    assert_eq!(
        (dry["dry_run"].as_bool(), dry["trace_rating"].as_str()),
        (Some(true), Some("normal"))
    );
    assert_eq!(dry["resource_ids"].as_array().unwrap().len(), 4);
    assert_eq!(dry["user"]["access_key_id"], ak.as_str());
    let o = dev.run(&["audit", "--status", "fail", "-o", "json"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = v["traces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["error_code"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["APIGW.0301"]);
    let o = dev.run(&["audit", "--action", "batch-reset-password"], None);
    let (table, _) = text(&o);
    assert!(
        table.starts_with("TIME") && table.contains("batch-reset-password"),
        "{table}"
    );
    assert!(!table.contains("list-servers"), "{table}");

    // ecsd admin: list (never the SK), disable (the next call fails), enable.
    let (code, keys, all) = ecsd_admin(&dev, &["access-key", "list"]);
    assert_eq!(code, Some(0), "{all}");
    assert!(!all.contains(&sk));
    assert_eq!(keys[0]["ak"], ak.as_str());
    assert_eq!(keys[0]["status"], "active");
    let (code, _, all) = ecsd_admin(&dev, &["access-key", "disable", &ak]);
    assert_eq!(code, Some(0), "{all}");
    let o = dev.run(&["servers", "list"], None);
    assert_ne!(o.status.code(), Some(0));
    assert!(text(&o).1.contains("APIGW.0301"), "{:?}", text(&o));
    let (code, _, all) = ecsd_admin(&dev, &["access-key", "enable", &ak]);
    assert_eq!(code, Some(0), "{all}");
    let o = dev.run(&["servers", "list"], None);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let (code, tokens, all) = ecsd_admin(&dev, &["enroll-token", "list"]);
    assert_eq!(code, Some(0), "{all}");
    assert!(tokens.is_array(), "{all}");
}

#[test]
fn login_uses_the_token_until_it_expires_and_logout_revokes_it() {
    // Tokens live 3 seconds on this ecsd.
    let dev = Dev::start_with_env(&[("ECSD_TOKEN_TTL_SECS", "3")]);
    let creds: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&dev.creds).unwrap()).unwrap();
    let password = creds["password"].as_str().unwrap();
    assert_eq!(creds["user"], "dev-admin");
    // Domain, user, endpoint, CA and project come from the dev file.
    let o = dev.run(
        &["login", "--password-stdin"],
        Some(&format!("{password}\n")),
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(err.contains("logged in as dev-admin"), "{err}");
    let cfg_path = dev.dir.path().join("config.toml");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    assert!(cfg.contains("token = "), "{cfg}");
    assert!(!cfg.contains(password), "the password was stored");
    assert!(
        !cfg.contains(creds["sk"].as_str().unwrap()),
        "the dev SK was copied"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&cfg_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Without the dev file, only the profile's token authenticates.
    let profile_only = |args: &[&str]| {
        let o = dev
            .ecsctl()
            .env_remove("ECS_DEV_CREDENTIALS")
            .env_remove("ECS_ACCESS_KEY")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (o.status.success(), text(&o))
    };
    let (ok, (out, err)) = profile_only(&["-o", "json", "servers", "list"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("dev-linux-"), "{out}");
    // Expired: the command says to log in again.
    std::thread::sleep(std::time::Duration::from_millis(3300));
    let (ok, (_, err)) = profile_only(&["servers", "list"]);
    assert!(!ok);
    assert!(err.contains("run `ecsctl login` again"), "{err}");
    // A wrong password is refused with IAM's message.
    let o = dev.run(&["login", "--password-stdin"], Some("Wrong-password-1\n"));
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("username or password"), "{err}");
    // Log in again, then log out: the token is revoked on the server.
    let o = dev.run(
        &["login", "--password-stdin"],
        Some(&format!("{password}\n")),
    );
    assert!(o.status.success(), "{:?}", text(&o));
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    let token = cfg
        .lines()
        .find_map(|l| l.strip_prefix("token = "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let (ok, _) = profile_only(&["logout"]);
    assert!(ok);
    assert!(!std::fs::read_to_string(&cfg_path).unwrap().contains(&token));
    let (ok, (_, err)) = profile_only(&["servers", "list"]);
    assert!(!ok, "{err}");
    // The server no longer accepts it: put it back, unexpired, and try.
    std::fs::write(&cfg_path, &cfg).unwrap();
    let (ok, (_, err)) = profile_only(&["servers", "list"]);
    assert!(!ok);
    assert!(err.contains("decrypt token fail"), "{err}");
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

/// `ecsd admin` with `stdin` written to its standard input.
fn ecsd_admin_stdin(
    dev: &Dev,
    args: &[&str],
    stdin: &str,
) -> (Option<i32>, serde_json::Value, String) {
    let ecsd = Path::new(env!("CARGO_BIN_EXE_ecsctl")).with_file_name("ecsd");
    let data = dev.dir.path().join("data");
    let mut child = Command::new(ecsd)
        .args(["--data-dir", data.to_str().unwrap(), "admin"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let (out, err) = text(&o);
    (
        o.status.code(),
        serde_json::from_str(&out).unwrap_or(serde_json::Value::Null),
        format!("{out}{err}"),
    )
}

/// Issue #10's "done when": an admin creates a user whose group's policy
/// allows resets only on servers tagged env=staging; the user logs in with
/// `ecsctl login`, resets the staging servers, is refused on a production
/// server with 403 naming it, and both calls are in `ecsctl audit`.
#[test]
fn a_staging_only_user_logs_in_resets_staging_is_refused_on_production_and_both_are_audited() {
    let dev = Dev::start();
    let creds: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&dev.creds).unwrap()).unwrap();
    let project = creds["project_id"].as_str().unwrap().to_owned();
    // The admin (dev AK/SK) tags two Linux servers staging, one production.
    let o = dev.run(&["servers", "list", "--os", "linux", "-o", "json"], None);
    let list: ecs_api::ListServersResponse = serde_json::from_slice(&o.stdout).unwrap();
    let ids: Vec<String> = list
        .servers
        .iter()
        .map(|s| s.detail().unwrap().id.clone())
        .collect();
    assert!(ids.len() >= 3, "{ids:?}");
    let (staging, prod) = (&ids[..2], &ids[2]);
    for (id, env) in [
        (&staging[0], "env=staging"),
        (&staging[1], "env=staging"),
        (prod, "env=production"),
    ] {
        let o = dev.run(&["servers", "tag", id, "--add", env], None);
        assert!(o.status.success(), "{:?}", text(&o));
    }
    // A read-only user, in a group whose policy allows resets on staging only.
    let (code, user, all) = ecsd_admin_stdin(
        &dev,
        &[
            "user",
            "create",
            "--domain",
            "default",
            "--name",
            "alice",
            "--role",
            "readonly",
            "--project",
            &project,
            "--password-stdin",
        ],
        "Alice-Staging-42!\n",
    );
    assert_eq!(code, Some(0), "{all}");
    let user_id = user["id"].as_str().expect("the user's id").to_owned();
    let policy = dev.dir.path().join("staging.json");
    std::fs::write(
        &policy,
        r#"{"Version": "1.1", "Statement": [{"Effect": "Allow",
            "Action": ["ecs:cloudServers:resetServerPwd"],
            "Condition": {"StringEquals": {"ecs:ResourceTag/env": ["staging"]}}}]}"#,
    )
    .unwrap();
    for args in [
        vec![
            "policy",
            "create",
            "--name",
            "staging-resets",
            "--file",
            policy.to_str().unwrap(),
        ],
        vec!["group", "create", "--name", "staging-ops"],
        vec![
            "group",
            "add-user",
            "--group",
            "staging-ops",
            "--user",
            &user_id,
        ],
        vec![
            "group",
            "attach",
            "--group",
            "staging-ops",
            "--project",
            &project,
            "--policy",
            "staging-resets",
        ],
    ] {
        let (code, _, all) = ecsd_admin(&dev, &args);
        assert_eq!(code, Some(0), "{args:?}: {all}");
    }
    // alice logs in and resets the staging servers: accepted.
    let o = dev.run(
        &["login", "--user", "alice", "--password-stdin"],
        Some("Alice-Staging-42!\n"),
    );
    assert!(o.status.success(), "{:?}", text(&o));
    // From here on only the profile's token speaks for alice (no dev AK/SK).
    let as_alice = |args: &[&str]| {
        let mut child = dev
            .ecsctl()
            .env_remove("ECS_DEV_CREDENTIALS")
            .env_remove("ECS_ACCESS_KEY")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(format!("{PASSWORD}\n").as_bytes()).unwrap();
        drop(stdin);
        child.wait_with_output().unwrap()
    };
    let mut args = vec!["reset-password", "--password-stdin"];
    args.extend(staging.iter().map(String::as_str));
    let o = as_alice(&args);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    // ... and is refused on the production server, which the error names.
    let o = as_alice(&["reset-password", "--password-stdin", prod]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("APIGW.0302") && err.contains(prod.as_str()),
        "{err}"
    );
    // Both calls are in the audit trail, read by the admin.
    let o = dev.run(&["logout"], None);
    assert!(o.status.success(), "{:?}", text(&o));
    let o = dev.run(
        &["audit", "--action", "batch-reset-password", "-o", "json"],
        None,
    );
    assert!(o.status.success(), "{:?}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let traces = v["traces"].as_array().unwrap();
    let by_alice: Vec<&serde_json::Value> = traces
        .iter()
        .filter(|t| t["user"]["user_name"] == "alice" || t["user"]["name"] == "alice")
        .collect();
    let ok = by_alice
        .iter()
        .find(|t| t["trace_rating"] == "normal")
        .unwrap_or_else(|| panic!("no accepted reset by alice in {v}"));
    assert_eq!(ok["resource_ids"], serde_json::json!(staging));
    let denied = by_alice
        .iter()
        .find(|t| t["error_code"] == "APIGW.0302")
        .unwrap_or_else(|| panic!("no denied reset by alice in {v}"));
    assert!(denied.to_string().contains(prod.as_str()), "{denied}");
    assert!(
        !o.stdout
            .windows(PASSWORD.len())
            .any(|w| w == PASSWORD.as_bytes())
    );
}

/// The same scenario administered entirely remotely with ecsctl (no access
/// to ecsd's data directory): the admin creates a user with no role of its
/// own, a policy, a group with the read-only role and the policy; the user
/// logs in (its groups' grants are its only rights), resets staging, and is
/// refused on production.
#[test]
fn an_admin_sets_up_a_staging_only_user_remotely_with_ecsctl() {
    let dev = Dev::start();
    let o = dev.run(&["servers", "list", "--os", "linux", "-o", "json"], None);
    let list: ecs_api::ListServersResponse = serde_json::from_slice(&o.stdout).unwrap();
    let ids: Vec<String> = list
        .servers
        .iter()
        .map(|s| s.detail().unwrap().id.clone())
        .collect();
    let (staging, prod) = (&ids[0], &ids[1]);
    for (id, env) in [(staging, "env=staging"), (prod, "env=production")] {
        let o = dev.run(&["servers", "tag", id, "--add", env], None);
        assert!(o.status.success(), "{:?}", text(&o));
    }
    let policy = dev.dir.path().join("staging.json");
    std::fs::write(
        &policy,
        r#"{"Version": "1.1", "Statement": [{"Effect": "Allow",
            "Action": ["ecs:cloudServers:resetServerPwd"],
            "Condition": {"StringEquals": {"ecs:ResourceTag/env": ["staging"]}}}]}"#,
    )
    .unwrap();
    for (args, stdin) in [
        (
            vec!["users", "create", "bob", "--password-stdin"],
            Some("Bob-Staging-42!\n"),
        ),
        (
            vec![
                "policies",
                "create",
                "staging-resets",
                "--file",
                policy.to_str().unwrap(),
            ],
            None,
        ),
        (vec!["groups", "create", "staging-ops"], None),
        (vec!["groups", "add-user", "staging-ops", "bob"], None),
        (
            vec!["groups", "grant", "staging-ops", "--role", "readonly"],
            None,
        ),
        (
            vec![
                "groups",
                "grant",
                "staging-ops",
                "--policy",
                "staging-resets",
            ],
            None,
        ),
    ] {
        let o = dev.run(&args, stdin);
        assert!(o.status.success(), "{args:?}: {:?}", text(&o));
    }
    let o = dev.run(
        &["login", "--user", "bob", "--password-stdin"],
        Some("Bob-Staging-42!\n"),
    );
    assert!(o.status.success(), "{:?}", text(&o));
    let as_bob = |args: &[&str]| {
        let mut child = dev
            .ecsctl()
            .env_remove("ECS_DEV_CREDENTIALS")
            .env_remove("ECS_ACCESS_KEY")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(format!("{PASSWORD}\n").as_bytes()).unwrap();
        drop(stdin);
        child.wait_with_output().unwrap()
    };
    let o = as_bob(&["reset-password", "--password-stdin", staging]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let o = as_bob(&["reset-password", "--password-stdin", prod]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("APIGW.0302") && err.contains(prod.as_str()),
        "{err}"
    );
    // bob may not administer IAM.
    let o = as_bob(&["users", "list"]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("APIGW.0302"), "{:?}", text(&o));
}

/// The servers of the dev fleet, from the dev credentials file.
fn server_ids(dev: &Dev) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Creds {
        servers: Vec<ecsd_server::DevServer>,
    }
    mod ecsd_server {
        #[derive(serde::Deserialize)]
        pub struct DevServer {
            pub id: String,
        }
    }
    let c: Creds = serde_json::from_slice(&std::fs::read(&dev.creds).unwrap()).unwrap();
    c.servers.into_iter().map(|s| s.id).collect()
}

/// Issue 15: a batch of the dev fleet with generated passwords. Every
/// server's shadow hash verifies against the password `ecsctl passwords
/// show` decrypts with the dev escrow identity (and the `age` tool
/// decrypts the same from the escrowed blob), no two servers share one,
/// and no file ecsd wrote (database, WAL, debug log) nor the fleet's holds
/// any of them.
#[test]
fn generated_passwords_are_unique_escrowed_and_open_with_ecsctl_and_age() {
    let dev = Dev::start_with_env(&[("RUST_LOG", "debug")]);
    let identity = dev.dir.path().join("data/dev-escrow-identity.txt");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&identity).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The dev recipient is registered at once.
    let o = dev.run(&["escrow", "list", "-o", "json"], None);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let list: ecs_api::RecipientList = json(&o);
    assert_eq!(list.recipients.len(), 1, "{list:?}");

    let o = dev.run(
        &[
            "reset-password",
            "--all",
            "--generate",
            "--length",
            "22",
            "--reboot",
            "--wait",
            "--timeout",
            "60",
        ],
        None,
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "stdout: {out}\nstderr: {err}");
    assert!(out.contains("4 applied, 0 failed"), "{out}");

    #[derive(serde::Deserialize)]
    struct Shown {
        server_id: String,
        version: i64,
        applied: bool,
        password: String,
    }
    let ids = server_ids(&dev);
    assert_eq!(ids.len(), 4);
    let mut passwords = Vec::new();
    for id in &ids {
        let o = dev.run(&["passwords", "show", id, "-o", "json"], None);
        assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
        let shown: Shown = json(&o);
        assert_eq!((shown.server_id.as_str(), shown.version), (id.as_str(), 1));
        assert!(shown.applied);
        assert_eq!(shown.password.len(), 22);
        // The plain form prints the password alone.
        let o = dev.run(&["passwords", "show", id], None);
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim_end(),
            shown.password
        );
        // The standard age tool opens the escrowed blob with the same identity.
        if Command::new("age").arg("--version").output().is_ok() {
            let o = dev.run(&["passwords", "versions", id, "-o", "json"], None);
            let v: ecs_api::EscrowedPasswords = json(&o);
            let blob = dev.dir.path().join(format!("{id}.age"));
            std::fs::write(&blob, &v.versions[0].age).unwrap();
            let a = Command::new("age")
                .args(["-d", "-i"])
                .arg(&identity)
                .arg(&blob)
                .output()
                .unwrap();
            assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
            assert_eq!(String::from_utf8_lossy(&a.stdout), shown.password);
            std::fs::remove_file(&blob).unwrap();
        }
        passwords.push(shown.password);
    }
    let distinct: std::collections::BTreeSet<&String> = passwords.iter().collect();
    assert_eq!(
        distinct.len(),
        passwords.len(),
        "two servers share a password"
    );
    // Each server's root hash verifies against exactly one of them.
    use yescrypt::PasswordVerifier;
    let roots = dev.fleet_roots();
    assert_eq!(roots.len(), 4);
    let mut matched = std::collections::BTreeSet::new();
    for root in &roots {
        let h = first_hash(root);
        let hits: Vec<&String> = passwords
            .iter()
            .filter(|p| {
                sha_crypt::ShaCrypt::default()
                    .verify_password(p.as_bytes(), h.as_str())
                    .is_ok()
            })
            .collect();
        assert_eq!(hits.len(), 1, "{root:?}");
        matched.insert(hits[0].clone());
    }
    assert_eq!(matched.len(), 4);
    // No file holds any of them: database, WAL, debug log, fleet state.
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
    for want in ["ecsd.db", "ecsd.db-wal", "ecsd.log", "shadow"] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        for p in &passwords {
            assert!(
                !bytes.windows(p.len()).any(|w| w == p.as_bytes()),
                "a generated password is in {f:?}"
            );
        }
    }
}

/// `escrow init` makes a passphrase-protected identity (0600) and registers
/// it; `passwords show` opens versions made after that with it, given the
/// passphrase on standard input; a wrong passphrase opens nothing.
#[test]
fn escrow_init_identity_opens_later_passwords_with_its_passphrase() {
    let dev = Dev::start();
    let identity = dev.dir.path().join("alice.age");
    let id = identity.to_str().unwrap();
    let o = dev.run(
        &[
            "escrow",
            "init",
            "--name",
            "alice",
            "--identity",
            id,
            "--passphrase-stdin",
        ],
        Some("correct horse battery\n"),
    );
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&identity).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let file = std::fs::read_to_string(&identity).unwrap();
    assert!(
        file.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"),
        "{file}"
    );
    assert!(!file.contains("AGE-SECRET-KEY"));
    // Never replaced.
    let o = dev.run(
        &["escrow", "init", "--identity", id, "--passphrase-stdin"],
        Some("another passphrase\n"),
    );
    assert_eq!(o.status.code(), Some(3), "{:?}", text(&o));
    let o = dev.run(&["escrow", "list", "-o", "json"], None);
    let list: ecs_api::RecipientList = json(&o);
    assert_eq!(list.recipients.len(), 2);

    let ids = server_ids(&dev);
    let o = dev.run(
        &[
            "reset-password",
            &ids[0],
            "--generate",
            "--apply-now",
            "--wait",
            "--timeout",
            "60",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let o = dev.run(
        &[
            "passwords",
            "show",
            &ids[0],
            "--identity",
            id,
            "--passphrase-stdin",
        ],
        Some("correct horse battery\n"),
    );
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let alice = String::from_utf8_lossy(&o.stdout).trim_end().to_owned();
    // The dev identity opens the same version.
    let o = dev.run(&["passwords", "show", &ids[0]], None);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim_end(), alice);
    let o = dev.run(
        &[
            "passwords",
            "show",
            &ids[0],
            "--identity",
            id,
            "--passphrase-stdin",
        ],
        Some("not-the-right-one\n"),
    );
    assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
    assert!(o.stdout.is_empty());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("wrong passphrase?"), "{err}");
    assert!(!err.contains("not-the-right-one"), "{err}");
}

/// `ecsctl rotation create` on the dev fleet: the first run is at once (the
/// scheduler looks every second here), every selected server gets an
/// escrowed version, `passwords status` goes from "never escrowed" (exit 4)
/// to clean (exit 0), and the policy is listed with its last run.
#[test]
fn a_rotation_policy_from_ecsctl_escrows_every_server_and_status_follows() {
    let dev = Dev::start_with_env(&[("ECSD_ROTATION_CHECK_SECS", "1")]);
    let o = dev.run(&["passwords", "status", "-o", "json"], None);
    assert_eq!(o.status.code(), Some(4), "{:?}", text(&o));
    let s: ecs_api::PasswordStatusList = json(&o);
    assert_eq!(s.servers.len(), 4);
    assert!(s.servers.iter().all(|x| x.status == "never_escrowed"));

    let o = dev.run(
        &[
            "rotation",
            "create",
            "--name",
            "all",
            "--every-days",
            "1",
            "--apply",
            "now",
            "--length",
            "24",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let mut clean = false;
    for _ in 0..100 {
        let o = dev.run(&["passwords", "status", "--all", "-o", "json"], None);
        let s: ecs_api::PasswordStatusList = json(&o);
        if o.status.code() == Some(0)
            && s.servers
                .iter()
                .all(|x| x.state == Some(ecs_api::ResetState::Applied))
        {
            clean = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(clean, "the rotation never applied everywhere");
    let o = dev.run(&["rotation", "list", "-o", "json"], None);
    let l: ecs_api::RotationPolicyList = json(&o);
    assert_eq!(l.policies.len(), 1);
    assert!(l.policies[0].last_run.is_some());
    assert_eq!(l.policies[0].spec.apply.as_deref(), Some("now"));
    let o = dev.run(&["rotation", "list"], None);
    assert!(String::from_utf8_lossy(&o.stdout).contains("all"));
    // Each applied password opens with the dev identity and verifies.
    use yescrypt::PasswordVerifier;
    let mut passwords = Vec::new();
    for id in server_ids(&dev) {
        let o = dev.run(&["passwords", "show", &id], None);
        assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
        let p = String::from_utf8_lossy(&o.stdout).trim_end().to_owned();
        assert_eq!(p.len(), 24);
        passwords.push(p);
    }
    for root in dev.fleet_roots() {
        let h = first_hash(&root);
        assert!(
            passwords.iter().any(|p| sha_crypt::ShaCrypt::default()
                .verify_password(p.as_bytes(), h.as_str())
                .is_ok()),
            "{root:?}"
        );
    }
    // A server may be named instead of its id.
    let creds: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&dev.creds).unwrap()).unwrap();
    let (id, name) = (
        creds["servers"][0]["id"].as_str().unwrap(),
        creds["servers"][0]["name"].as_str().unwrap(),
    );
    let by_id = dev.run(&["passwords", "show", id], None);
    let by_name = dev.run(&["passwords", "show", name], None);
    assert_eq!(by_name.status.code(), Some(0), "{:?}", text(&by_name));
    assert_eq!(by_id.stdout, by_name.stdout);
    let o = dev.run(&["rotation", "delete", "all"], None);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
}
