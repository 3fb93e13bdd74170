//! Trust on the wire (contract §6), attacked with real processes on
//! loopback: a man in the middle at enrollment, forged and replayed work
//! items against a real `ecs-agent run`, identity takeover by machine id,
//! and plain HTTP where it is not allowed.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use ecs_agent::client::Client;
use ecs_agent_proto as proto;
use ecs_api::ResetState;
use secrecy::ExposeSecret;

fn agent_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_ecsd")).with_file_name("ecs-agent");
    assert!(
        p.exists(),
        "build the workspace binaries first (cargo build --workspace --bins)"
    );
    p
}

/// An ecsd serving HTTPS with a dev CA made for this test.
async fn https_server() -> (TestServer, ecsd::tls::DevPki) {
    let pki_dir = tempfile::tempdir().unwrap().keep();
    let pki = ecsd::tls::dev_pki(&pki_dir).unwrap();
    let (cert, key) = (pki.cert.clone(), pki.key.clone());
    let t = TestServer::start_with(move |c| {
        c.insecure_http = false;
        c.tls_cert = Some(cert);
        c.tls_key = Some(key);
    })
    .await;
    (t, pki)
}

/// The agent's `agent.json` in state directory `state`.
fn enrollment(state: &Path) -> ecs_agent::files::Enrollment {
    ecs_agent::files::StateDir(state.to_owned())
        .load_enrollment()
        .unwrap()
        .expect("enrolled")
}

fn https_base(t: &TestServer) -> String {
    format!("https://{}", t.host)
}

