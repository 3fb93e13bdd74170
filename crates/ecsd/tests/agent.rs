//! The agent side against a real server: enrollment, isolation between
//! servers, credentials, supersession, apply-once, and the shadow file.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ecs_agent::agent::{Agent, BootSource, Options};
use ecs_agent::client::Client;
use ecs_agent_proto::Outcome;
use ecs_api::{
    ActionKind, JobResult, JobStatus, ResetOutcome, ResetPwdFlag, ResetPwdFlagResponse, ResetState,
    ServerAction, ServerStatus, ShowJobResponse,
};
use secrecy::ExposeSecret;

use ResetState::{Applied, Delivered, Superseded};

async fn wait_states(t: &TestServer, rid: &str, want: &[ResetState]) -> ResetOutcome {
    for _ in 0..300 {
        let o = t.outcome(rid).await;
        let states: Vec<ResetState> = o.servers.iter().map(|s| s.state).collect();
        if states == want {
            return o;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("states never became {want:?}: {:?}", t.outcome(rid).await);
}

/// The agent credential stored in a simulated server's state directory.
fn credential(root: &std::path::Path) -> String {
    ecs_agent::files::StateDir(root.join("var/lib/ecs-agent"))
        .load_enrollment()
        .unwrap()
        .expect("enrolled")
        .credential
        .expose_secret()
        .to_owned()
}

/// Waits until `cond` holds; fails the test after 30 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_applies_only_after_a_restart() {
    let t = TestServer::start().await;
    let f = fleet(&t, 2).await;
    let servers = f.list();
    let ids: Vec<&str> = servers.iter().map(|s| s.server_id.as_str()).collect();
    let rid = t.reset_ids("Gx7!pLq2vR", &ids).await;
    wait_states(&t, &rid, &[Delivered, Delivered]).await;
    // Both running agents have the work. The second one is then stopped through
    // the API: its agent polls for the stop only after it has handled the reset,
    // and takes nothing more once the stop succeeds, so its shadow now shows
    // what a running server did with the reset.
    let stop = job_of(
        &t,
        ServerAction::Stop {
            servers: refs(&[ids[1]]),
            kind: None,
        },
    )
    .await;
    assert_eq!(stop.status, JobStatus::Success, "{stop:?}");
    assert!(
        !verifies(&root_hash(&servers[1].root), "Gx7!pLq2vR"),
        "applied without a restart"
    );
    f.restart(&servers[0].name).await.unwrap();
    let o = wait_states(&t, &rid, &[Applied, Delivered]).await;
    assert!(o.servers[0].reason.is_none());
    assert!(verifies(&root_hash(&servers[0].root), "Gx7!pLq2vR"));
    assert!(!verifies(&root_hash(&servers[1].root), "Gx7!pLq2vR"));
    // The flag is "True" for enrolled, reporting agents.
    let flag = t.flag(ids[0]).await;
    assert_eq!(flag.status, 200, "{}", flag.text);
    assert_eq!(
        flag.json::<ResetPwdFlagResponse>().resetpwd_flag,
        ResetPwdFlag::True
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_now_applies_without_a_restart() {
    let t = TestServer::start().await;
    let f = fleet(&t, 1).await;
    let s = &f.list()[0];
    let req = ecs_api::BatchResetRequest {
        apply: Some("now".into()),
        ..reset_request(Some("Hy8@qMr3wS"), None, &[&s.server_id])
    };
    let r = t.call("PUT", &t.batch_path(), Some(&body(&req))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    wait_states(&t, &r.request_id.unwrap(), &[Applied]).await;
    assert!(verifies(&root_hash(&s.root), "Hy8@qMr3wS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_request_is_never_applied() {
    let t = TestServer::start().await;
    let f = fleet(&t, 1).await;
    let s = &f.list()[0];
    let first = t
        .call(
            "PUT",
            &t.batch_path(),
            Some(&ids_body(Some("Gx7!pLq2vR"), None, &[&s.server_id])),
        )
        .await;
    let r1 = first.request_id.unwrap();
    wait_states(&t, &r1, &[Delivered]).await;
    let second = t
        .call(
            "PUT",
            &t.batch_path(),
            Some(&ids_body(Some("Hy8@qMr3wS"), None, &[&s.server_id])),
        )
        .await;
    let r2 = second.request_id.unwrap();
    wait_states(&t, &r2, &[Delivered]).await;
    f.restart(&s.name).await.unwrap();
    wait_states(&t, &r2, &[Applied]).await;
    let o1 = t.outcome(&r1).await;
    assert_eq!(o1.servers[0].state, Superseded);
    let h = root_hash(&s.root);
    assert!(verifies(&h, "Hy8@qMr3wS"));
    assert!(!verifies(&h, "Gx7!pLq2vR"));
    // A late acknowledgement of the superseded request is not recorded.
    let cred = credential(&s.root);
    let c = Client::new(common::http(), &t.base, Some(secret(&cred)));
    let recorded = c
        .ack(&ecs_agent_proto::AckRequest {
            request_id: r1.clone(),
            outcome: ecs_agent_proto::Outcome::Applied,
            reason: None,
            then_poll: None,
        })
        .await
        .unwrap();
    assert!(!recorded);
    assert_eq!(t.outcome(&r1).await.servers[0].state, Superseded);
    // Restarting again does not apply anything new: once the agent's journal
    // holds the new boot id, its start-up check (the only place a restart
    // applies anything) is done.
    f.restart(&s.name).await.unwrap();
    let boot = std::fs::read_to_string(s.root.join("boot_id")).unwrap();
    let state = ecs_agent::files::StateDir(s.root.join("var/lib/ecs-agent"));
    eventually("the agent finished its start-up check", || {
        state.load_journal().unwrap().boot_id.as_deref() == Some(boot.trim())
    })
    .await;
    assert_eq!(root_hash(&s.root), h, "re-applied after a second restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_never_sees_or_opens_another_servers_password() {
    let t = TestServer::start().await;
    let tok = token(&t, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let ea = common::enroll(&t.base, &tok, &a, "machine-a", "a", "Linux")
        .await
        .unwrap();
    let eb = common::enroll(&t.base, &tok, &b, "machine-b", "b", "Linux")
        .await
        .unwrap();
    assert_ne!(ea.server_id, eb.server_id);
    let r = t
        .call(
            "PUT",
            &t.batch_path(),
            Some(&ids_body(Some("Gx7!pLq2vR"), None, &[&ea.server_id])),
        )
        .await;
    let rid = r.request_id.unwrap();
    let ca = Client::new(common::http(), &t.base, Some(secret(&ea.credential)));
    let cb = Client::new(common::http(), &t.base, Some(secret(&eb.credential)));
    assert!(
        cb.work(None, Duration::ZERO, false)
            .await
            .unwrap()
            .is_none(),
        "B received A's work"
    );
    let work = ca
        .work(None, Duration::ZERO, false)
        .await
        .unwrap()
        .and_then(|p| p.reset)
        .expect("A's work");
    assert_eq!(work.request_id, rid);
    // Even handed A's sealed blob, B's key opens nothing, under either id.
    let kb = ecs_agent::files::StateDir(b.clone()).load_key().unwrap();
    let sealed = ecs_seal::Sealed::from_base64(&work.sealed).unwrap();
    assert!(ecs_seal::open(&kb, &ea.server_id, &rid, &sealed).is_err());
    assert!(ecs_seal::open(&kb, &eb.server_id, &rid, &sealed).is_err());
    let ka = ecs_agent::files::StateDir(a.clone()).load_key().unwrap();
    let pw = ecs_seal::open(&ka, &ea.server_id, &rid, &sealed).unwrap();
    assert_eq!(pw.expose_secret(), "Gx7!pLq2vR");
    // B acknowledging A's request changes nothing.
    let recorded = cb
        .ack(&ecs_agent_proto::AckRequest {
            request_id: rid.clone(),
            outcome: ecs_agent_proto::Outcome::Failed,
            reason: None,
            then_poll: None,
        })
        .await
        .unwrap();
    assert!(!recorded);
    assert_eq!(t.outcome(&rid).await.servers[0].state, Delivered);
    // A forged delivery: a stand-in for ecsd hands B's running agent A's
    // work, as it is and relabelled for B (both to apply now), then work
    // genuinely sealed to B. B refuses both forgeries and applies only its own.
    let poll = raw_work(&t, &ea.credential).await;
    assert_eq!(
        poll.reset.as_ref().map(|w| w.request_id.as_str()),
        Some(rid.as_str()),
        "{poll:?}"
    );
    let mut as_is = poll.clone();
    as_is.reset.as_mut().unwrap().apply_now = true;
    let mut relabelled = as_is.clone();
    relabelled.reset.as_mut().unwrap().server_id = eb.server_id.clone();
    // B's own work: a genuine reset for B from ecsd (apply now), signed there.
    let r = t
        .call(
            "PUT",
            &t.batch_path(),
            Some(&body(&ecs_api::BatchResetRequest {
                apply: Some("now".into()),
                ..reset_request(Some("Hy8@qMr3wS"), None, &[&eb.server_id])
            })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let own_rid = r.request_id.unwrap();
    let own = raw_work(&t, &eb.credential).await;
    assert_eq!(
        own.reset.as_ref().map(|w| w.request_id.as_str()),
        Some(own_rid.as_str()),
        "{own:?}"
    );
    let (endpoint, api) = stand_in_agent_api().await;
    for poll in [as_is, relabelled, own] {
        api.push(&poll);
    }
    let root_b = dir.path().join("rootb");
    std::fs::create_dir_all(root_b.join("etc")).unwrap();
    std::fs::write(root_b.join("etc/shadow"), "root:!:20000:0:99999:7:::\n").unwrap();
    std::fs::write(dir.path().join("boot_b"), "boot-1").unwrap();
    let agent_b = Agent::load(
        common::http(),
        Options {
            power: ecs_agent::agent::PowerControl::Disabled,
            root: root_b.clone(),
            state_dir: b.clone(),
            boot: BootSource::File(dir.path().join("boot_b")),
            poll: Duration::from_secs(1),
            heartbeat: Duration::from_secs(30),
            endpoint: Some(endpoint),
        },
    )
    .unwrap();
    assert_eq!(agent_b.server_id(), eb.server_id);
    let running = tokio::spawn(async move { agent_b.run().await });
    let mut got = Vec::new();
    for i in 0..3 {
        got.push(api.ack(i).await);
    }
    running.abort();
    for forged in &got[..2] {
        assert_eq!(forged.request_id, rid, "{got:?}");
        assert_eq!(forged.outcome, Outcome::Failed, "{got:?}");
    }
    assert!(
        got[0]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("another server")),
        "{got:?}"
    );
    assert_eq!(got[2].request_id, own_rid, "{got:?}");
    assert_eq!(got[2].outcome, Outcome::Applied, "{got:?}");
    assert!(verifies(&root_hash(&root_b), "Hy8@qMr3wS"));
    // Nothing was written before B's own reset: the previous file is the original.
    assert_eq!(
        std::fs::read_to_string(root_b.join("etc/shadow-")).unwrap(),
        "root:!:20000:0:99999:7:::\n"
    );
}

#[tokio::test]
async fn agents_without_a_valid_credential_get_nothing() {
    let t = TestServer::start().await;
    let bad = Client::new(
        common::http(),
        &t.base,
        Some(secret("ecsac_not-a-real-credential")),
    );
    assert!(bad.work(None, Duration::ZERO, false).await.is_err());
    let none = Client::new(common::http(), &t.base, None);
    assert!(none.work(None, Duration::ZERO, false).await.is_err());
    let r = t
        .raw(
            reqwest::Client::new()
                .get(t.url("/agent/v1/work"))
                .bearer_auth("ecsac_x"),
        )
        .await;
    assert_gateway(&r, 401, "APIGW.0301");
    // An AK/SK of the public API is not an agent credential either.
    let r = t
        .raw(
            reqwest::Client::new()
                .get(t.url("/agent/v1/work"))
                .bearer_auth(&t.sk),
        )
        .await;
    assert_gateway(&r, 401, "APIGW.0301");
}

#[tokio::test]
async fn enrollment_tokens_expire_run_out_and_only_the_old_key_keeps_the_server() {
    let t = TestServer::start().await;
    let tok = token(&t, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let first = common::enroll(&t.base, &tok, &dir.path().join("1"), "m-1", "h", "Linux")
        .await
        .unwrap();
    // The same machine again, from its own state directory: it proves the old
    // key, keeps its server id, gets a new key and credential, and uses no token.
    let again = common::enroll(&t.base, "", &dir.path().join("1"), "m-1", "h", "Linux")
        .await
        .unwrap();
    assert_eq!(first.server_id, again.server_id);
    assert_ne!(first.credential, again.credential);
    // Another machine presenting the same machine id with another key is a
    // new server, never the old one.
    let clone = common::enroll(&t.base, &tok, &dir.path().join("2"), "m-1", "h", "Linux")
        .await
        .unwrap();
    assert_ne!(clone.server_id, first.server_id);
    // Used up (two uses: the first enrollment and the clone).
    let e = common::enroll(&t.base, &tok, &dir.path().join("3"), "m-2", "h", "Linux").await;
    let msg = format!("{:#}", e.unwrap_err());
    assert!(
        msg.contains("401") && msg.contains("invalid, expired or used up"),
        "{msg}"
    );
    // Expired: a token with uses left that worked a moment ago is refused
    // once its lifetime is over.
    let expired = ecsd::api::issue_enroll_token(&t.state, &t.project, 5, 1)
        .await
        .unwrap()
        .token;
    common::enroll(
        &t.base,
        &expired,
        &dir.path().join("4a"),
        "m-3a",
        "h",
        "Linux",
    )
    .await
    .expect("the token works before it expires");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let e = common::enroll(
        &t.base,
        &expired,
        &dir.path().join("4"),
        "m-3",
        "h",
        "Linux",
    )
    .await;
    let msg = format!("{:#}", e.unwrap_err());
    assert!(
        msg.contains("401") && msg.contains("APIGW.0301"),
        "expired token: {msg}"
    );
    // The old credential no longer works.
    let old = Client::new(common::http(), &t.base, Some(secret(&first.credential)));
    assert!(old.work(None, Duration::ZERO, false).await.is_err());
    let c = rusqlite::Connection::open(t.db_path()).unwrap();
    let n: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM servers WHERE machine_id = 'm-1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_agent_is_woken_when_work_arrives() {
    let t = TestServer::start_with(|c| c.agent_poll_secs = 20).await;
    let tok = token(&t, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let e = common::enroll(&t.base, &tok, dir.path(), "m", "h", "Linux")
        .await
        .unwrap();
    let c = Client::new(common::http(), &t.base, Some(secret(&e.credential)));
    let started = std::time::Instant::now();
    let waiting = tokio::spawn(async move { c.work(None, Duration::from_secs(20), false).await });
    // The work arrives only once the long poll waits in ecsd (the only agent
    // polling); a late GET would find it by looking.
    let wakers = t.state.wakers.clone();
    eventually("the agent's long poll is waiting", || wakers.waiting() == 1).await;
    // Let its first look (which found nothing) finish.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = t
        .call(
            "PUT",
            &t.batch_path(),
            Some(&ids_body(Some("Gx7!pLq2vR"), None, &[&e.server_id])),
        )
        .await;
    let work = waiting
        .await
        .unwrap()
        .unwrap()
        .and_then(|p| p.reset)
        .expect("woken with work");
    assert_eq!(Some(work.request_id), r.request_id);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "not woken promptly: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_agent_process_at_any_moment_never_damages_shadow_and_the_reset_still_applies()
{
    let t = TestServer::start().await;
    let agent_bin = std::path::Path::new(env!("CARGO_BIN_EXE_ecsd")).with_file_name("ecs-agent");
    assert!(
        agent_bin.exists(),
        "build the workspace binaries first (cargo build --workspace --bins)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (root, state, boot) = (
        dir.path().join("root"),
        dir.path().join("state"),
        dir.path().join("boot_id"),
    );
    std::fs::create_dir_all(root.join("etc")).unwrap();
    let other = "bin:*:20000:0:99999:7:::\n";
    std::fs::write(
        root.join("etc/shadow"),
        format!("root:!:20000:0:99999:7:::\n{other}"),
    )
    .unwrap();
    std::fs::write(root.join("etc/login.defs"), "ENCRYPT_METHOD SHA512\n").unwrap();
    let tok = token(&t, 1).await;
    let e = common::enroll(&t.base, &tok, &state, "kill-m", "kill", "Linux")
        .await
        .unwrap();
    let passwords = ["Gx7!pLq2vR", "Hy8@qMr3wS"];
    let reset = |password: &'static str| {
        let (t, id) = (&t, e.server_id.clone());
        async move { t.reset_ids(password, &[&id]).await }
    };
    let mut rid = reset(passwords[0]).await;
    let run = |boot_id: String| {
        std::fs::write(&boot, boot_id).unwrap();
        std::process::Command::new(&agent_bin)
            .args(["run", "--poll-secs", "1", "--state-dir"])
            .arg(&state)
            .arg("--root")
            .arg(&root)
            .arg("--boot-id-file")
            .arg(&boot)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    // Each round kills fresh agents (a new boot id each: they apply at once)
    // after a growing delay (10 ms more each time), until a kill finds the new
    // password written. When the kill before it found the old one, the two
    // kills bracket the write. A second round, with a newer password, starts
    // just before the moment the first one found. Every kill must leave
    // shadow old or new.
    let (mut round, mut kills, mut bracketed, mut start) = (0, 0, 0, 0u64);
    while round < 2 {
        let (mut delay, mut saw_old) = (start, false);
        loop {
            assert!(kills < 300, "no kill found the write done");
            let mut child = run(format!("boot-{kills}"));
            std::thread::sleep(Duration::from_millis(delay));
            child.kill().unwrap(); // SIGKILL: no chance to clean up
            child.wait().unwrap();
            kills += 1;
            let text = std::fs::read_to_string(root.join("etc/shadow")).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 2, "damaged after kill {kills}: {text:?}");
            assert_eq!(
                format!("{}\n", lines[1]),
                other,
                "another entry changed after kill {kills}"
            );
            let hash = lines[0]
                .strip_prefix("root:")
                .unwrap()
                .split(':')
                .next()
                .unwrap();
            if verifies(hash, passwords[round]) {
                break;
            }
            let old = match round {
                0 => hash == "!",
                r => verifies(hash, passwords[r - 1]),
            };
            assert!(old, "neither old nor new after kill {kills}: {hash}");
            saw_old = true;
            delay += 10;
        }
        if saw_old {
            bracketed += 1;
        }
        start = delay.saturating_sub(50);
        round += 1;
        if round < 2 {
            rid = reset(passwords[round]).await;
        }
    }
    assert!(bracketed > 0, "no kill landed before a write");
    // Left alone, the agent completes and the API says APPLIED.
    let mut child = run("boot-final".into());
    let o = wait_states(&t, &rid, &[Applied]).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(o.servers[0].reason.is_none());
    let hash = root_hash(&root);
    assert!(verifies(&hash, passwords[round - 1]));
    let leftovers: Vec<_> = std::fs::read_dir(root.join("etc"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("ecs-agent"))
        .collect();
    assert!(
        leftovers.len() <= 2,
        "temporary files pile up: {leftovers:?}"
    );
}

/// Starts a real `ecs-agent run` for a fresh enrollment; returns (server id, child).
async fn real_agent(
    t: &TestServer,
    dir: &std::path::Path,
    name: &str,
    extra: &[&str],
) -> (String, std::process::Child) {
    let agent_bin = std::path::Path::new(env!("CARGO_BIN_EXE_ecsd")).with_file_name("ecs-agent");
    assert!(
        agent_bin.exists(),
        "build the workspace binaries first (cargo build --workspace --bins)"
    );
    let (root, state, boot) = (
        dir.join(name).join("root"),
        dir.join(name).join("state"),
        dir.join(name).join("boot_id"),
    );
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/shadow"), "root:!:20000:0:99999:7:::\n").unwrap();
    std::fs::write(&boot, "boot-1").unwrap();
    let tok = token(t, 1).await;
    let e = common::enroll(&t.base, &tok, &state, name, name, "Linux")
        .await
        .unwrap();
    let child = std::process::Command::new(&agent_bin)
        .args(["run", "--poll-secs", "2", "--state-dir"])
        .arg(&state)
        .arg("--root")
        .arg(&root)
        .arg("--boot-id-file")
        .arg(&boot)
        .args(extra)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let flag = t.flag(&e.server_id).await;
        assert_eq!(flag.status, 200, "{}", flag.text);
        if flag.json::<ResetPwdFlagResponse>().resetpwd_flag == ResetPwdFlag::True {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent {name} never reported in"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (e.server_id, child)
}

async fn job_of(t: &TestServer, action: ServerAction) -> ShowJobResponse {
    let r = t.call("POST", &t.action_path(), Some(&body(&action))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    wait_job(t, &r.json::<JobResult>().job_id).await
}

/// The failure reason of a job's first sub-job ("" if none).
fn first_reason(j: &ShowJobResponse) -> &str {
    j.entities.sub_jobs[0]
        .fail_reason
        .as_deref()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_agent_runs_power_actions_only_when_allowed_and_reports_systemctl_failures() {
    use std::os::unix::fs::PermissionsExt;
    let t = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    // A stand-in for systemctl that records its arguments (never the real one in a test).
    let record = dir.path().join("systemctl.log");
    let fake = dir.path().join("systemctl");
    let script = |code: u8| {
        format!(
            "#!/bin/sh\necho \"$@\" >> '{}'\nexit {code}\n",
            record.display()
        )
    };
    std::fs::write(&fake, script(1)).unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();

    let (locked, mut c1) = real_agent(&t, dir.path(), "locked", &[]).await;
    let (allowed, mut c2) = real_agent(
        &t,
        dir.path(),
        "allowed",
        &[
            "--allow-power-actions",
            "--systemctl",
            fake.to_str().unwrap(),
        ],
    )
    .await;

    let j = job_of(
        &t,
        ServerAction::Reboot {
            servers: refs(&[&locked]),
            kind: ActionKind::Soft,
        },
    )
    .await;
    assert_eq!(j.status, JobStatus::Fail, "{j:?}");
    assert!(first_reason(&j).contains("disabled"), "{j:?}");
    assert_eq!(j.error_code.as_deref(), Some("Ecs.0227"), "{j:?}");
    // A refused stop fails with Ecs.0611.
    let j = job_of(
        &t,
        ServerAction::Stop {
            servers: refs(&[&locked]),
            kind: None,
        },
    )
    .await;
    assert_eq!(j.status, JobStatus::Fail, "{j:?}");
    assert_eq!(j.error_code.as_deref(), Some("Ecs.0611"), "{j:?}");
    assert_eq!(
        j.entities.sub_jobs[0].error_code.as_deref(),
        Some("Ecs.0611"),
        "{j:?}"
    );
    assert!(
        !record.exists(),
        "systemctl ran for an agent that does not allow power actions"
    );

    let j = job_of(
        &t,
        ServerAction::Reboot {
            servers: refs(&[&allowed]),
            kind: ActionKind::Hard,
        },
    )
    .await;
    assert_eq!(j.status, JobStatus::Fail, "{j:?}");
    assert_eq!(j.error_code.as_deref(), Some("Ecs.0227"));
    assert!(
        first_reason(&j).contains("systemctl reboot failed"),
        "{j:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&record).unwrap(),
        "reboot --force\n"
    );
    assert_eq!(t.show(&allowed).await.status, ServerStatus::Active);

    // A working systemctl: the stop succeeds and the server is SHUTOFF.
    std::fs::write(&fake, script(0)).unwrap();
    let j = job_of(
        &t,
        ServerAction::Stop {
            servers: refs(&[&allowed]),
            kind: None,
        },
    )
    .await;
    assert_eq!(j.status, JobStatus::Success, "{j:?}");
    assert_eq!(
        std::fs::read_to_string(&record).unwrap(),
        "reboot --force\npoweroff\n"
    );
    assert_eq!(t.show(&allowed).await.status, ServerStatus::Shutoff);
    for c in [&mut c1, &mut c2] {
        c.kill().unwrap();
        c.wait().unwrap();
    }
}

/// An enrolled server driven by hand (no agent process): its enrollment
/// and a client speaking the agent protocol with its credential.
async fn hand_agent(
    t: &TestServer,
    token: &str,
    dir: &std::path::Path,
    machine: &str,
) -> (ecs_agent_proto::EnrollResponse, Client) {
    let e = common::enroll(&t.base, token, dir, machine, "h", "Linux")
        .await
        .unwrap();
    let c = Client::new(common::http(), &t.base, Some(secret(&e.credential)));
    (e, c)
}

/// A restarting agent's heartbeat may ask for its start-up work
/// (`start_up`): the answer carries what `GET /work` would — the pending
/// reset, signed and sealed, now DELIVERED — and `{}` when nothing is
/// open; a plain heartbeat carries no `work` at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_up_heartbeat_carries_the_pending_reset() {
    let t = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (e, agent) = hand_agent(&t, &token(&t, 1).await, dir.path(), "m-s").await;
    let hb = |boot: &str, start_up: bool| ecs_agent_proto::HeartbeatRequest {
        agent_version: "test".into(),
        boot_id: boot.into(),
        uptime_secs: 1,
        power_driver: false,
        start_up,
    };
    let empty = agent.heartbeat(&hb("b1", true)).await.unwrap();
    let nothing = empty
        .work
        .expect("a start-up heartbeat is answered with work");
    assert!(
        nothing.reset.is_none() && nothing.power.is_none(),
        "{nothing:?}"
    );

    let rid = t.reset_ids("Wt5!kPq9zR", &[&e.server_id]).await;
    assert!(
        agent
            .heartbeat(&hb("b1", false))
            .await
            .unwrap()
            .work
            .is_none()
    );
    assert_eq!(t.outcome(&rid).await.servers[0].state, ResetState::Pending);

    let answer = agent.heartbeat(&hb("b2", true)).await.unwrap();
    let work = answer
        .work
        .and_then(|p| p.reset)
        .expect("the pending reset");
    assert_eq!(work.request_id, rid);
    assert_eq!(work.server_id, e.server_id);
    assert!(work.envelope.is_some() && !work.sealed.is_empty());
    assert_eq!(t.outcome(&rid).await.servers[0].state, Delivered);
    // The same item through the poll, as an older agent would ask.
    let polled = agent.work(None, Duration::ZERO, false).await.unwrap();
    assert_eq!(
        polled.and_then(|p| p.reset).map(|w| w.request_id),
        Some(rid)
    );
}

/// An acknowledgement may carry the long poll that follows it
/// (`then_poll`): the outcome is recorded at once, the call then waits for
/// work as `GET /work` would and answers it in `work` (`{}` when nothing
/// came within the wait); without `then_poll` the answer has no `work`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_carries_the_poll_that_follows_it() {
    let t = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (e, agent) = hand_agent(&t, &token(&t, 1).await, dir.path(), "m-a").await;
    let ack = |rid: &str, then_poll: Option<u64>| ecs_agent_proto::AckRequest {
        request_id: rid.to_owned(),
        outcome: ecs_agent_proto::Outcome::Applied,
        reason: None,
        then_poll: then_poll.map(|wait_secs| ecs_agent_proto::PollAfter {
            have: None,
            wait_secs,
        }),
    };
    let r1 = t.reset_ids("Wt5!kPq9zR", &[&e.server_id]).await;
    let got = agent.work(None, Duration::ZERO, false).await.unwrap();
    assert_eq!(
        got.and_then(|p| p.reset).map(|w| w.request_id),
        Some(r1.clone())
    );

    let agent = std::sync::Arc::new(agent);
    let waiting = {
        let (agent, a) = (agent.clone(), ack(&r1, Some(20)));
        tokio::spawn(async move { agent.ack_and_poll(&a).await.unwrap() })
    };
    // Recorded before the poll answers.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while t.outcome(&r1).await.servers[0].state != Applied {
        assert!(
            std::time::Instant::now() < deadline,
            "the outcome was not recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!waiting.is_finished(), "answered before any work arrived");
    let r2 = t.reset_ids("Hy8@qMr3wS", &[&e.server_id]).await;
    let answer = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the new reset ends the wait")
        .unwrap();
    assert!(answer.recorded);
    let work = answer.work.and_then(|p| p.reset).expect("the new reset");
    assert_eq!(
        (work.request_id.as_str(), work.server_id.as_str()),
        (r2.as_str(), e.server_id.as_str())
    );
    assert!(work.envelope.is_some() && !work.sealed.is_empty());
    assert_eq!(t.outcome(&r2).await.servers[0].state, Delivered);

    // Nothing within the wait: `{}`.
    let started = std::time::Instant::now();
    let answer = agent.ack_and_poll(&ack(&r2, Some(1))).await.unwrap();
    assert!(answer.recorded && started.elapsed() >= Duration::from_millis(900));
    let nothing = answer.work.expect("`{}` after an empty wait");
    assert!(
        nothing.reset.is_none() && nothing.power.is_none(),
        "{nothing:?}"
    );
    assert_eq!(t.outcome(&r2).await.servers[0].state, Applied);

    // A plain acknowledgement (here a late one) carries no `work`.
    let answer = agent.ack_and_poll(&ack(&r1, None)).await.unwrap();
    assert!(!answer.recorded && answer.work.is_none());
}

/// A waiting outcome read answers a change 0.1 s after it with whatever
/// else changed meanwhile: two servers' deliveries one after the other
/// come in one answer, not two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_arriving_together_are_answered_together() {
    let t = std::sync::Arc::new(TestServer::start().await);
    let dir = tempfile::tempdir().unwrap();
    let tok = token(&t, 2).await;
    let mut agents = Vec::new();
    let mut ids = Vec::new();
    for m in ["m-t1", "m-t2"] {
        let (e, c) = hand_agent(&t, &tok, &dir.path().join(m), m).await;
        ids.push(e.server_id);
        agents.push(c);
    }
    let ids_ref: Vec<&str> = ids.iter().map(String::as_str).collect();
    let rid = t.reset_ids("Wt5!kPq9zR", &ids_ref).await;
    let path = format!(
        "/v1/{}/cloudservers/os-reset-passwords/{rid}?wait=20",
        t.project
    );
    let waiting = {
        let t = t.clone();
        tokio::spawn(async move { t.call("GET", &path, None).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Both agents fetch their work at once: two changes milliseconds apart.
    let first = Instant::now();
    let (w1, w2) = tokio::join!(
        agents[0].work(None, Duration::ZERO, false),
        agents[1].work(None, Duration::ZERO, false)
    );
    for w in [w1, w2] {
        assert!(w.unwrap().and_then(|p| p.reset).is_some());
    }
    let o: ResetOutcome = waiting.await.unwrap().json();
    let after = first.elapsed();
    assert!(
        o.servers.iter().all(|s| s.state == Delivered),
        "both deliveries in one answer: {o:?}"
    );
    assert!(
        after >= Duration::from_millis(90),
        "answered {after:?} after the first change"
    );
    assert!(after < Duration::from_secs(5), "{after:?}");
}

/// `?wait=` on the outcome and the job (our extension): the answer comes
/// when a server's state changes (delivered here), at once when the
/// request is already complete, after `wait` when nothing changes; a job
/// read that waits is answered when the sweeper fails the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcome_and_job_reads_that_wait_answer_as_soon_as_something_changes() {
    let t = TestServer::start_with(|c| c.job_timeout_secs = 2).await;
    let dir = tempfile::tempdir().unwrap();
    let (e, agent) = hand_agent(&t, &token(&t, 1).await, dir.path(), "m-w").await;
    agent
        .heartbeat(&ecs_agent_proto::HeartbeatRequest {
            agent_version: "test".into(),
            boot_id: "b1".into(),
            uptime_secs: 1,
            power_driver: false,
            start_up: false,
        })
        .await
        .unwrap();
    let rid = t.reset_ids("Wt5!kPq9zR", &[&e.server_id]).await;
    let project = t.project.clone();
    let path =
        |wait: &str| format!("/v1/{project}/cloudservers/os-reset-passwords/{rid}?wait={wait}");

    // Nothing changes for 2 s: the answer comes after the wait, unchanged.
    let started = Instant::now();
    let o: ResetOutcome = t.call("GET", &path("2"), None).await.json();
    let took = started.elapsed();
    assert_eq!(o.servers[0].state, ResetState::Pending);
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "{took:?}"
    );

    // The agent fetches the work 300 ms into a 20-s wait: answered then.
    let t = std::sync::Arc::new(t);
    let waiting = {
        let (t, p) = (t.clone(), path("20"));
        tokio::spawn(async move {
            let started = Instant::now();
            let r = t.call("GET", &p, None).await;
            (r, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let work = agent.work(None, Duration::ZERO, false).await.unwrap();
    let delivered_at = Instant::now();
    assert!(work.and_then(|p| p.reset).is_some());
    let (r, took) = waiting.await.unwrap();
    let answered_after_delivery = delivered_at.elapsed();
    let o: ResetOutcome = r.json();
    assert_eq!(o.servers[0].state, ResetState::Delivered, "{o:?}");
    assert!(
        took >= Duration::from_millis(250),
        "answered before anything changed: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    eprintln!("a waiting outcome read answered {answered_after_delivery:?} after the delivery");

    // Complete: a read that may wait 20 s answers at once.
    agent
        .ack(&ecs_agent_proto::AckRequest {
            request_id: rid.clone(),
            outcome: ecs_agent_proto::Outcome::Applied,
            reason: None,
            then_poll: None,
        })
        .await
        .unwrap();
    let started = Instant::now();
    let o: ResetOutcome = t.call("GET", &path("20"), None).await.json();
    assert!(o.complete, "{o:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // A bad wait is refused.
    for bad in ["51", "-1", "x"] {
        let r = t.call("GET", &path(bad), None).await;
        assert_ecs(&r, 400, "Ecs.0005");
    }

    // A power job whose agent never answers: a job read that waits is
    // answered when the sweeper fails it (job_timeout_secs = 2).
    let job: ecs_api::JobResult = t
        .call(
            "POST",
            &t.action_path(),
            Some(&format!(
                r#"{{"os-stop":{{"type":"SOFT","servers":[{{"id":"{}"}}]}}}}"#,
                e.server_id
            )),
        )
        .await
        .json();
    let started = Instant::now();
    let mut j: ShowJobResponse = t
        .call(
            "GET",
            &format!("/v1/{}/jobs/{}?wait=20", t.project, job.job_id),
            None,
        )
        .await
        .json();
    // (A change of a sub-job before the failure answers earlier: wait again.)
    while j.status != JobStatus::Fail {
        assert!(started.elapsed() < Duration::from_secs(15), "{j:?}");
        j = t
            .call(
                "GET",
                &format!("/v1/{}/jobs/{}?wait=20", t.project, job.job_id),
                None,
            )
            .await
            .json();
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}
