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
    /// The kernel's: `/proc/sys/kernel/random/boot_id` (Linux). On Windows
    /// there is none yet: reading it is an error (use `File`).
    Kernel,
    /// A file holding the boot id (simulated servers, tests).
    File(PathBuf),
}

impl BootSource {
    pub fn read(&self) -> anyhow::Result<String> {
        let path = match self {
            BootSource::Kernel => kernel_boot_id_path()?,
            BootSource::File(p) => p.clone(),
        };
        let id = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the boot id from {}", path.display()))?;
        Ok(id.trim().to_owned())
    }
}

#[cfg(unix)]
fn kernel_boot_id_path() -> anyhow::Result<PathBuf> {
    Ok(PathBuf::from("/proc/sys/kernel/random/boot_id"))
}

#[cfg(windows)]
fn kernel_boot_id_path() -> anyhow::Result<PathBuf> {
    anyhow::bail!(
        "Windows has no kernel boot id source yet: run the agent with --boot-id-file \
         pointing at a file that a start-up task rewrites with a new id at every boot"
    )
}

/// Who carries out power actions (reboot, stop, start).
#[derive(Debug, Clone)]
pub enum PowerControl {
    /// Refused: the default for a real server.
    Disabled,
    /// `systemctl reboot` / `systemctl poweroff` (`--force` when HARD),
    /// with this `systemctl`. Unix only: on Windows every action is refused
    /// (not implemented there).
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
    /// The work-signing key this agent trusts (follows endorsed rotations).
    verifier: std::sync::Mutex<ecs_trust::WorkVerifier>,
    user: &'static str,
    key: ecs_seal::PrivateKey,
    state: StateDir,
    opts: Options,
    started: Instant,
    /// The reconnect spread ecsd last asked for, in seconds.
    spread_secs: std::sync::atomic::AtomicU32,
}

impl Agent {
    /// Loads an enrolled agent, with an HTTP client trusting only the CA
    /// recorded at enrollment.
    pub fn load_own(opts: Options) -> anyhow::Result<Agent> {
        Self::load_with(Client::http_for, opts)
    }

    /// Loads an enrolled agent from its state directory, with this client
    /// (tests hand it one for plain loopback HTTP).
    pub fn load(http: reqwest::Client, opts: Options) -> anyhow::Result<Agent> {
        Self::load_with(|_| Ok(http), opts)
    }

