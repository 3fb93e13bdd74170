//! `ecs-agent`: enroll, run the daemon, or simulate a fleet.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ecs_agent::agent::{self, Agent, BootSource, Options, PowerControl};

/// Where the agent keeps its key, enrollment and journal by default.
#[cfg(unix)]
const DEFAULT_STATE_DIR: &str = "/var/lib/ecs-agent";
#[cfg(windows)]
const DEFAULT_STATE_DIR: &str = r"C:\ProgramData\ecs-agent";

/// The server's root file system by default.
#[cfg(unix)]
const DEFAULT_ROOT: &str = "/";
#[cfg(windows)]
const DEFAULT_ROOT: &str = r"C:\";

/// The `os_type` enrolled by default.
#[cfg(unix)]
const DEFAULT_OS_TYPE: &str = "Linux";
#[cfg(windows)]
const DEFAULT_OS_TYPE: &str = "Windows";

#[derive(Parser)]
#[command(name = "ecs-agent", version, about = "The ECS password reset plug-in")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll this server with ecsd (generates the key pair locally).
    ///
    /// The token is read from a file or standard input, never from the
    /// command line. A join token (`<token>.<CA hash>`, the `join_token` of
    /// `ecsd admin enroll-token-create`) pins the control plane's CA: nothing
    /// is sent to a server that does not chain to it. An enrolled machine
    /// re-enrolling proves possession of its old key and keeps its server id.
    ///
    /// Example: ecs-agent enroll --endpoint https://ecsd:8443 --token-file /root/join-token
    Enroll {
        #[arg(long, env = "ECS_AGENT_ENDPOINT")]
        endpoint: String,
        /// File holding the join token, enrollment token or re-key token
        /// (`-` for standard input).
        #[arg(long)]
        token_file: PathBuf,
        #[command(flatten)]
        trust: TrustArgs,
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Root file system of the server (default `/`).
        #[arg(long, default_value = DEFAULT_ROOT)]
        root: PathBuf,
        #[arg(long, default_value = DEFAULT_OS_TYPE)]
        os_type: String,
        /// Defaults to the machine's hostname.
        #[arg(long)]
        hostname: Option<String>,
    },
    /// Run the daemon: apply the newest pending password at each start.
    ///
    /// Example: ecs-agent run --root / --state-dir /var/lib/ecs-agent
    Run {
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        #[arg(long, default_value = DEFAULT_ROOT)]
        root: PathBuf,
        /// Read the boot id from this file instead of the kernel (tests; on
        /// Windows required, as there is no kernel boot id source yet).
        #[arg(long)]
        boot_id_file: Option<PathBuf>,
        #[arg(long, default_value_t = 25)]
        poll_secs: u64,
        #[arg(long, default_value_t = 30)]
        heartbeat_secs: u64,
        /// Carry out reboot and stop actions (with systemctl). Off by default.
        /// Not implemented on Windows: there every action is refused.
        #[arg(long)]
        allow_power_actions: bool,
        /// The systemctl to run for power actions.
        #[arg(long, default_value = "systemctl")]
        systemctl: PathBuf,
    },
    /// Run N simulated servers in one process (Unix only).
    ///
    /// Reads commands on standard input: `restart all`, `restart NAME`, `list`.
    /// Example: ecs-agent simulate --endpoint https://127.0.0.1:8443 --token-file join-token --count 100 --root-base /tmp/fleet
    Simulate {
        #[arg(long)]
        endpoint: String,
        /// File holding the (join) token for servers not yet enrolled (`-`: standard input).
        #[arg(long)]
        token_file: Option<PathBuf>,
        #[command(flatten)]
        trust: TrustArgs,
        /// Number of Linux servers.
        #[arg(long)]
        count: usize,
        /// Number of additional Windows servers (their agent is simulated on Linux files).
        #[arg(long, default_value_t = 0)]
        windows: usize,
        #[arg(long)]
        root_base: PathBuf,
        #[arg(long, default_value = "sim-")]
        prefix: String,
        #[arg(long, default_value_t = 25)]
        poll_secs: u64,
        #[arg(long, default_value_t = 30)]
        heartbeat_secs: u64,
    },
    /// Write the man pages (roff): ecs-agent.1 and one page per subcommand
    /// into DIR. Used by scripts/package.
    #[command(hide = true)]
    Man {
        /// Directory to write the pages into (created if missing).
        dir: PathBuf,
    },
}

/// Whom to trust while enrolling, besides a join token's pin.
#[derive(clap::Args)]
struct TrustArgs {
    /// The control plane CA's public key hash (`sha256:<hex>`), if the token
    /// does not carry it.
    #[arg(long)]
    ca_cert_hash: Option<String>,
    /// Without a pin: trust this CA file besides the system's roots.
    #[arg(long)]
    ca_file: Option<PathBuf>,
}

/// Reads a token from a file or standard input (`-`), and splits off the
/// CA pin of a join token.
fn read_token(
    path: &Path,
    trust: &TrustArgs,
    endpoint: &str,
) -> anyhow::Result<(secrecy::SecretString, agent::EnrollTrust)> {
    let text = zeroize::Zeroizing::new(if path == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("reading the token from standard input")?;
        s
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    });
    let (token, mut pin) = agent::split_join_token(&text)?;
    if let Some(p) = &trust.ca_cert_hash {
        pin = Some(ecs_trust::CaPin::parse(p).context("--ca-cert-hash")?);
    }
    let trust = agent::EnrollTrust::choose(endpoint, pin, trust.ca_file.as_deref())?;
    Ok((token, trust))
}