/// Runs `ecs-agent enroll` as a process with the token on standard input.
fn enroll_process(endpoint: &str, join_token: &str, state: &Path, root: &Path) -> (bool, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(agent_bin())
        .args(["enroll", "--endpoint", endpoint, "--token-file", "-"])
        .arg("--state-dir")
        .arg(state)
        .arg("--root")
        .arg(root)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(join_token.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A TLS-terminating proxy with its own certificate in front of `upstream`.
/// `chain_extra` is appended to its chain (an attacker can present the real
/// CA certificate: it is public). Counts the application bytes it decrypted.
async fn mitm_proxy(upstream: String, ca_pem: &str, chain_extra: &str) -> (u16, Arc<Mutex<usize>>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ecsd dev CA"); // same name, other key
    let evil_ca = ca_params.self_signed(&key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let chain_pem = format!("{}{}{}", leaf.pem(), evil_ca.pem(), chain_extra);
    let chain = ecs_trust::tls::certs_from_pem(chain_pem.as_bytes(), "proxy").unwrap();
    let leaf_der = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
    let sc = rustls::ServerConfig::builder_with_provider(ecs_trust::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, leaf_der)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(sc));
    let upstream_tls = tokio_rustls::TlsConnector::from(Arc::new(
        ecs_trust::tls::client_config(&ecs_trust::tls::Roots::Only(
            ecs_trust::tls::certs_from_pem(ca_pem.as_bytes(), "ca").unwrap(),
        ))
        .unwrap(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(0usize));
    let counter = seen.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, upstream_tls, upstream, counter) = (
                acceptor.clone(),
                upstream_tls.clone(),
                upstream.clone(),
                counter.clone(),
            );
            tokio::spawn(async move {
                let Ok(client) = acceptor.accept(tcp).await else {
                    return; // the agent refused our certificate: nothing was sent
                };
                let up = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
                let server = upstream_tls.connect(name, up).await.unwrap();
                // Count what the client sends, then relay both ways.
                let (mut cr, mut cw) = tokio::io::split(client);
                let (mut sr, mut sw) = tokio::io::split(server);
                let up = async {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = cr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        *counter.lock().unwrap() += n;
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                let down = async {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                };
                tokio::join!(up, down);
            });
        }
    });
    (port, seen)
}

fn server_count(t: &TestServer) -> i64 {
    rusqlite::Connection::open(t.db_path())
        .unwrap()
        .query_row("SELECT COUNT(*) FROM servers", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_man_in_the_middle_makes_pinned_enrollment_fail_and_learns_nothing() {
    let (t, pki) = https_server().await;
    let ca_pem = std::fs::read_to_string(&pki.ca).unwrap();
    let join = ecsd::api::issue_enroll_token(&t.state, &t.project, 1, 600)
        .await
        .unwrap()
        .join_token
        .expect("an HTTPS server hands out pinned join tokens");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/machine-id"), "mitm-machine\n").unwrap();

    // The proxy presents its own CA, then also the real CA certificate
    // (public) in its chain, with a leaf that the real CA never signed.
    for (case, extra) in [
        ("own CA", String::new()),
        ("real CA appended", ca_pem.clone()),
    ] {
        let (port, seen) = mitm_proxy(t.host.clone(), &ca_pem, &extra).await;
        let state = dir.path().join(format!("state-{port}"));
        let (ok, out) = enroll_process(&format!("https://127.0.0.1:{port}"), &join, &state, &root);
        assert!(!ok, "{case}: enrollment through the proxy must fail: {out}");
        assert!(
            out.contains("CA pin") || out.contains("certificate"),
            "{case}: the failure names the certificate: {out}"
        );
        assert_eq!(
            *seen.lock().unwrap(),
            0,
            "{case}: the proxy decrypted bytes"
        );
        assert!(!state.join("agent.json").exists(), "{case}");
    }
    assert_eq!(server_count(&t), 0, "nothing was enrolled");

    // The same one-use token still works directly: the proxy consumed nothing.
    let state = dir.path().join("state-direct");
    let (ok, out) = enroll_process(&https_base(&t), &join, &state, &root);
    assert!(ok, "{out}");
    assert_eq!(server_count(&t), 1);
    let stored = enrollment(&state);
    // Afterwards the agent trusts only the pinned CA.
    assert_eq!(
        ecs_trust::tls::certs_from_pem(stored.ca_pem.unwrap().as_bytes(), "x").unwrap(),
        ecs_trust::tls::certs_from_pem(ca_pem.as_bytes(), "y").unwrap()
    );
    assert!(!stored.work_key.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pin_sends_nothing_even_to_the_real_server() {
    let (t, _pki) = https_server().await;
    let tok = token(&t, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    let wrong = format!("{tok}.{}", "ab".repeat(32));
    let (ok, out) = enroll_process(&https_base(&t), &wrong, &dir.path().join("s"), &root);
    assert!(!ok && out.contains("CA pin"), "{out}");
    // Plain HTTP to a non-loopback address is refused before connecting.
    let (ok, out) = enroll_process("http://192.0.2.1:8080", &tok, &dir.path().join("s2"), &root);
    assert!(!ok && out.contains("refusing plain HTTP"), "{out}");
    assert_eq!(server_count(&t), 0);
}

struct RealAgent {
    root: PathBuf,
    state: PathBuf,
    boot: PathBuf,
    server_id: String,
    credential: String,
    _dir: tempfile::TempDir,
}

impl RealAgent {
    async fn enroll(t: &TestServer) -> RealAgent {
        let dir = tempfile::tempdir().unwrap();
        let (root, state, boot) = (
            dir.path().join("root"),
            dir.path().join("state"),
            dir.path().join("boot_id"),
        );
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(
            root.join("etc/shadow"),
            "root:!:20000:0:99999:7:::\nbin:*:20000:0:99999:7:::\n",
        )
        .unwrap();
        std::fs::write(root.join("etc/login.defs"), "ENCRYPT_METHOD SHA512\n").unwrap();
        let tok = token(t, 1).await;
        let e = common::enroll(&t.base, &tok, &state, "forge-m", "forge", "Linux")
            .await
            .unwrap();
        RealAgent {
            root,
            state,
            boot,
            server_id: e.server_id,
            credential: e.credential,
            _dir: dir,
        }
    }

    fn shadow(&self) -> String {
        std::fs::read_to_string(self.root.join("etc/shadow")).unwrap()
    }

    /// Points the agent at `endpoint` (what an attacker who owns the path
    /// achieves) and starts it after a "restart" (new boot id).
    fn start(&self, endpoint: &str, boot_id: &str, extra: &[&str]) -> std::process::Child {
        let dir = ecs_agent::files::StateDir(self.state.clone());
        let mut e = enrollment(&self.state);
        e.endpoint = endpoint.into();
        dir.save_enrollment(&e).unwrap();
        std::fs::write(&self.boot, boot_id).unwrap();
        std::process::Command::new(agent_bin())
            .args(["run", "--poll-secs", "1", "--state-dir"])
            .arg(&self.state)
            .arg("--root")
            .arg(&self.root)
            .arg("--boot-id-file")
            .arg(&self.boot)
            .args(extra)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    /// A genuine work item from the real ecsd (its envelope signed there).
    async fn genuine(&self, t: &TestServer, password: &str) -> proto::Work {
        let r = t
            .call(
                "PUT",
                &t.batch_path(),
                Some(&ids_body(Some(password), None, &[&self.server_id])),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let c = Client::new(common::http(), &t.base, Some(secret(&self.credential)));
        c.work(None, Duration::ZERO, false)
            .await
            .unwrap()
            .and_then(|p| p.reset)
            .expect("the reset is delivered")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_unsigned_foreign_and_replayed_work_is_never_applied() {
    let t = TestServer::start().await;
    let a = RealAgent::enroll(&t).await;
    let (fake, f) = stand_in_agent_api().await;
    let original = a.shadow();

    // 1. Sealed correctly to the agent's own key (its public key is no
    //    secret), but with no envelope.
    let genuine = a.genuine(&t, "Tq8!vWx2zP").await;
    let pk = rusqlite::Connection::open(t.db_path())
        .unwrap()
        .query_row(
            "SELECT agent_public_key FROM servers WHERE id = ?1",
            [&a.server_id],
            |r| r.get::<_, Vec<u8>>(0),
        )
        .unwrap();
    let pk = ecs_seal::PublicKey::from_bytes(&pk).unwrap();
    let forged_rid = "f".repeat(32);
    let sealed = ecs_seal::seal(&pk, &a.server_id, &forged_rid, &secret("Attacker!23x"))
        .unwrap()
        .to_base64();
    let unsigned = proto::Work {
        server_id: a.server_id.clone(),
        request_id: forged_rid.clone(),
        sealed: sealed.clone(),
        apply_now: false,
        envelope: None,
        keys: vec![],
    };
    // 2. The same, signed by a key that is not ecsd's.
    let rogue = ecs_trust::WorkSigner::generate();
    // (Each case has its own request id: a killed agent may acknowledge the
    // previous case again when it starts.)
    let mut rogue_signed = unsigned.clone();
    rogue_signed.request_id = "e".repeat(32);
    rogue_signed.envelope = Some(rogue.sign(&proto::Envelope {
        server_id: a.server_id.clone(),
        id: forged_rid.clone(),
        seq: 1_000_000,
        kind: proto::WorkKind::Reset,
        apply: proto::ApplyMode::Boot,
        hard: false,
        sealed_sha256: Some(ecs_trust::work::sealed_hash(
            ecs_seal::Sealed::from_base64(&sealed).unwrap().as_bytes(),
        )),
        issued_at: "2026-01-01T00:00:00Z".into(),
    }));
    // 3. A rogue key "endorsed" by itself in a fake rotation chain.
    let mut rogue_rotation = rogue_signed.clone();
    rogue_rotation.request_id = "d".repeat(32);
    rogue_rotation.keys = vec![rogue.endorse(&rogue.public()).unwrap()];
    // 4. ecsd's genuine envelope, but the attacker's sealed password.
    let mut swapped = genuine.clone();
    swapped.sealed = ecs_seal::seal(
        &pk,
        &a.server_id,
        &genuine.request_id,
        &secret("Attacker!23x"),
    )
    .unwrap()
    .to_base64();

    let cases: [(&str, proto::Work, &str); 4] = [
        ("unsigned", unsigned, "not signed"),
        ("rogue key", rogue_signed, "does not trust"),
        ("rogue rotation", rogue_rotation, "rotation"),
        ("swapped sealed blob", swapped, "does not match"),
    ];
    for (i, (case, work, reason)) in cases.into_iter().enumerate() {
        let rid = work.request_id.clone();
        let seen = f.acks_so_far();
        f.push(&proto::Poll {
            reset: Some(work),
            power: None,
        });
        let mut child = a.start(&fake, &format!("boot-forged-{i}"), &[]);
        let ack = f.next_ack(seen, &rid).await;
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(ack.request_id, rid, "{case}");
        assert_eq!(ack.outcome, proto::Outcome::Failed, "{case}");
        let why = ack.reason.unwrap_or_default();
        assert!(why.contains(reason), "{case}: {why}");
        assert_eq!(a.shadow(), original, "{case}: the shadow file changed");
    }

    // A genuine item applies (the agent is not simply refusing everything)...
    let seen = f.acks_so_far();
    f.push(&proto::Poll {
        reset: Some(genuine.clone()),
        power: None,
    });
    let mut child = a.start(&fake, "boot-genuine-1", &[]);
    let ack = f.next_ack(seen, &genuine.request_id).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(ack.outcome, proto::Outcome::Applied, "{:?}", ack.reason);
    let first_hash = root_hash(&a.root);
    assert_ne!(a.shadow(), original);

    // ...then a newer one...
    let newer = a.genuine(&t, "Hk5=rNp8wQ").await;
    let (seen, newer_rid) = (f.acks_so_far(), newer.request_id.clone());
    f.push(&proto::Poll {
        reset: Some(newer),
        power: None,
    });
    let mut child = a.start(&fake, "boot-genuine-2", &[]);
    let ack = f.next_ack(seen, &newer_rid).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(ack.outcome, proto::Outcome::Applied, "{:?}", ack.reason);
    let second = a.shadow();
    assert_ne!(root_hash(&a.root), first_hash);

    // ...and replaying the older, validly signed item does not set it again.
    let mut replay = genuine.clone();
    // Even under a request id the agent has not seen (the envelope still
    // names the old one, so that changes nothing but the lookup).
    replay.request_id = genuine.request_id.clone();
    f.push(&proto::Poll {
        reset: Some(replay),
        power: None,
    });
    // Forget the applied list so only the sequence number can stop it.
    let journal = ecs_agent::files::StateDir(a.state.clone());
    let mut j = journal.load_journal().unwrap();
    j.applied.clear();
    journal.save_journal(&j).unwrap();
    let seen = f.acks_so_far();
    let mut child = a.start(&fake, "boot-replay", &[]);
    let ack = f.next_ack(seen, &genuine.request_id).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(ack.outcome, proto::Outcome::Failed);
    assert!(ack.reason.unwrap_or_default().contains("not newer"));
    assert_eq!(a.shadow(), second, "the replay changed the shadow file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_power_action_is_refused_and_systemctl_never_runs() {
    let t = TestServer::start().await;
    let a = RealAgent::enroll(&t).await;
    let (fake, f) = stand_in_agent_api().await;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("systemctl-ran");
    let systemctl = dir.path().join("systemctl");
    std::fs::write(
        &systemctl,
        format!("#!/bin/sh\necho \"$@\" > {}\n", marker.display()),
    )
    .unwrap();
    std::fs::set_permissions(
        &systemctl,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let rogue = ecs_trust::WorkSigner::generate();
    let env = proto::Envelope {
        server_id: a.server_id.clone(),
        id: "sub-1".into(),
        seq: 99,
        kind: proto::WorkKind::Reboot,
        apply: proto::ApplyMode::Now,
        hard: true,
        sealed_sha256: None,
        issued_at: "2026-01-01T00:00:00Z".into(),
    };
    for (case, envelope, reason) in [
        ("unsigned", None, "not signed"),
        ("rogue key", Some(rogue.sign(&env)), "does not trust"),
    ] {
        let seen_power = f.power_acks.lock().unwrap().len();
        f.push(&proto::Poll {
            reset: None,
            power: Some(proto::Power {
                job_id: "sub-1".into(),
                action: "reboot".into(),
                hard: true,
                envelope,
                keys: vec![],
            }),
        });
        let mut child = a.start(
            &fake,
            &format!("boot-power-{case}"),
            &[
                "--allow-power-actions",
                "--systemctl",
                systemctl.to_str().unwrap(),
            ],
        );
        let mut ack = None;
        for _ in 0..300 {
            if let Some(p) = f.power_acks.lock().unwrap().get(seen_power).cloned() {
                ack = Some(p);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let ack = ack.expect("the agent answered the power action");
        assert!(!ack.ok, "{case}");
        let why = ack.reason.unwrap_or_default();
        assert!(why.contains(reason), "{case}: {why}");
        assert!(!marker.exists(), "{case}: systemctl ran");
    }
}

#[tokio::test]
async fn the_same_machine_id_with_another_key_never_takes_the_server() {
    let t = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let victim = common::enroll(
        &t.base,
        &token(&t, 1).await,
        &dir.path().join("v"),
        "cloned-id",
        "v",
        "Linux",
    )
    .await
    .unwrap();
    // A pending reset of the victim.
    let r = t
        .call(
            "PUT",
            &t.batch_path(),
            Some(&ids_body(Some("Vk4!mQz8pL"), None, &[&victim.server_id])),
        )
        .await;
    let rid = r.request_id.unwrap();
    // An attacker with a (stolen) enrollment token and the victim's machine id.
    let attacker = common::enroll(
        &t.base,
        &token(&t, 1).await,
        &dir.path().join("a"),
        "cloned-id",
        "a",
        "Linux",
    )
    .await
    .unwrap();
    assert_ne!(attacker.server_id, victim.server_id);
    // The victim keeps its credential and its pending reset.
    let c = Client::new(common::http(), &t.base, Some(secret(&victim.credential)));
    let w = c
        .work(None, Duration::ZERO, false)
        .await
        .unwrap()
        .unwrap()
        .reset
        .unwrap();
    assert_eq!(w.request_id, rid);
    // Asking for the victim's re-key challenge does not help: it is sealed to
    // the victim's key, and a wrong answer is refused.
    let anon = Client::new(common::http(), &t.base, None);
    let ch = anon.rekey_challenge(&victim.server_id).await.unwrap();
    let (_, pk) = ecs_seal::generate_keypair();
    let guess = proto::EnrollRequest {
        token: String::new(),
        machine_id: "cloned-id".into(),
        hostname: "a".into(),
        os_type: "Linux".into(),
        public_key: pk.to_base64(),
        agent_version: "x".into(),
        rekey: Some(proto::RekeyProof {
            server_id: victim.server_id.clone(),
            challenge_id: ch.challenge_id,
            response: "guess".into(),
        }),
    };
    let r = anon.enroll(&guess).await;
    assert!(format!("{:#}", r.unwrap_err()).contains("401"));
    // The challenge was used up by the wrong answer.
    assert!(anon.enroll(&guess).await.is_err());
    let still = c
        .work(None, Duration::ZERO, false)
        .await
        .unwrap()
        .unwrap()
        .reset
        .unwrap();
    assert_eq!(still.request_id, rid, "the victim's work is intact");

    // A re-key token made by an admin for the victim's server re-keys it.
    let rk = ecsd::api::issue_rekey_token(&t.state, &victim.server_id, 600)
        .await
        .unwrap()
        .unwrap();
    let rekeyed = common::enroll(
        &t.base,
        &rk.token,
        &dir.path().join("fresh"),
        "cloned-id",
        "v",
        "Linux",
    )
    .await
    .unwrap();
    assert_eq!(rekeyed.server_id, victim.server_id);
    assert!(
        c.work(None, Duration::ZERO, false).await.is_err(),
        "the old credential is revoked"
    );
}

#[tokio::test]
async fn duplicate_machine_ids_can_be_refused_without_using_the_token() {
    let t = TestServer::start_with(|c| {
        c.duplicate_machine_id = ecsd::config::DuplicateMachineId::Refuse
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    common::enroll(
        &t.base,
        &token(&t, 1).await,
        &dir.path().join("1"),
        "dup",
        "h",
        "Linux",
    )
    .await
    .unwrap();
    let tok = token(&t, 1).await;
    let e = common::enroll(&t.base, &tok, &dir.path().join("2"), "dup", "h", "Linux").await;
    let msg = format!("{:#}", e.unwrap_err());
    assert!(
        msg.contains("403") && msg.contains("already enrolled"),
        "{msg}"
    );
    // The token kept its use.
    common::enroll(&t.base, &tok, &dir.path().join("3"), "other", "h", "Linux")
        .await
        .unwrap();
}

#[test]
fn plain_http_is_refused_on_a_non_loopback_address_and_without_tls() {
    let dir = tempfile::tempdir().unwrap();
    let key = ecsd::secrets::MasterKey::generate_base64();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ecsd"))
            .arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .env("ECSD_MASTER_KEY", key.expose_secret())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = run(&["serve", "--insecure-http", "--listen", "0.0.0.0:0"]);
    assert!(!ok);
    assert!(err.contains("not a loopback address"), "{err}");
    let (ok, err) = run(&["serve", "--listen", "127.0.0.1:0"]);
    assert!(!ok);
    assert!(err.contains("no TLS certificate is configured"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_over_https_answers_only_clients_that_trust_its_ca() {
    let (t, pki) = https_server().await;
    let good = reqwest::Client::builder()
        .use_preconfigured_tls(
            ecs_trust::tls::client_config(&ecs_trust::tls::Roots::Only(
                ecs_trust::tls::certs_from_file(&pki.ca).unwrap(),
            ))
            .unwrap(),
        )
        .build()
        .unwrap();
    let r = good
        .get(format!("{}/health", https_base(&t)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-request-id"));
    let untrusting = ecs_agent::client::Client::http(Some(
        ecs_trust::tls::client_config(&ecs_trust::tls::Roots::SystemAnd(vec![])).unwrap(),
    ))
    .unwrap();
    let e = untrusting
        .get(format!("{}/health", https_base(&t)))
        .send()
        .await
        .unwrap_err();
    assert!(
        format!("{e:?}").to_lowercase().contains("certificate"),
        "{e:?}"
    );
    // Plain HTTP to the HTTPS port gets no API answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/health", t.host))
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_follow_an_endorsed_work_key_rotation() {
    let t = TestServer::start().await;
    let a = RealAgent::enroll(&t).await;
    let before = ecsd::work::WorkKeys::load_or_create(&*t.state.store, &t.state.master)
        .await
        .unwrap()
        .public();
    assert_eq!(enrollment(&a.state).work_key, before);
    // `ecsd admin work-key-rotate`, then what SIGHUP does.
    let after = ecsd::work::WorkKeys::rotate(&*t.state.store, &t.state.master)
        .await
        .unwrap();
    t.state.reload_work_keys().await.unwrap();
    assert_ne!(after, before);
    let r = t
        .call(
            "PUT",
            &t.batch_path(),
            Some(&ids_body(Some("Rt6=kLm2wX"), None, &[&a.server_id])),
        )
        .await;
    let rid = r.request_id.unwrap();
    // The real agent, against the real ecsd, after a restart.
    let mut child = a.start(&t.base, "boot-after-rotation", &[]);
    let mut state = None;
    for _ in 0..300 {
        state = t.outcome(&rid).await.servers.first().map(|s| s.state);
        if matches!(state, Some(ResetState::Applied | ResetState::Failed)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(state, Some(ResetState::Applied));
    assert_eq!(
        enrollment(&a.state).work_key,
        after,
        "the agent recorded the new key"
    );
}

#[test]
fn ecsd_creates_its_data_directory_and_database_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("new-data");
    let config = ecsd::config::Config {
        data_dir: data.clone(),
        master_key: Some(ecsd::secrets::MasterKey::generate_base64()),
        ..Default::default()
    };
    let _state = ecsd::server::open_state(config).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("ecsd.db")), 0o600);
}

/// The certificate a TLS connection to `addr` presents, and the connection.
async fn connect(
    addr: &str,
    ca: &Path,
) -> (
    Vec<u8>,
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) {
    let cfg = ecs_trust::tls::client_config(&ecs_trust::tls::Roots::Only(
        ecs_trust::tls::certs_from_file(ca).unwrap(),
    ))
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    (leaf, tls)
}

async fn health(tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tls.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pki = ecsd::tls::dev_pki(&data).unwrap();
    let key = ecsd::secrets::MasterKey::generate_base64();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ecsd"))
        .arg("--data-dir")
        .arg(&data)
        .args(["serve", "--listen", &addr, "--tls-cert"])
        .arg(&pki.cert)
        .arg("--tls-key")
        .arg(&pki.key)
        .env("ECSD_MASTER_KEY", key.expose_secret())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut up = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(&addr).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "ecsd did not start");
    let (first, mut old_conn) = connect(&addr, &pki.ca).await;
    assert!(health(&mut old_conn).await.starts_with("HTTP/1.1 200"));
    // Re-issue the server certificate (same CA, new key), then SIGHUP.
    std::fs::remove_file(&pki.cert).unwrap();
    ecsd::tls::dev_pki(&data).unwrap();
    let st = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let mut second = first.clone();
    for _ in 0..100 {
        second = connect(&addr, &pki.ca).await.0;
        if second != first {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(second, first, "new connections get the new certificate");
    // The connection opened before the reload still works.
    let again = health(&mut old_conn).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");
}
