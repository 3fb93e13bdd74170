//! The daemon: reports in, applies the newest pending password when the
//! server has (re)booted, and waits for work.
//!
//! "Booted" means the boot id differs from the one in the journal. On Linux
//! the boot id is the kernel's (`/proc/sys/kernel/random/boot_id`); a
//! simulated server has its own in a file. A reset delivered while the server
//! keeps running is held until the next boot, unless it asks to be applied
//! now (contract §2.7, §3.4).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use ecs_agent_proto as proto;
use secrecy::SecretString;

use crate::client::Client;
use crate::files::{Journal, StateDir};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where the boot id comes from.
#[derive(Debug, Clone)]
pub enum BootSource {
    /// `/proc/sys/kernel/random/boot_id`.
    Kernel,
    /// A file holding the boot id (simulated servers, tests).
    File(PathBuf),
}

impl BootSource {
    pub fn read(&self) -> anyhow::Result<String> {
        let path = match self {
            BootSource::Kernel => PathBuf::from("/proc/sys/kernel/random/boot_id"),
            BootSource::File(p) => p.clone(),
        };
        let id = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the boot id from {}", path.display()))?;
        Ok(id.trim().to_owned())
    }
}

/// Who carries out power actions (reboot, stop, start).
#[derive(Debug, Clone)]
pub enum PowerControl {
    /// Refused: the default for a real server.
    Disabled,
    /// `systemctl reboot` / `systemctl poweroff` (`--force` when HARD),
    /// with this `systemctl`.
    System { systemctl: PathBuf },
    /// A simulated server: the fleet controller carries them out.
    Simulated {
        name: String,
        events: tokio::sync::mpsc::UnboundedSender<PowerEvent>,
    },
}

/// A power action for the fleet simulator to perform on one virtual server.
#[derive(Debug, Clone)]
pub struct PowerEvent {
    pub name: String,
    pub action: String,
}

/// How one agent runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Who carries out power actions.
    pub power: PowerControl,
    /// Root file system whose `/etc/shadow` is edited.
    pub root: PathBuf,
    pub state_dir: PathBuf,
    pub boot: BootSource,
    /// Long-poll length.
    pub poll: Duration,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// Overrides the endpoint recorded at enrollment.
    pub endpoint: Option<String>,
}

pub struct Agent {
    client: Client,
    server_id: String,
    user: &'static str,
    key: ecs_seal::PrivateKey,
    state: StateDir,
    opts: Options,
    started: Instant,
}

impl Agent {
    /// Loads an enrolled agent from its state directory.
    pub fn load(http: reqwest::Client, opts: Options) -> anyhow::Result<Agent> {
        let state = StateDir(opts.state_dir.clone());
        let enrollment = state
            .load_enrollment()?
            .context("this agent is not enrolled: run `ecs-agent enroll` first")?;
        let key = state.load_key()?;
        let user = match ecs_os(&enrollment.os_type) {
            Os::Linux => "root",
            Os::Windows => "Administrator",
        };
        Ok(Agent {
            client: Client::new(
                http,
                opts.endpoint.as_deref().unwrap_or(&enrollment.endpoint),
                Some(enrollment.credential),
            ),
            server_id: enrollment.server_id,
            user,
            key,
            state,
            opts,
            started: Instant::now(),
        })
    }

    pub fn server_id(&self) -> &str {
        &self.server_id
    }

    async fn heartbeat(&self, boot_id: &str) -> anyhow::Result<()> {
        self.client
            .heartbeat(&proto::HeartbeatRequest {
                agent_version: VERSION.to_owned(),
                boot_id: boot_id.to_owned(),
                uptime_secs: self.started.elapsed().as_secs(),
                power_driver: matches!(self.opts.power, PowerControl::Simulated { .. }),
            })
            .await
    }

