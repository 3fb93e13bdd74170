//! `ecsd`: serve the API, or administer projects, keys, servers and tokens.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ecs_policy::OsType;
use ecsd::config::Config;
use ecsd::server::{Server, open_state, shutdown_signal};
use ecsd::store::Role;
use secrecy::ExposeSecret;

#[derive(Parser)]
#[command(
    name = "ecsd",
    version,
    about = "Huawei Cloud ECS-compatible password reset service"
)]
struct Cli {
    /// TOML configuration file (then ECSD_* variables, then flags).
    #[arg(long, global = true, env = "ECSD_CONFIG")]
    config: Option<PathBuf>,
    /// Where the database and dev files live.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// The database: a SQLite file, or a postgres:// or postgresql:// URL
    /// (default: <data-dir>/ecsd.db; also ECSD_DATABASE).
    #[arg(long, global = true)]
    database: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API.
    ///
    /// Example: ecsd serve --dev   (embedded SQLite, a dev project and a simulated fleet)
    Serve {
        /// Address to listen on (port 0 picks a free port).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Start with a ready dev project, AK/SK and simulated servers.
        #[arg(long)]
        dev: bool,
        /// Linux servers in the dev fleet.
        #[arg(long, default_value_t = 3)]
        dev_linux: usize,
        /// Windows servers in the dev fleet.
        #[arg(long, default_value_t = 1)]
        dev_windows: usize,
        /// PEM certificate chain to serve (server certificate first, the CA last).
        #[arg(long)]
        tls_cert: Option<PathBuf>,
        /// PEM private key of --tls-cert.
        #[arg(long)]
        tls_key: Option<PathBuf>,
        /// Serve plain HTTP (no TLS); refused on a non-loopback address
        /// unless --insecure-http-non-loopback is also given.
        #[arg(long)]
        insecure_http: bool,
        /// Allow --insecure-http on a non-loopback address.
        #[arg(long, requires = "insecure_http")]
        insecure_http_non_loopback: bool,
    },
    /// Print the OpenAPI 3.1 document of the public API (as served at
    /// /openapi.json and checked in as openapi/ecsd.json).
    Openapi,
    /// Administer projects, keys, servers and enrollment tokens.
    Admin {
        #[command(subcommand)]
        command: Admin,
    },
    /// Write the man pages (roff): ecsd.1 and one page per subcommand into
    /// DIR. Used by scripts/package.
    #[command(hide = true)]
    Man {
        /// Directory to write the pages into (created if missing).
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum Admin {
    /// Create a project: ecsd admin project-create --name prod [--domain acme]
    ProjectCreate {
        #[arg(long)]
        name: String,
        /// The domain (account) holding the project; created if absent.
        /// Default: the domain named "default".
        #[arg(long)]
        domain: Option<String>,
    },
    /// IAM users (log in with POST /v3/auth/tokens or `ecsctl login`).
    User {
        #[command(subcommand)]
        command: UserCmd,
    },
    /// Create an AK/SK pair (the SK is printed once): ecsd admin access-key-create --project ID
    AccessKeyCreate {
        #[arg(long)]
        project: String,
        /// Read-only key: mutating calls answer 403.
        #[arg(long)]
        read_only: bool,
    },
    /// Register a server with its agent's public key (base64 X25519).
    ServerRegister {
        #[arg(long)]
        project: String,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "Linux")]
        os_type: String,
        #[arg(long)]
        public_key: Option<String>,
    },
    /// Create a one-use token that re-keys one server (its agent lost its key):
    /// ecsd admin rekey-token-create --server ID
    RekeyTokenCreate {
        #[arg(long)]
        server: String,
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
    /// Make a new work-signing key endorsed by the current one (agents follow
    /// it); then SIGHUP every replica: ecsd admin work-key-rotate
    WorkKeyRotate,
    /// List, disable, enable, delete or unlock access keys:
    /// ecsd admin access-key list --project ID
    AccessKey {
        #[command(subcommand)]
        command: AccessKeyCmd,
    },
    /// Deregister a server: ecsd admin server deregister ID
    Server {
        #[command(subcommand)]
        command: ServerCmd,
    },
    /// Revoke an agent's credential: ecsd admin agent revoke SERVER_ID
    Agent {
        #[command(subcommand)]
        command: AgentCmd,
    },
    /// List or revoke enrollment tokens: ecsd admin enroll-token list
    EnrollToken {
        #[command(subcommand)]
        command: EnrollTokenCmd,
    },
    /// Re-encrypt every stored secret under a new master key, in one
    /// transaction; then set the new key on every replica and restart them
    /// (docs/operations.md): ecsd admin rotate-master-key --new-key-file F
    RotateMasterKey {
        /// A file holding the new key (base64 of 32 random bytes). Without
        /// it, a dev data directory gets a generated key in master.key.
        #[arg(long)]
        new_key_file: Option<PathBuf>,
    },
    /// Compact the database once and turn on incremental auto_vacuum, so
    /// that retention rounds give freed pages back to the file system (only
    /// needed for a database made before this version). Stop ecsd first; it
    /// needs free space the size of the database: ecsd admin vacuum
    Vacuum,
    /// IAM user groups: create, add-user, attach a role or policy in a project, ...
    Group {
        #[command(subcommand)]
        command: ecsd::authz_admin::GroupCommand,
    },
    /// Custom IAM policies (Huawei's JSON): create --file F, list, show, delete.
    Policy {
        #[command(subcommand)]
        command: ecsd::authz_admin::PolicyCommand,
    },
    /// Create an AK/SK pair that acts as an IAM user (its groups' policies decide):
    /// ecsd admin user-key-create --project ID --user USER_ID
    UserKeyCreate {
        #[arg(long)]
        project: String,
        #[arg(long)]
        user: String,
    },
    /// Create an enrollment token for `ecs-agent enroll`.
    EnrollTokenCreate {
        #[arg(long)]
        project: String,
        #[arg(long, default_value_t = 1)]
        uses: u32,
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
}

#[derive(Subcommand)]
enum AccessKeyCmd {
    /// List access keys (never the SKs).
    List {
        #[arg(long)]
        project: Option<String>,
    },
    /// Disable a key: its next request fails (401 APIGW.0301).
    Disable { ak: String },
    /// Enable a disabled key.
    Enable { ak: String },
    /// Delete a key for good.
    Delete { ak: String },
    /// Unlock a key locked after repeated failed authentications.
    Unlock { ak: String },
}

#[derive(Subcommand)]
enum ServerCmd {
    /// Remove a server: its agent's credential stops working, its open work
    /// and tokens go; its audit records stay.
    Deregister { id: String },
}

#[derive(Subcommand)]
enum AgentCmd {
    /// Revoke the agent's credential (the server stays; the agent must
    /// enroll again).
    Revoke { server_id: String },
}

#[derive(Subcommand)]
enum EnrollTokenCmd {
    /// Usable enrollment and re-key tokens: id, uses left, expiry.
    List {
        #[arg(long)]
        project: Option<String>,
    },
    /// Revoke a token by the id `list` shows.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Create a user; the password is read from standard input:
    /// printf '%s' "$PW" | ecsd admin user create --domain default --name alice --role operator --password-stdin
    Create {
        #[arg(long)]
        domain: String,
        #[arg(long)]
        name: String,
        /// admin, operator or readonly.
        #[arg(long, default_value = "readonly")]
        role: String,
        /// The project (id or name) the role is for; default: every project
        /// of the domain.
        #[arg(long)]
        project: Option<String>,
        /// Read the password from standard input (required: never in argv).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set a user's role in a project: ecsd admin user assign --domain D --name N --project P --role admin
    Assign {
        #[arg(long)]
        domain: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        project: String,
        #[arg(long)]
        role: String,
    },
    /// List a domain's users.
    List {
        #[arg(long, default_value = "default")]
        domain: String,
    },
    /// Disable a user: no new login, and its tokens and temporary AK/SK stop working.
    Disable {
        #[arg(long)]
        domain: String,
        #[arg(long)]
        name: String,
    },
    /// Enable a disabled user.
    Enable {
        #[arg(long)]
        domain: String,
        #[arg(long)]
        name: String,
    },
    /// Delete a user with its roles, tokens and temporary AK/SK.
    Delete {
        #[arg(long)]
        domain: String,
        #[arg(long)]
        name: String,
    },
}

fn parse_role(role: &str) -> anyhow::Result<ecsd::store::identity::UserRole> {
    ecsd::store::identity::UserRole::parse(role)
        .with_context(|| format!("--role must be admin, operator or readonly, not {role:?}"))
}

/// The password on standard input (one line; the newline is not part of it).
fn password_from_stdin() -> anyhow::Result<secrecy::SecretString> {
    use std::io::Read;
    let mut buf = zeroize::Zeroizing::new(String::new());
    std::io::stdin()
        .read_to_string(&mut buf)
        .context("reading the password from standard input")?;
    let pw = buf.strip_suffix('\n').unwrap_or(&buf);
    let pw = pw.strip_suffix('\r').unwrap_or(pw);
    anyhow::ensure!(!pw.is_empty(), "no password on standard input");
    Ok(secrecy::SecretString::from(pw.to_owned()))
}

async fn user_command(
    state: &ecsd::state::AppState,
    cmd: UserCmd,
) -> anyhow::Result<serde_json::Value> {
    use ecsd::admin;
    Ok(match cmd {
        UserCmd::Create {
            domain,
            name,
            role,
            project,
            password_stdin,
        } => {
            let role = parse_role(&role)?;
            anyhow::ensure!(
                password_stdin,
                "give the password on standard input with --password-stdin (never as an argument)"
            );
            let pw = password_from_stdin()?;
            let u = admin::create_user(state, &domain, &name, &pw, Some(role), project.as_deref())
                .await?;
            serde_json::to_value(u)?
        }
        UserCmd::Assign {
            domain,
            name,
            project,
            role,
        } => serde_json::to_value(
            admin::assign_role(state, &domain, &name, &project, parse_role(&role)?).await?,
        )?,
        UserCmd::List { domain } => serde_json::to_value(admin::list_users(state, &domain).await?)?,
        UserCmd::Disable { domain, name } => {
            serde_json::to_value(admin::set_user_enabled(state, &domain, &name, false).await?)?
        }
        UserCmd::Enable { domain, name } => {
            serde_json::to_value(admin::set_user_enabled(state, &domain, &name, true).await?)?
        }
        UserCmd::Delete { domain, name } => {
            let id = admin::delete_user(state, &domain, &name).await?;
            serde_json::json!({"deleted": id, "domain": domain, "name": name})
        }
    })
}

/// jemalloc: with 10,000 idle long-polling agents it keeps ecsd's resident
/// memory about 20% lower than the system allocator (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc options: return freed pages to the system after one second
/// instead of ten, so a burst (10,000 agents reconnecting) does not linger,
/// and do it from a background thread: with only idle long polls there are
/// too few allocations for jemalloc to purge on its own (docs/benchmarks.md:
/// 10,000 idle TLS agents, 191 → 160 MiB; after they leave, 147 → 29 MiB).
#[allow(unsafe_code)]
// SAFETY: a NUL-terminated static string that jemalloc reads once at start-up.
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8; 63] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:1000\0";

/// Any error ends ecsd with `error: <what failed>: <why>` on stderr and exit
/// code 1: never a backtrace (anyhow's `Debug`, which `fn main() ->
/// Result` prints, adds one when RUST_BACKTRACE is set), which tells an
/// operator nothing more.
fn main() -> std::process::ExitCode {
    // The store runs blocking SQLite calls on two connections, so a few
    // blocking threads are plenty; an unbounded pool only costs memory.
    //
    // Those threads are kept for an hour rather than tokio's 10 s: the
    // store hands every call to one, and after a pause (an operator's
    // reset minutes after the last one) each call would otherwise start a
    // new thread first.
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(8)
        .thread_keep_alive(std::time::Duration::from_secs(3600))
        .build()
        .context("starting the runtime")
        .and_then(|rt| rt.block_on(run()));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Man { dir } = &cli.command {
        use clap::CommandFactory;
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
        return clap_mangen::generate_to(Cli::command(), dir)
            .with_context(|| format!("writing man pages to {}", dir.display()));
    }
    let mut config = Config::load(cli.config.as_deref()).context("loading the configuration")?;
    if let Some(d) = cli.data_dir {
        config.data_dir = d;
    }
    if let Some(d) = cli.database {
        config.database = Some(d);
    }
    ecsd::telemetry::init(config.log_format);
    match cli.command {
        Command::Serve {
            listen,
            dev,
            dev_linux,
            dev_windows,
            tls_cert,
            tls_key,
            insecure_http,
            insecure_http_non_loopback,
        } => {
            if let Some(l) = listen {
                config.listen = l;
            }
            if tls_cert.is_some() || tls_key.is_some() {
                config.tls_cert = tls_cert;
                config.tls_key = tls_key;
            }
            config.insecure_http |= insecure_http;
            config.insecure_http_non_loopback |= insecure_http_non_loopback;
            serve(
                config,
                dev.then_some(ecsd::dev::DevFleet {
                    linux: dev_linux,
                    windows: dev_windows,
                }),
            )
            .await
        }
        Command::Man { .. } => unreachable!("handled before the configuration is loaded"),
        Command::Openapi => {
            print!("{}", ecsd::api::openapi::document_json());
            Ok(())
        }
        Command::Admin { command } => {
            if config.master_key.is_none() {
                // The dev data directory has its own key.
                let path = config.data_dir.join("master.key");
                if path.exists() {
                    config.master_key = Some(ecsd::server::dev_master_key(&config.data_dir)?);
                }
            }
            admin(config, command).await
        }
    }
}

async fn serve(mut config: Config, dev: Option<ecsd::dev::DevFleet>) -> anyhow::Result<()> {
    let mut dev_ca = None;
    if dev.is_some() {
        if config.master_key.is_none() {
            config.master_key = Some(ecsd::server::dev_master_key(&config.data_dir)?);
        }
        // HTTPS with a dev CA, unless a certificate or plain HTTP was asked for.
        if config.tls_cert.is_none() && !config.insecure_http {
            let pki = ecsd::tls::dev_pki(&config.data_dir).context("making the dev CA")?;
            config.tls_cert = Some(pki.cert);
            config.tls_key = Some(pki.key);
            dev_ca = Some(pki.ca);
        }
    }
    let state = open_state(config)?;
    let server = Server::bind(state.clone()).await?;
    let addr = server.local_addr();
    let endpoint = state
        .config
        .public_endpoint
        .clone()
        .unwrap_or_else(|| format!("{}://{addr}", server.scheme()));
    tracing::info!(%addr, db = %state.config.database(), "ecsd listening");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut serving = tokio::spawn(server.run(async {
        let _ = stop_rx.await;
    }));
    let fleet = match dev {
        Some(size) => {
            let (fleet, path) =
                ecsd::dev::bootstrap(&state, &endpoint, size, dev_ca.as_deref()).await?;
            let replica = ecsd::dev::write_replica_config(&state.config, dev_ca.as_deref())
                .context("writing replica.toml")?
                .map(|p| {
                    format!(
                        "another replica on the same database:\n  \
                         ecsd serve --config {} --data-dir <another dir> --listen 127.0.0.1:<another port>\n",
                        p.display()
                    )
                })
                .unwrap_or_default();
            // A reader that stops reading (a closed pipe) must not stop the
            // server: these lines are information, so write errors are ignored.
            let banner = format!(
                "ecsd --dev is ready at {endpoint}\ncredentials: {path}\n\
                 web console: {endpoint}{console}  (sign in as {user}: domain, user, password \
                 and project \"dev\" are in the credentials file)\n\
                 try it with the official Huawei Python SDK:\n  \
                 .venv/bin/python examples/reset_fleet.py {path}\n\
                 metrics (Prometheus, loopback clients): {endpoint}/metrics\n{replica}",
                path = path.display(),
                console = ecsd::console::PATH,
                user = ecsd::dev::DEV_USER,
            );
            let mut stdout = std::io::stdout().lock();
            let _ = std::io::Write::write_all(&mut stdout, banner.as_bytes())
                .and_then(|()| std::io::Write::flush(&mut stdout));
            Some(fleet)
        }
        None => None,
    };
    tokio::select! {
        _ = shutdown_signal() => {}
        r = &mut serving => return r.context("server task")?,
    }
    if let Some(f) = fleet {
        f.stop();
    }
    let _ = stop_tx.send(());
    serving.await.context("server task")??;
    tracing::info!("ecsd stopped");
    Ok(())
}

/// The CA pin for tokens made by `ecsd admin`: from the configured
/// certificate, or the dev CA of this data directory.
fn load_tls_pin(state: &ecsd::state::AppState) -> anyhow::Result<()> {
    let c = &state.config;
    let dev = (
        c.data_dir.join("dev-server.pem"),
        c.data_dir.join("dev-server.key"),
    );
    let (cert, key) = match (&c.tls_cert, &c.tls_key) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        _ if dev.0.exists() => dev,
        _ => return Ok(()),
    };
    let tls = ecsd::tls::Tls::load(&cert, &key, c.tls_ca.as_deref())?;
    let _ = state.ca_pin.set(tls.ca_pin);
    Ok(())
}

async fn admin(config: Config, command: Admin) -> anyhow::Result<()> {
    let state = open_state(config)?;
    let out = match command {
        Admin::ProjectCreate { name, domain } => {
            let (p, d) = ecsd::admin::create_project_in(&state, &name, domain.as_deref()).await?;
            serde_json::json!({"project_id": p.id, "name": p.name, "domain": d.name, "domain_id": d.id})
        }
        Admin::User { command } => user_command(&state, command).await?,
        Admin::AccessKeyCreate { project, read_only } => {
            let role = if read_only {
                Role::ReadOnly
            } else {
                Role::Admin
            };
            let (ak, sk) = ecsd::admin::create_access_key(&state, &project, role).await?;
            serde_json::json!({"project_id": project, "ak": ak, "sk": sk.expose_secret(), "role": role.as_str()})
        }
        Admin::ServerRegister {
            project,
            name,
            os_type,
            public_key,
        } => {
            let os = OsType::parse(&os_type).context("--os-type must be Linux or Windows")?;
            let s =
                ecsd::admin::register_server(&state, &project, &name, os, public_key.as_deref())
                    .await?;
            serde_json::json!({"id": s.id, "name": s.name, "os_type": s.os_type.as_str()})
        }
        Admin::RekeyTokenCreate { server, ttl_secs } => {
            load_tls_pin(&state)?;
            let t = ecsd::enroll::issue_rekey_token(&state, &server, ttl_secs)
                .await?
                .with_context(|| format!("no server {server}"))?;
            serde_json::to_value(t)?
        }
        Admin::Group { command } => ecsd::authz_admin::group(&state, command).await?,
        Admin::Policy { command } => ecsd::authz_admin::policy(&state, command).await?,
        Admin::UserKeyCreate { project, user } => {
            ecsd::authz_admin::user_key(&state, &project, &user).await?
        }
        Admin::WorkKeyRotate => {
            let public = ecsd::work::WorkKeys::rotate(&*state.store, &state.master).await?;
            serde_json::json!({"work_key": public, "note": "send SIGHUP to (or restart) every ecsd replica to sign with it"})
        }
        Admin::AccessKey { command } => {
            use ecsd::lifecycle::{KeyChange, change_access_key};
            match command {
                AccessKeyCmd::List { project } => {
                    ecsd::lifecycle::list_access_keys(&state, project.as_deref()).await?
                }
                AccessKeyCmd::Disable { ak } => {
                    change_access_key(&state, &ak, KeyChange::Disable).await?
                }
                AccessKeyCmd::Enable { ak } => {
                    change_access_key(&state, &ak, KeyChange::Enable).await?
                }
                AccessKeyCmd::Delete { ak } => {
                    change_access_key(&state, &ak, KeyChange::Delete).await?
                }
                AccessKeyCmd::Unlock { ak } => {
                    change_access_key(&state, &ak, KeyChange::Unlock).await?
                }
            }
        }
        Admin::Server {
            command: ServerCmd::Deregister { id },
        } => ecsd::lifecycle::deregister_server(&state, &id).await?,
        Admin::Agent {
            command: AgentCmd::Revoke { server_id },
        } => ecsd::lifecycle::revoke_agent(&state, &server_id).await?,
        Admin::EnrollToken { command } => match command {
            EnrollTokenCmd::List { project } => {
                ecsd::lifecycle::list_enroll_tokens(&state, project.as_deref()).await?
            }
            EnrollTokenCmd::Revoke { id } => {
                ecsd::lifecycle::revoke_enroll_token(&state, &id).await?
            }
        },
        Admin::Vacuum => {
            let db = state.config.database_path();
            let size = || std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
            let before = size();
            state.lifecycle.vacuum().await?;
            state.lifecycle.checkpoint().await?;
            serde_json::json!({"database": db.display().to_string(), "bytes_before": before, "bytes_after": size(), "auto_vacuum": "incremental"})
        }
        Admin::RotateMasterKey { new_key_file } => {
            ecsd::lifecycle::rotate_master_key_cli(&state, new_key_file.as_deref()).await?
        }
        Admin::EnrollTokenCreate {
            project,
            uses,
            ttl_secs,
        } => {
            state
                .store
                .project(&project)
                .await?
                .with_context(|| format!("no project {project}"))?;
            load_tls_pin(&state)?;
            let t = ecsd::enroll::issue_enroll_token(&state, &project, uses, ttl_secs).await?;
            serde_json::to_value(t)?
        }
    };
    println!("{out}");
    Ok(())
}