    fn load_with(
        http: impl FnOnce(&crate::files::Enrollment) -> anyhow::Result<reqwest::Client>,
        opts: Options,
    ) -> anyhow::Result<Agent> {
        let state = StateDir(opts.state_dir.clone());
        let enrollment = state
            .load_enrollment()?
            .context("this agent is not enrolled: run `ecs-agent enroll` first")?;
        let http = http(&enrollment)?;
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
            verifier: std::sync::Mutex::new(
                ecs_trust::WorkVerifier::from_base64(&enrollment.work_key).map_err(|_| {
                    anyhow::anyhow!(
                        "agent.json holds no valid work-signing key (enrolled before signed work?): \
                         run `ecs-agent enroll` again; it proves the old key and keeps the server id"
                    )
                })?,
            ),
            server_id: enrollment.server_id,
            user,
            key,
            state,
            opts,
            started: Instant::now(),
            spread_secs: std::sync::atomic::AtomicU32::new(DEFAULT_SPREAD_SECS),
        })
    }

    pub fn server_id(&self) -> &str {
        &self.server_id
    }

    /// Reports in. `start_up`: also asks for the start-up check's work,
    /// which comes back (`Some`, possibly empty) from an ecsd that knows
    /// the field; `None` means poll for it.
    async fn heartbeat(
        &self,
        boot_id: &str,
        start_up: bool,
    ) -> anyhow::Result<Option<proto::Poll>> {
        let answer = self
            .client
            .heartbeat(&proto::HeartbeatRequest {
                agent_version: VERSION.to_owned(),
                boot_id: boot_id.to_owned(),
                uptime_secs: self.started.elapsed().as_secs(),
                power_driver: matches!(self.opts.power, PowerControl::Simulated { .. }),
                start_up,
            })
            .await?;
        if answer.reconnect_spread_secs > 0 {
            self.spread_secs.store(
                answer.reconnect_spread_secs.min(MAX_SPREAD_SECS),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        Ok(answer.work.filter(|_| start_up))
    }

    /// A fresh back-off over the reconnect spread ecsd last asked for.
    fn backoff(&self) -> Backoff {
        Backoff::new(Duration::from_secs(u64::from(
            self.spread_secs.load(std::sync::atomic::Ordering::Relaxed),
        )))
    }

    /// Runs until an unrecoverable error; network errors are retried.
    pub async fn run(&self) -> anyhow::Result<()> {
        let boot_id = self.opts.boot.read()?;
        let mut journal = self.state.load_journal()?;
        let restarted = journal.boot_id.as_deref() != Some(boot_id.as_str());
        // The start-up check's first poll rides on the heartbeat — unless an
        // outcome is still to be reported: its target must be acknowledged
        // before ecsd is asked what is open.
        let start_up = restarted && journal.unacked.is_none();
        let mut first = retry("heartbeat", self.backoff(), || {
            self.heartbeat(&boot_id, start_up)
        })
        .await;
        self.flush_ack(&mut journal).await;

        if restarted {
            // The server (re)started: apply the newest pending password, if any
            // (power actions queued before it are carried out first).
            for _ in 0..8 {
                let polled = match first.take() {
                    Some(answered) => Some(answered),
                    None => {
                        let poll = || self.client.work(None, Duration::ZERO, false);
                        retry("work", self.backoff(), poll).await
                    }
                };
                match polled {
                    Some(proto::Poll { reset: Some(w), .. }) => {
                        self.apply(w, &mut journal).await?;
                        break;
                    }
                    Some(proto::Poll { power: Some(p), .. }) => self.power(p, &mut journal).await,
                    _ => break,
                }
            }
            journal.boot_id = Some(boot_id.clone());
            self.state.save_journal(&journal)?;
            tracing::info!(server_id = %self.server_id, "start-up reset check done");
        }

        let mut have: Option<String> = None;
        let mut next_heartbeat = Instant::now() + self.opts.heartbeat;
        let mut backoff = self.backoff();
        loop {
            let wait = self
                .opts
                .poll
                .min(next_heartbeat.saturating_duration_since(Instant::now()))
                .max(Duration::from_secs(1));
            // An outcome to report goes with the poll that follows it (one
            // call); if ecsd did not poll after it, poll on our own.
            let polled = match self
                .flush_ack_then_poll(&mut journal, have.as_deref(), wait)
                .await
            {
                Some(answered) => Ok(answered),
                None => self.client.work(have.as_deref(), wait, false).await,
            };
            if polled.is_ok() {
                backoff = self.backoff();
            }
            match polled {
                Ok(Some(proto::Poll { power: Some(p), .. })) => self.power(p, &mut journal).await,
                Ok(Some(proto::Poll { reset: Some(w), .. })) if w.apply_now => {
                    self.apply(w, &mut journal).await?
                }
                Ok(Some(proto::Poll { reset: Some(w), .. })) => {
                    tracing::info!(request_id = %w.request_id, "reset received; it applies at the next start");
                    have = Some(w.request_id);
                }
                Ok(_) => {}
                Err(e) => {
                    // The control plane went away (a restart, a failover):
                    // come back at a random time within the spread it asked
                    // for, not all agents at once.
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %format!("{e:#}"), "polling for work failed; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                }
            }
            if Instant::now() >= next_heartbeat {
                if let Err(e) = self.heartbeat(&boot_id, false).await {
                    tracing::warn!(error = %format!("{e:#}"), "heartbeat failed");
                }
                next_heartbeat = Instant::now() + self.opts.heartbeat;
            }
        }
    }

    /// Verifies a work item's envelope: signed by the trusted key (after
    /// following endorsed rotations), addressed to this server, newer than
    /// `last_seq`. The refusal's text is reported to ecsd.
    fn verify(
        &self,
        envelope: Option<&proto::SignedEnvelope>,
        keys: &[proto::KeyEndorsement],
        last_seq: u64,
    ) -> Result<proto::Envelope, ecs_trust::WorkError> {
        let verifier = {
            let mut v = self.verifier.lock().expect("verifier lock");
            let next = v.follow(keys)?;
            if next != *v {
                tracing::info!(work_key = %next.public(), "following an endorsed work-signing key rotation");
                if let Err(e) = self.state.save_work_key(&next.public()) {
                    tracing::error!(error = %format!("{e:#}"), "recording the new work-signing key failed");
                }
                *v = next;
            }
            v.clone()
        };
        let env = verifier.open(envelope)?;
        ecs_trust::work::check_order(&env, &self.server_id, last_seq)?;
        Ok(env)
    }

    /// Checks a power action against its signed envelope and records its
    /// sequence number (so a replay is refused), before anything is done.
    fn accept_power(&self, p: &proto::Power, journal: &mut Journal) -> Result<(), String> {
        let env = self
            .verify(p.envelope.as_ref(), &p.keys, journal.last_power_seq)
            .map_err(|e| e.to_string())?;
        let kind = match p.action.as_str() {
            "start" => Some(proto::WorkKind::Start),
            "stop" => Some(proto::WorkKind::Stop),
            "reboot" => Some(proto::WorkKind::Reboot),
            _ => None,
        };
        if Some(env.kind) != kind || env.id != p.job_id || env.hard != p.hard {
            return Err(ecs_trust::WorkError::Mismatch("power action").to_string());
        }
        journal.last_power_seq = env.seq;
        self.state
            .save_journal(journal)
            .map_err(|e| format!("recording the power action failed: {e:#}"))
    }

    /// Carries out a power action, if this agent's configuration allows it
    /// and ecsd signed it.
    async fn power(&self, p: proto::Power, journal: &mut Journal) {
        let verified = self.accept_power(&p, journal);
        if let Err(why) = &verified {
            tracing::error!(sub_job = %p.job_id, reason = %why, "refusing a power action");
        }
        let refuse = match (&verified, &self.opts.power, p.action.as_str()) {
            (Err(why), _, _) => Some(why.clone()),
            (_, PowerControl::Disabled, _) => Some(
                "power actions are disabled on this server (start the agent with --allow-power-actions)".to_owned(),
            ),
            #[cfg(windows)]
            (_, PowerControl::System { .. }, _) => {
                Some("power actions are not implemented for Windows servers".to_owned())
            }
            (_, _, "start") => Some("the server is already running".to_owned()),
            (_, _, "reboot" | "stop") => None,
            (_, _, other) => Some(format!("unknown power action {other}")),
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
            #[cfg(unix)]
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
            #[cfg(windows)]
            PowerControl::System { .. } => {}
            PowerControl::Disabled => {}
        }
    }

    /// Opens and applies one reset and records its outcome in the journal
    /// for the acknowledgement, which the poll loop sends with its next poll.
    /// At most once per request id: the journal records it before the
    /// acknowledgement.
    async fn apply(&self, work: proto::Work, journal: &mut Journal) -> anyhow::Result<()> {
        let rid = work.request_id.clone();
        if journal.applied.contains(&rid) {
            journal.unacked = Some((rid, true, None));
            self.state.save_journal(journal)?;
            return Ok(());
        }
        let checked = self
            .verify(work.envelope.as_ref(), &work.keys, journal.last_reset_seq)
            .and_then(|env| check_reset(&env, &work).map(|()| env));
        let env = match checked {
            Ok(env) => env,
            Err(e) => {
                tracing::error!(request_id = %rid, reason = %e, "refusing a reset");
                journal.unacked = Some((rid, false, Some(e.to_string())));
                self.state.save_journal(journal)?;
                return Ok(());
            }
        };
        let outcome = match self.open(&work) {
            Ok(password) => {
                let root = self.opts.root.clone();
                let user = self.user;
                // Interrupted while applying this very request? If the new
                // password is already in place, do not apply it a second time.
                #[cfg(unix)]
                if journal.applying.as_deref() == Some(rid.as_str())
                    && crate::shadow::verifies(&root, user, &password).unwrap_or(false)
                {
                    tracing::info!(request_id = %rid, "found applied before an interruption");
                    journal.applied.push(rid.clone());
                    journal.last_reset_seq = journal.last_reset_seq.max(env.seq);
                    journal.applying = None;
                    journal.unacked = Some((rid, true, None));
                    self.state.save_journal(journal)?;
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
                        journal.last_reset_seq = journal.last_reset_seq.max(env.seq);
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
        self.send_ack(journal, None).await;
    }

    /// Sends a recorded outcome, if any, with a long poll after it (`have`,
    /// `wait`): `Some` with what that poll found (`None`: nothing), or
    /// `None` when there was nothing to send, the acknowledgement failed, or
    /// ecsd did not poll after it.
    async fn flush_ack_then_poll(
        &self,
        journal: &mut Journal,
        have: Option<&str>,
        wait: Duration,
    ) -> Option<Option<proto::Poll>> {
        let then = proto::PollAfter {
            have: have.map(str::to_owned),
            wait_secs: wait.as_secs(),
        };
        let work = self.send_ack(journal, Some(then)).await?;
        Some(Some(work).filter(|p| p.reset.is_some() || p.power.is_some()))
    }

    /// Sends the journal's unacknowledged outcome, if any; forgets it once
    /// ecsd has answered. Returns the answer's `work`.
    async fn send_ack(
        &self,
        journal: &mut Journal,
        then_poll: Option<proto::PollAfter>,
    ) -> Option<proto::Poll> {
        let (rid, applied, reason) = journal.unacked.clone()?;
        let ack = proto::AckRequest {
            request_id: rid.clone(),
            outcome: if applied {
                proto::Outcome::Applied
            } else {
                proto::Outcome::Failed
            },
            reason,
            then_poll,
        };
        match self.client.ack_and_poll(&ack).await {
            Ok(answer) => {
                if !answer.recorded {
                    // Superseded meanwhile, or recorded already: an
                    // acknowledgement whose answer was lost (the agent
                    // stopped while its acknowledgement-and-poll waited).
                    tracing::info!(request_id = %rid, "ecsd no longer expected this outcome (superseded, or recorded already)");
                }
                journal.unacked = None;
                if let Err(e) = self.state.save_journal(journal) {
                    tracing::error!(error = %format!("{e:#}"), "saving the journal failed");
                }
                answer.work
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "acknowledging failed; will retry");
                None
            }
        }
    }
}

/// A reset must be what its envelope says: same request, same sealed bytes,
/// same apply mode.
fn check_reset(env: &proto::Envelope, work: &proto::Work) -> Result<(), ecs_trust::WorkError> {
    use ecs_trust::WorkError::Mismatch;
    if env.kind != proto::WorkKind::Reset || env.id != work.request_id {
        return Err(Mismatch("request"));
    }
    let sealed =
        ecs_seal::Sealed::from_base64(&work.sealed).map_err(|_| Mismatch("sealed password"))?;
    if env.sealed_sha256.as_deref()
        != Some(ecs_trust::work::sealed_hash(sealed.as_bytes()).as_str())
    {
        return Err(Mismatch("sealed password"));
    }
    if (env.apply == proto::ApplyMode::Now) != work.apply_now {
        return Err(Mismatch("apply mode"));
    }
    Ok(())
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
    let result = {
        // Windows has no root file system to edit: the local account is set.
        let _ = root;
        crate::windows::set_password(user, password)
    };
    #[cfg(unix)]
    let result = crate::shadow::apply(root, user, password).map_err(|e| e.to_string());
    result
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

/// Retries an operation until it succeeds, waiting as `backoff` says.
async fn retry<T, F, Fut>(what: &str, mut backoff: Backoff, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %format!("{e:#}"), "{what} failed; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The reconnect spread before ecsd has named one (an older ecsd, or none
/// reached yet), and the most an answer may ask for.
const DEFAULT_SPREAD_SECS: u32 = 5;
const MAX_SPREAD_SECS: u32 = 600;

/// Waits between tries after the control plane went away: "full jitter"
/// (a uniformly random time within a window) so that a fleet that lost
/// ecsd at the same moment does not come back at the same moment. The
/// window starts at the spread ecsd asked for (at least 1 s) and doubles
/// with each further failure up to the larger of that spread and 60 s.
#[derive(Debug, Clone)]
pub struct Backoff {
    window: Duration,
    cap: Duration,
}

impl Backoff {
    pub fn new(spread: Duration) -> Backoff {
        let window = spread.max(Duration::from_secs(1));
        Backoff {
            window,
            cap: window.max(Duration::from_secs(60)),
        }
    }

    /// The next wait: random within the window (at least 100 ms), then the
    /// window doubles.
    pub fn next_delay(&mut self) -> Duration {
        use rand::Rng;
        let ms = self.window.as_millis() as u64;
        let delay = Duration::from_millis(rand::rng().random_range(100..=ms.max(100)));
        self.window = (self.window * 2).min(self.cap);
        delay
    }
}

/// Whom the agent trusts while enrolling (contract §6, pinned enrollment).
#[derive(Debug, Clone)]
pub enum EnrollTrust {
    /// The SHA-256 of the control plane CA's public key (from a join token or
    /// `--ca-cert-hash`): nothing is sent to a server whose chain does not
    /// contain that CA and verify against it, even if the system trusts it.
    Pin(ecs_trust::CaPin),
    /// No pin: the system's roots plus the CA certificates the operator put
    /// on this server (`--ca-file`, may be empty), now and afterwards. For a
    /// control plane with a publicly trusted certificate; a pin is stronger.
    SystemAnd(Vec<ecs_trust::tls::CertDer>),
    /// Plain HTTP, allowed only to a loopback endpoint (tests, a local proxy).
    PlainLoopback,
}

impl EnrollTrust {
    /// Chooses from the endpoint and what the operator gave.
    pub fn choose(
        endpoint: &str,
        pin: Option<ecs_trust::CaPin>,
        ca_file: Option<&std::path::Path>,
    ) -> anyhow::Result<EnrollTrust> {
        if endpoint.starts_with("http://") {
            anyhow::ensure!(
                ecs_trust::tls::is_loopback_http(endpoint),
                "refusing plain HTTP to {endpoint}: use https:// (plain HTTP only to a loopback address)"
            );
            return Ok(EnrollTrust::PlainLoopback);
        }
        anyhow::ensure!(
            endpoint.starts_with("https://"),
            "the endpoint must be an https:// URL"
        );
        match (pin, ca_file) {
            (Some(p), _) => Ok(EnrollTrust::Pin(p)),
            (None, Some(f)) => Ok(EnrollTrust::SystemAnd(ecs_trust::tls::certs_from_file(f)?)),
            (None, None) => {
                tracing::warn!(
                    "no CA pin given: trusting the system's roots (a join token pins the control plane's CA)"
                );
                Ok(EnrollTrust::SystemAnd(Vec::new()))
            }
        }
    }
}

/// Splits a join token `<token>.<hex of the CA pin>` into its parts.
pub fn split_join_token(join: &str) -> anyhow::Result<(SecretString, Option<ecs_trust::CaPin>)> {
    let join = join.trim();
    match join.rsplit_once('.') {
        Some((token, pin)) => Ok((
            SecretString::from(token.to_owned()),
            Some(ecs_trust::CaPin::parse(pin).context("the join token's CA pin is malformed")?),
        )),
        None => Ok((SecretString::from(join.to_owned()), None)),
    }
}

/// What enrolling needs.
pub struct EnrollParams<'a> {
    pub endpoint: &'a str,
    /// Enrollment or re-key token; may be empty when re-keying with the old key.
    pub token: &'a SecretString,
    pub trust: EnrollTrust,
    pub state_dir: &'a std::path::Path,
    pub machine_id: &'a str,
    pub hostname: &'a str,
    pub os_type: &'a str,
}

/// Enrolls this machine: generates the key pair locally (the private key
/// never leaves the state directory), registers, stores the credential, the
/// CA it will trust from now on and the work-signing key. A machine already
/// enrolled proves possession of its old key to keep its server id.
pub async fn enroll(p: EnrollParams<'_>) -> anyhow::Result<proto::EnrollResponse> {
    use secrecy::ExposeSecret;
    let state = StateDir(p.state_dir.to_owned());
    let pinned = match &p.trust {
        EnrollTrust::Pin(pin) => Some(ecs_trust::tls::PinnedVerifier::new(*pin)),
        _ => None,
    };
    let tls = match (&p.trust, &pinned) {
        (EnrollTrust::Pin(_), Some(v)) => Some(v.client_config()?),
        (EnrollTrust::SystemAnd(certs), _) => Some(ecs_trust::tls::client_config(
            &ecs_trust::tls::Roots::SystemAnd(certs.clone()),
        )?),
        _ => None,
    };
    let client = Client::new(Client::http(tls)?, p.endpoint, None);

    // Re-enrolling: prove possession of the old key to keep the server.
    let mut rekey = None;
    if let (Some(old), Ok(old_key)) = (state.load_enrollment().ok().flatten(), state.load_key()) {
        match client.rekey_challenge(&old.server_id).await {
            Ok(ch) => {
                let sealed = ecs_seal::Sealed::from_base64(&ch.sealed)
                    .map_err(|e| anyhow::anyhow!("the challenge is malformed: {e}"))?;
                let answer = ecs_seal::open(
                    &old_key,
                    &old.server_id,
                    &format!("rekey-challenge:{}", ch.challenge_id),
                    &sealed,
                )
                .map_err(|e| {
                    anyhow::anyhow!("the challenge does not open with the old key: {e}")
                })?;
                rekey = Some(proto::RekeyProof {
                    server_id: old.server_id.clone(),
                    challenge_id: ch.challenge_id,
                    response: answer.expose_secret().to_owned(),
                });
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), server_id = %old.server_id, "the old enrollment cannot be proven; enrolling with the token");
            }
        }
    }
    anyhow::ensure!(
        rekey.is_some() || !p.token.expose_secret().is_empty(),
        "an enrollment token is needed"
    );

    let (sk, pk) = ecs_seal::generate_keypair();
    let resp = client
        .enroll(&proto::EnrollRequest {
            token: p.token.expose_secret().to_owned(),
            machine_id: p.machine_id.to_owned(),
            hostname: p.hostname.to_owned(),
            os_type: p.os_type.to_owned(),
            public_key: pk.to_base64(),
            agent_version: VERSION.to_owned(),
            rekey,
        })
        .await?;
    let (ca_pem, system_roots) = match (&p.trust, &pinned) {
        (EnrollTrust::Pin(_), Some(v)) => (
            Some(ecs_trust::tls::certs_to_pem(&[v
                .matched_ca()
                .context("the pinned CA was not seen")?])),
            false,
        ),
        (EnrollTrust::SystemAnd(certs), _) => (
            (!certs.is_empty()).then(|| ecs_trust::tls::certs_to_pem(certs)),
            true,
        ),
        _ => (None, false),
    };
    let work_key = resp
        .work_keys
        .last()
        .context("the server sent no work-signing key")?
        .public_key
        .clone();
    ecs_trust::WorkVerifier::from_base64(&work_key)
        .map_err(|e| anyhow::anyhow!("the work-signing key is malformed: {e}"))?;
    state.save_key(&sk)?;
    state.save_enrollment(&crate::files::Enrollment {
        endpoint: p.endpoint.to_owned(),
        server_id: resp.server_id.clone(),
        project_id: resp.project_id.clone(),
        os_type: p.os_type.to_owned(),
        machine_id: p.machine_id.to_owned(),
        credential: SecretString::from(resp.credential.clone()),
        ca_pem,
        system_roots,
        work_key,
    })?;
    // A new key and a new credential: older journal entries refer to resets
    // sealed to the old key.
    state.save_journal(&Journal::default())?;
    Ok(resp)
}

#[cfg(test)]
mod backoff_tests {
    use super::Backoff;
    use std::time::Duration;

    #[test]
    fn reconnect_delays_are_random_within_a_window_that_doubles_to_its_cap() {
        // Spread 50 s: the first waits fall anywhere in (0.1 s, 50 s] ...
        let firsts: Vec<Duration> = (0..2000)
            .map(|_| Backoff::new(Duration::from_secs(50)).next_delay())
            .collect();
        assert!(firsts.iter().all(|d| *d >= Duration::from_millis(100)));
        assert!(firsts.iter().all(|d| *d <= Duration::from_secs(50)));
        // ... spread over it, not bunched (each tenth of the window holds some).
        for tenth in 0..10 {
            let (lo, hi) = (tenth * 5_000, (tenth + 1) * 5_000);
            let n = firsts
                .iter()
                .filter(|d| (lo..hi).contains(&(d.as_millis() as u64)))
                .count();
            assert!(n > 100, "{n} of 2000 first delays in {lo}..{hi} ms");
        }
        // The window doubles per failure up to max(spread, 60 s).
        let mut b = Backoff::new(Duration::from_secs(1));
        let windows: Vec<Duration> = (0..10)
            .map(|_| {
                b.next_delay();
                b.window
            })
            .collect();
        assert_eq!(windows[0], Duration::from_secs(2));
        assert_eq!(windows[4], Duration::from_secs(32));
        assert_eq!(windows[9], Duration::from_secs(60));
        let mut big = Backoff::new(Duration::from_secs(120));
        big.next_delay();
        assert_eq!(
            big.window,
            Duration::from_secs(120),
            "a spread above 60 s is its own cap"
        );
        // A spread of 0 (not yet known) still waits up to 1 s, not busy-loops.
        let mut zero = Backoff::new(Duration::ZERO);
        assert!(zero.next_delay() <= Duration::from_secs(1));
    }
}