    /// Runs until an unrecoverable error; network errors are retried.
    pub async fn run(&self) -> anyhow::Result<()> {
        let boot_id = self.opts.boot.read()?;
        let mut journal = self.state.load_journal()?;
        retry("heartbeat", || self.heartbeat(&boot_id)).await;
        self.flush_ack(&mut journal).await;

        if journal.boot_id.as_deref() != Some(boot_id.as_str()) {
            // The server (re)started: apply the newest pending password, if any
            // (power actions queued before it are carried out first).
            for _ in 0..8 {
                match retry("work", || self.client.work(None, Duration::ZERO, false)).await {
                    Some(proto::Poll { reset: Some(w), .. }) => {
                        self.apply(w, &mut journal).await?;
                        break;
                    }
                    Some(proto::Poll { power: Some(p), .. }) => self.power(p).await,
                    _ => break,
                }
            }
            journal.boot_id = Some(boot_id.clone());
            self.state.save_journal(&journal)?;
            tracing::info!(server_id = %self.server_id, "start-up reset check done");
        }

        let mut have: Option<String> = None;
        let mut next_heartbeat = Instant::now() + self.opts.heartbeat;
        loop {
            self.flush_ack(&mut journal).await;
            let wait = self
                .opts
                .poll
                .min(next_heartbeat.saturating_duration_since(Instant::now()))
                .max(Duration::from_secs(1));
            match self.client.work(have.as_deref(), wait, false).await {
                Ok(Some(proto::Poll { power: Some(p), .. })) => self.power(p).await,
                Ok(Some(proto::Poll { reset: Some(w), .. })) if w.apply_now => {
                    self.apply(w, &mut journal).await?
                }
                Ok(Some(proto::Poll { reset: Some(w), .. })) => {
                    tracing::info!(request_id = %w.request_id, "reset received; it applies at the next start");
                    have = Some(w.request_id);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "polling for work failed; retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
            if Instant::now() >= next_heartbeat {
                if let Err(e) = self.heartbeat(&boot_id).await {
                    tracing::warn!(error = %format!("{e:#}"), "heartbeat failed");
                }
                next_heartbeat = Instant::now() + self.opts.heartbeat;
            }
        }
    }

    /// Carries out a power action, if this agent's configuration allows it.
    async fn power(&self, p: proto::Power) {
        let refuse = match (&self.opts.power, p.action.as_str()) {
            (PowerControl::Disabled, _) => Some(
                "power actions are disabled on this server (start the agent with --allow-power-actions)".to_owned(),
            ),
            (_, "start") => Some("the server is already running".to_owned()),
            (_, "reboot" | "stop") => None,
            (_, other) => Some(format!("unknown power action {other}")),
        };
        let ack = proto::PowerAck {
            job_id: p.job_id.clone(),
            ok: refuse.is_none(),
            reason: refuse.clone(),
        };
        if let Err(e) = retry_n("power ack", 5, || self.client.power_ack(&ack)).await {
            tracing::warn!(error = %format!("{e:#}"), "power ack failed");
            return;
        }
        if refuse.is_some() {
            return;
        }
        tracing::info!(action = %p.action, hard = p.hard, "carrying out a power action");
        match &self.opts.power {
            PowerControl::System { systemctl } => {
                let verb = if p.action == "reboot" {
                    "reboot"
                } else {
                    "poweroff"
                };
                let mut cmd = std::process::Command::new(systemctl);
                cmd.arg(verb);
                if p.hard {
                    cmd.arg("--force");
                }
                match cmd.status() {
                    Ok(st) if st.success() => {
                        // Going down: no more heartbeats, which would say
                        // the server is still running.
                        std::future::pending::<()>().await;
                    }
                    failed => {
                        // Still running: say so (a reboot's sub-job is still
                        // open); the next heartbeat shows the server ACTIVE.
                        let reason = match failed {
                            Ok(st) => format!("systemctl {verb} failed: {st}"),
                            Err(e) => format!("systemctl {verb} could not run: {e}"),
                        };
                        tracing::error!("{reason}");
                        let ack = proto::PowerAck {
                            job_id: p.job_id,
                            ok: false,
                            reason: Some(reason),
                        };
                        let _ = self.client.power_ack(&ack).await;
                    }
                }
            }
            PowerControl::Simulated { name, events } => {
                let _ = events.send(PowerEvent {
                    name: name.clone(),
                    action: p.action,
                });
                // The controller stops this agent; wait for it.
                std::future::pending::<()>().await;
            }
            PowerControl::Disabled => {}
        }
    }

    /// Opens and applies one reset, then acknowledges it. At most once per
    /// request id: the journal records it before the acknowledgement.
    async fn apply(&self, work: proto::Work, journal: &mut Journal) -> anyhow::Result<()> {
        let rid = work.request_id.clone();
        if journal.applied.contains(&rid) {
            journal.unacked = Some((rid, true, None));
            self.flush_ack(journal).await;
            return Ok(());
        }
        let outcome = match self.open(&work) {
            Ok(password) => {
                let root = self.opts.root.clone();
                let user = self.user;
                // Interrupted while applying this very request? If the new
                // password is already in place, do not apply it a second time.
                #[cfg(not(windows))]
                if journal.applying.as_deref() == Some(rid.as_str())
                    && crate::shadow::verifies(&root, user, &password).unwrap_or(false)
                {
                    tracing::info!(request_id = %rid, "found applied before an interruption");
                    journal.applied.push(rid.clone());
                    journal.applying = None;
                    journal.unacked = Some((rid, true, None));
                    self.state.save_journal(journal)?;
                    self.flush_ack(journal).await;
                    return Ok(());
                }
                journal.applying = Some(rid.clone());
                self.state.save_journal(journal)?;
                let result =
                    tokio::task::spawn_blocking(move || apply_password(&root, user, &password))
                        .await
                        .context("applying task")?;
                match result {
                    Ok(()) => {
                        journal.applied.push(rid.clone());
                        let len = journal.applied.len();
                        journal.applied.drain(..len.saturating_sub(32));
                        tracing::info!(request_id = %rid, "new password applied");
                        (true, None)
                    }
                    Err(e) => {
                        tracing::error!(request_id = %rid, error = %e, "applying the password failed");
                        (false, Some(e))
                    }
                }
            }
            Err(e) => {
                tracing::error!(request_id = %rid, error = %e, "the sealed password does not open");
                (false, Some(e))
            }
        };
        journal.applying = None;
        journal.unacked = Some((rid, outcome.0, outcome.1));
        self.state.save_journal(journal)?;
        self.flush_ack(journal).await;
        Ok(())
    }

    fn open(&self, work: &proto::Work) -> Result<SecretString, String> {
        if work.server_id != self.server_id {
            return Err("the reset is addressed to another server".into());
        }
        let sealed = ecs_seal::Sealed::from_base64(&work.sealed).map_err(|e| e.to_string())?;
        ecs_seal::open(&self.key, &self.server_id, &work.request_id, &sealed)
            .map_err(|e| e.to_string())
    }

    /// Sends a recorded outcome; keeps it for later if the server is unreachable.
    async fn flush_ack(&self, journal: &mut Journal) {
        let Some((rid, applied, reason)) = journal.unacked.clone() else {
            return;
        };
        let ack = proto::AckRequest {
            request_id: rid.clone(),
            outcome: if applied {
                proto::Outcome::Applied
            } else {
                proto::Outcome::Failed
            },
            reason,
        };
        match self.client.ack(&ack).await {
            Ok(recorded) => {
                if !recorded {
                    tracing::warn!(request_id = %rid, "the server no longer expected this outcome");
                }
                journal.unacked = None;
                if let Err(e) = self.state.save_journal(journal) {
                    tracing::error!(error = %format!("{e:#}"), "saving the journal failed");
                }
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "acknowledging failed; will retry"),
        }
    }
}

enum Os {
    Linux,
    Windows,
}

fn ecs_os(s: &str) -> Os {
    if s.eq_ignore_ascii_case("windows") {
        Os::Windows
    } else {
        Os::Linux
    }
}

/// Applies a password for `user` on this platform.
fn apply_password(
    root: &std::path::Path,
    user: &str,
    password: &SecretString,
) -> Result<(), String> {
    #[cfg(windows)]
    {
        let _ = root;
        return crate::windows::set_password(user, password);
    }
    #[cfg(not(windows))]
    {
        crate::shadow::apply(root, user, password).map_err(|e| e.to_string())
    }
}

/// Retries an operation a few times.
async fn retry_n<T, F, Fut>(what: &str, tries: u32, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut last = None;
    for i in 0..tries {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "{what} failed (try {})", i + 1);
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(200 << i)).await;
            }
        }
    }
    Err(last.expect("at least one try"))
}