fn machine_id(root: &Path, state_dir: &Path) -> anyhow::Result<String> {
    for p in [root.join("etc/machine-id"), state_dir.join("machine-id")] {
        if let Ok(s) = std::fs::read_to_string(&p)
            && !s.trim().is_empty()
        {
            return Ok(s.trim().to_owned());
        }
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    ecs_agent::files::write_private(&state_dir.join("machine-id"), id.as_bytes())?;
    Ok(id)
}

fn hostname(root: &Path) -> String {
    [
        root.join("etc/hostname"),
        PathBuf::from("/proc/sys/kernel/hostname"),
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    // Windows has neither file; it names the machine in the environment.
    .or_else(|| std::env::var("COMPUTERNAME").ok())
    .map(|s| s.trim().to_owned())
    .filter(|s| !s.is_empty())
    .unwrap_or_else(|| "localhost".into())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Enroll {
            endpoint,
            token_file,
            trust,
            state_dir,
            root,
            os_type,
            hostname: host,
        } => {
            let (token, trust) = read_token(&token_file, &trust, &endpoint)?;
            let mid = machine_id(&root, &state_dir)?;
            let host = host.unwrap_or_else(|| hostname(&root));
            let resp = agent::enroll(agent::EnrollParams {
                endpoint: &endpoint,
                token: &token,
                trust,
                state_dir: &state_dir,
                machine_id: &mid,
                hostname: &host,
                os_type: &os_type,
            })
            .await?;
            println!(
                "{}",
                serde_json::json!({"server_id": resp.server_id, "project_id": resp.project_id})
            );
            Ok(())
        }
        Command::Run {
            state_dir,
            root,
            boot_id_file,
            poll_secs,
            heartbeat_secs,
            allow_power_actions,
            systemctl,
        } => {
            let opts = Options {
                power: if allow_power_actions {
                    PowerControl::System { systemctl }
                } else {
                    PowerControl::Disabled
                },
                root,
                state_dir,
                boot: boot_id_file.map_or(BootSource::Kernel, BootSource::File),
                poll: Duration::from_secs(poll_secs),
                heartbeat: Duration::from_secs(heartbeat_secs),
                endpoint: None,
            };
            let agent = Agent::load_own(opts)?;
            tracing::info!(server_id = agent.server_id(), "ecs-agent running");
            tokio::select! {
                r = agent.run() => r,
                _ = tokio::signal::ctrl_c() => Ok(()),
            }
        }
        Command::Man { dir } => {
            use clap::CommandFactory;
            std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("writing man pages to {}", dir.display()))
        }
        Command::Simulate {
            endpoint,
            token_file,
            trust,
            count,
            windows,
            root_base,
            prefix,
            poll_secs,
            heartbeat_secs,
        } => {
            let (token, trust) = match &token_file {
                Some(f) => {
                    let (t, trust) = read_token(f, &trust, &endpoint)?;
                    (Some(t), trust)
                }
                // Every server is enrolled already (else enrolling fails for
                // want of a token): the trust recorded at enrollment is used.
                None => (None, agent::EnrollTrust::SystemAnd(Vec::new())),
            };
            simulate(SimulateArgs {
                endpoint,
                token,
                trust,
                count,
                windows,
                root_base,
                prefix,
                poll: Duration::from_secs(poll_secs),
                heartbeat: Duration::from_secs(heartbeat_secs),
            })
            .await
        }
    }
}

/// What `ecs-agent simulate` was asked for.
// On Windows only the stub below sees it, which reads none of it.
#[cfg_attr(windows, allow(dead_code))]
struct SimulateArgs {
    endpoint: String,
    token: Option<secrecy::SecretString>,
    trust: agent::EnrollTrust,
    count: usize,
    windows: usize,
    root_base: PathBuf,
    prefix: String,
    poll: Duration,
    heartbeat: Duration,
}

/// Runs a simulated fleet and obeys commands on standard input.
#[cfg(unix)]
async fn simulate(a: SimulateArgs) -> anyhow::Result<()> {
    use ecs_agent::simulate::{Fleet, FleetSpec};
    use tokio::io::AsyncBufReadExt;

    let SimulateArgs {
        endpoint,
        token,
        trust,
        count,
        windows,
        root_base,
        prefix,
        poll,
        heartbeat,
    } = a;
    let fleet = Fleet::start(FleetSpec {
        endpoint,
        token,
        trust,
        root_base: root_base.clone(),
        linux: count,
        windows,
        prefix,
        poll,
        heartbeat,
    })
    .await?;
    println!(
        "{}",
        serde_json::json!({"ready": fleet.list().len(), "fleet": root_base.join("fleet.json")})
    );
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => match line.context("reading stdin")? {
                Some(l) => {
                    let words: Vec<&str> = l.split_whitespace().collect();
                    let result = match words.as_slice() {
                        ["restart", "all"] => fleet.restart_all().await,
                        ["restart", name] => fleet.restart(name).await,
                        ["list"] => {
                            println!("{}", serde_json::to_string(&fleet.list())?);
                            Ok(())
                        }
                        [] => Ok(()),
                        _ => Err(anyhow::anyhow!("unknown command: {l}")),
                    };
                    match result {
                        Ok(()) => println!("{}", serde_json::json!({"ok": l})),
                        Err(e) => println!("{}", serde_json::json!({"error": format!("{e:#}")})),
                    }
                }
                None => {
                    // No more commands: keep serving until interrupted.
                    let _ = tokio::signal::ctrl_c().await;
                    break;
                }
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    fleet.stop();
    Ok(())
}

/// The simulator edits simulated `/etc/shadow` files with the Unix shadow
/// editor; on Windows an agent would set this machine's own Administrator
/// password instead, so there is no simulator there.
#[cfg(windows)]
async fn simulate(a: SimulateArgs) -> anyhow::Result<()> {
    let _ = a;
    anyhow::bail!("the fleet simulator runs only on Unix (it edits simulated /etc/shadow files)")
}