/// Retries an operation with capped exponential back-off until it succeeds.
async fn retry<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut delay = Duration::from_millis(200);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "{what} failed; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Enrolls this machine: generates the key pair locally (the private key
/// never leaves the state directory), registers, stores the credential.
pub async fn enroll(
    http: reqwest::Client,
    endpoint: &str,
    token: &str,
    state_dir: &std::path::Path,
    machine_id: &str,
    hostname: &str,
    os_type: &str,
) -> anyhow::Result<proto::EnrollResponse> {
    let state = StateDir(state_dir.to_owned());
    let (sk, pk) = ecs_seal::generate_keypair();
    let client = Client::new(http, endpoint, None);
    let resp = client
        .enroll(&proto::EnrollRequest {
            token: token.to_owned(),
            machine_id: machine_id.to_owned(),
            hostname: hostname.to_owned(),
            os_type: os_type.to_owned(),
            public_key: pk.to_base64(),
            agent_version: VERSION.to_owned(),
        })
        .await?;
    state.save_key(&sk)?;
    state.save_enrollment(&crate::files::Enrollment {
        endpoint: endpoint.to_owned(),
        server_id: resp.server_id.clone(),
        project_id: resp.project_id.clone(),
        os_type: os_type.to_owned(),
        machine_id: machine_id.to_owned(),
        credential: SecretString::from(resp.credential.clone()),
    })?;
    // A new key: older journal entries refer to resets sealed to the old one.
    state.save_journal(&Journal::default())?;
    Ok(resp)
}
