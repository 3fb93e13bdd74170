//! `ecsctl`: the operator's command line for ecsd. It speaks only the public
//! API (Huawei-compatible plus our extensions), signed with AK/SK.
//!
//! Exit codes: 0 success; 1 an error (network, configuration); 2 bad usage;
//! 3 rejected (by the local password check or by the API); 4 partly failed
//! (some servers FAILED or were superseded); 5 timed out waiting.

mod api;
mod audit;
mod config;
mod escrow;
mod iam;

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use ecs_api::{
    ActionKind, BatchResetRequest, EnrollTokenRequest, JobStatus, ResetOutcome, ResetState,
    ServerAction, ServerDetail, ServerRef, ShowJobResponse,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use api::{Api, ApiError};

/// `println!` that treats a closed pipe (`ecsctl ... | head`) as success.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($t)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

const REJECTED: u8 = 3;
const PARTIAL: u8 = 4;
const TIMED_OUT: u8 = 5;

#[derive(Parser)]
#[command(
    name = "ecsctl",
    version,
    about = "Reset the passwords of a whole fleet, and manage its servers",
    after_help = "Examples:\n  ecsctl --dev-credentials ecsd-data/dev-credentials.json servers list\n  ecsctl reset-password --all --reboot --wait\n  echo \"$NEWPW\" | ecsctl reset-password --name 'web-*' --password-stdin --wait"
)]
struct Cli {
    /// Profile in the config file.
    #[arg(long, global = true, env = "ECS_PROFILE", default_value = "default")]
    profile: String,
    /// API endpoint (overrides ECS_ENDPOINT and the profile).
    #[arg(long, global = true)]
    endpoint: Option<String>,
    /// Project id (overrides ECS_PROJECT_ID and the profile).
    #[arg(long, global = true)]
    project_id: Option<String>,
    /// Access key (overrides ECS_ACCESS_KEY); the secret key is never a flag.
    #[arg(long, global = true)]
    access_key: Option<String>,
    /// A CA certificate (PEM) to trust besides the system's roots (ECS_CA_FILE).
    #[arg(long, global = true)]
    ca_file: Option<PathBuf>,
    /// Use the credentials file written by `ecsd serve --dev`.
    #[arg(long, global = true, env = "ECS_DEV_CREDENTIALS")]
    dev_credentials: Option<PathBuf>,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value = "table")]
    output: Format,
    /// Print each call's request id to standard error.
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Write a profile to the config file (mode 0600).
    ///
    /// Example: ecsctl configure --from-dev ecsd-data/dev-credentials.json
    Configure {
        /// Take everything from `ecsd serve --dev`'s credentials file.
        #[arg(long)]
        from_dev: Option<PathBuf>,
    },
    /// Log in as an IAM user: the token (24 h) is kept in the profile
    /// (mode 0600) and used by later commands until it expires.
    ///
    /// The password is asked without echo, or read from standard input with
    /// --password-stdin; never from an argument.
    ///
    /// Examples:
    ///   ecsctl login --endpoint https://ecsd:8443 --project-id P --domain default --user alice
    ///   ecsctl --dev-credentials ecsd-data/dev-credentials.json login   (domain and user from the file)
    Login {
        /// The user's domain (default: the profile's, or the dev file's).
        #[arg(long)]
        domain: Option<String>,
        /// The user name (default: the profile's, or the dev file's).
        #[arg(long)]
        user: Option<String>,
        /// The project by name within the domain (default: --project-id or the profile's project).
        #[arg(long)]
        project: Option<String>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Revoke the profile's login token and forget it.
    Logout,
    /// List, show, start, stop and reboot servers.
    Servers {
        #[command(subcommand)]
        command: Servers,
    },
    /// IAM users of the domain (admins): create, list, disable, enable, delete.
    Users {
        #[command(subcommand)]
        command: iam::Users,
    },
    /// IAM user groups: create, list, add-user, remove-user, grant a role or policy.
    Groups {
        #[command(subcommand)]
        command: iam::Groups,
    },
    /// Custom IAM policies: create from a JSON file, list.
    Policies {
        #[command(subcommand)]
        command: iam::Policies,
    },
    /// Access keys acting as IAM users: create (SK printed once), list, disable, enable, delete.
    Keys {
        #[command(subcommand)]
        command: iam::Keys,
    },
    /// Reset the root/Administrator password of servers.
    ///
    /// The password is asked twice without echo, or read from standard input
    /// with --password-stdin; never from an argument. It is checked locally
    /// with the service's own rules before anything is sent.
    ///
    /// Examples:
    ///   ecsctl reset-password --all --dry-run
    ///   ecsctl reset-password --name 'db-*' --reboot --wait
    ///   printf '%s\n' "$PW" | ecsctl reset-password --from-file hosts.txt --password-stdin --apply-now --wait
    ResetPassword {
        #[command(flatten)]
        targets: Targets,
        /// Read the password from the first line of standard input.
        #[arg(long, conflicts_with = "generate")]
        password_stdin: bool,
        /// No password from you: ecsd generates a different one per server
        /// and escrows it to the project's recipients (`ecsctl passwords
        /// show` decrypts one).
        #[arg(long)]
        generate: bool,
        /// Length of the generated passwords (8 to 26).
        #[arg(long, default_value_t = 20, requires = "generate")]
        length: usize,
        /// Check everything and show each server's readiness; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Ask running agents to apply at once instead of at the next start.
        #[arg(long)]
        apply_now: bool,
        /// Reboot the targets after the reset is accepted (so it applies).
        #[arg(long)]
        reboot: bool,
        /// Wait until every server applied (or failed), with progress.
        #[arg(long)]
        wait: bool,
        /// Longest wait, in seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Enrollment tokens for onboarding servers.
    EnrollToken {
        #[command(subcommand)]
        command: EnrollToken,
    },
    /// The per-server outcome of a reset request.
    Resets {
        #[command(subcommand)]
        command: Resets,
    },
    /// Escrow recipients of the project (issue 15): make your identity
    /// (`init`), register others, list, remove.
    Escrow {
        #[command(subcommand)]
        command: escrow::Escrow,
    },
    /// Escrowed (generated) passwords: decrypt one here, list versions,
    /// the drift report.
    Passwords {
        #[command(subcommand)]
        command: escrow::Passwords,
    },
    /// Rotation policies: generated passwords on a schedule.
    Rotation {
        #[command(subcommand)]
        command: escrow::Rotation,
    },
    /// The audit trail: who changed what, and every denied call.
    ///
    /// Examples:
    ///   ecsctl audit --status fail --from 2026-01-31T00:00:00Z
    ///   ecsctl audit --resource-id SERVER_ID -o json
    Audit(audit::AuditArgs),
    /// Print shell completions: ecsctl completions bash > /etc/bash_completion.d/ecsctl
    Completions { shell: clap_complete::Shell },
    /// Write the man pages (roff): ecsctl.1 and one page per subcommand
    /// (ecsctl-servers.1, ...) into DIR. Used by scripts/package.
    #[command(hide = true)]
    Man {
        /// Directory to write the pages into (created if missing).
        dir: PathBuf,
    },
}

#[derive(Args, Clone)]
struct Targets {
    /// Server ids.
    ids: Vec<String>,
    /// Servers whose name matches this pattern (`*` and `?` wildcards).
    #[arg(long)]
    name: Option<String>,
    /// Every server of the project.
    #[arg(long)]
    all: bool,
    /// A file with one server id or name per line.
    #[arg(long)]
    from_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Servers {
    /// List servers: ecsctl servers list --status ACTIVE --os Linux
    List {
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        os: Option<String>,
    },
    /// Show one server: ecsctl servers show ID
    Show { id: String },
    /// Add or remove a server's tags, then show them:
    /// ecsctl servers tag ID --add env=staging --remove team
    Tag {
        id: String,
        /// KEY=VALUE (or KEY for an empty value); repeatable.
        #[arg(long)]
        add: Vec<String>,
        /// KEY (any value) or KEY=VALUE; repeatable.
        #[arg(long)]
        remove: Vec<String>,
    },
    /// Reboot servers: ecsctl servers reboot --name 'web-*' [--hard]
    Reboot(PowerArgs),
    /// Start stopped servers: ecsctl servers start ID...
    Start(PowerArgs),
    /// Stop servers: ecsctl servers stop --all [--hard]
    Stop(PowerArgs),
}

#[derive(Args)]
struct PowerArgs {
    #[command(flatten)]
    targets: Targets,
    /// HARD instead of SOFT.
    #[arg(long)]
    hard: bool,
    /// Return once the job is accepted.
    #[arg(long)]
    no_wait: bool,
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

#[derive(Subcommand)]
enum EnrollToken {
    /// ecsctl enroll-token create --uses 50 --ttl-secs 86400
    Create {
        #[arg(long, default_value_t = 1)]
        uses: u32,
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
}

#[derive(Subcommand)]
enum Resets {
    /// ecsctl resets show REQUEST_ID   (or `latest`)
    Show { request_id: String },
}

/// How to print: JSON for scripts, tables for people; colours and bars only
/// on a terminal and without NO_COLOR.
struct Out {
    json: bool,
    fancy: bool,
}

impl Out {
    fn table(&self, headers: &[&str], rows: Vec<Vec<String>>) {
        let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
        // Server-supplied text: no control characters reach the terminal.
        let rows: Vec<Vec<String>> = rows
            .into_iter()
            .map(|r| r.iter().map(|c| api::cell(c)).collect())
            .collect();
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: Vec<String>| {
            cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
        };
        let head = line(headers.iter().map(|h| h.to_string()).collect());
        if self.fancy {
            say!("\x1b[1m{head}\x1b[0m");
        } else {
            say!("{head}");
        }
        for r in rows {
            say!("{}", line(r));
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Out {
        json: cli.output == Format::Json,
        fancy: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    match run(cli, &out).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if let Some(api) = e.downcast_ref::<ApiError>() {
                eprintln!("error: {}", api::cell(&api.to_string()));
                for item in api.internal().iter().take(20) {
                    eprintln!(
                        "  {}  {}  {}",
                        api::cell(&item.id),
                        api::cell(&item.error_code),
                        api::cell(&item.error_message)
                    );
                }
                ExitCode::from(if api.status < 500 { REJECTED } else { 1 })
            } else if let Some(Rejected(msg)) = e.downcast_ref::<Rejected>() {
                eprintln!("error: {msg}");
                ExitCode::from(REJECTED)
            } else {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        }
    }
}

/// A refusal decided locally (exit code 3).
#[derive(Debug)]
struct Rejected(String);

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Rejected {}

async fn run(cli: Cli, out: &Out) -> anyhow::Result<u8> {
    let overrides = config::Overrides {
        profile: cli.profile.clone(),
        endpoint: cli.endpoint.clone(),
        project_id: cli.project_id.clone(),
        access_key: cli.access_key.clone(),
        dev_credentials: cli.dev_credentials.clone(),
        ca_file: cli.ca_file.clone(),
    };
    let api = || -> anyhow::Result<Api> { Api::new(config::resolve(&overrides)?, cli.verbose) };
    match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "ecsctl", &mut std::io::stdout());
            Ok(0)
        }
        Command::Man { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("writing man pages to {}", dir.display()))?;
            Ok(0)
        }
        Command::Configure { from_dev } => configure(&cli.profile, from_dev),
        Command::Login {
            domain,
            user,
            project,
            password_stdin,
        } => {
            login(
                &overrides,
                LoginArgs {
                    domain,
                    user,
                    project,
                    password_stdin,
                },
            )
            .await
        }
        Command::Logout => logout(&overrides, cli.verbose).await,
        Command::Servers { command } => servers(&api()?, command, out).await,
        Command::Users { command } => iam::users(&api()?, command, out).await,
        Command::Groups { command } => iam::groups(&api()?, command, out).await,
        Command::Policies { command } => iam::policies(&api()?, command, out).await,
        Command::Keys { command } => iam::keys(&api()?, command, out).await,
        Command::Escrow { command } => escrow::escrow(&api()?, &overrides, command, out).await,
        Command::Passwords { command } => {
            escrow::passwords(&api()?, &overrides, command, out).await
        }
        Command::Rotation { command } => escrow::rotation(&api()?, command, out).await,
        Command::Audit(args) => {
            let traces = audit::fetch(&api()?, &args).await?;
            if out.json {
                say!("{}", json!({"count": traces.len(), "traces": traces}));
            } else {
                out.table(audit::HEADERS, traces.iter().map(audit::row).collect());
            }
            Ok(0)
        }
        Command::EnrollToken {
            command: EnrollToken::Create { uses, ttl_secs },
        } => {
            let api = api()?;
            let req = EnrollTokenRequest {
                uses: Some(uses),
                ttl_secs: Some(ttl_secs),
            };
            let r = api.api_result(
                "POST /enroll-tokens",
                api.client().create_enroll_token(&req).await,
            )?;
            if out.json {
                say!("{}", serde_json::to_string(&r.body)?);
            } else {
                say!("token:   {}", api::cell(&r.body.token));
                say!("uses:    {}", r.body.uses);
                say!("expires: {}", api::cell(&r.body.expires));
                say!(
                    "enroll a server with: ECS_AGENT_TOKEN=<token> ecs-agent enroll --endpoint <endpoint>"
                );
            }
            Ok(0)
        }
        Command::Resets {
            command: Resets::Show { request_id },
        } => {
            let api = api()?;
            let o = outcome(&api, &request_id).await?;
            print_outcome(&o, out);
            Ok(exit_for_outcome(&o))
        }
        Command::ResetPassword {
            targets,
            password_stdin,
            generate,
            length,
            dry_run,
            apply_now,
            reboot,
            wait,
            timeout,
        } => {
            let opts = ResetOpts {
                password_stdin,
                generate: generate.then_some(length),
                dry_run,
                apply_now,
                reboot,
                wait,
                timeout: Duration::from_secs(timeout),
            };
            reset_password(&api()?, &targets, &opts, out).await
        }
    }
}

struct LoginArgs {
    domain: Option<String>,
    user: Option<String>,
    project: Option<String>,
    password_stdin: bool,
}

fn env_var(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

fn trust_of(ca_file: Option<&PathBuf>) -> anyhow::Result<ecs_client::Trust> {
    Ok(match ca_file {
        Some(f) => ecs_client::Trust::SystemAnd(
            std::fs::read(f).with_context(|| format!("reading {}", f.display()))?,
        ),
        None => ecs_client::Trust::System,
    })
}

/// `ecsctl login`: a token for the profile.
async fn login(o: &config::Overrides, a: LoginArgs) -> anyhow::Result<u8> {
    let p = config::effective_profile(o)?;
    let endpoint = o
        .endpoint
        .clone()
        .or_else(|| env_var("ECS_ENDPOINT"))
        .or(p.endpoint)
        .context("no endpoint: pass --endpoint, set ECS_ENDPOINT or configure the profile")?;
    let ca_file = o
        .ca_file
        .clone()
        .or_else(|| env_var("ECS_CA_FILE").map(PathBuf::from))
        .or(p.ca_file);
    let domain = a.domain.or(p.domain).context("pass --domain")?;
    let user = a.user.or(p.user).context("pass --user")?;
    let scope = match (
        a.project,
        o.project_id
            .clone()
            .or_else(|| env_var("ECS_PROJECT_ID"))
            .or(p.project_id),
    ) {
        (Some(name), _) => ecs_client::ProjectScope::Name(name),
        (None, Some(id)) => ecs_client::ProjectScope::Id(id),
        (None, None) => bail!("pass --project NAME or --project-id ID"),
    };
    let password = if a.password_stdin {
        let mut line = zeroize::Zeroizing::new(String::new());
        std::io::stdin().lock().read_line(&mut line)?;
        SecretString::from(line.trim_end_matches(['\r', '\n']).to_owned())
    } else if std::io::stdin().is_terminal() {
        SecretString::from(rpassword::prompt_password(format!(
            "Password of {user} ({domain}): "
        ))?)
    } else {
        bail!(Rejected(
            "standard input is not a terminal: pass --password-stdin and write the password to it"
                .into()
        ));
    };
    let trust = trust_of(ca_file.as_ref())?;
    let l = match ecs_client::login(&endpoint, trust, &domain, &user, &password, scope).await {
        Ok(l) => l,
        Err(ecs_client::Error::Api(e)) => return Err(anyhow::Error::new(*e)),
        Err(e) => return Err(anyhow::Error::new(e).context("POST /v3/auth/tokens")),
    };
    let path = config::config_path();
    let mut file = config::load_file(&path)?;
    let entry = file.profiles.entry(o.profile.clone()).or_default();
    entry.endpoint = Some(endpoint);
    entry.project_id = Some(l.body.token.project.id.clone());
    entry.ca_file = ca_file;
    entry.domain = Some(domain.clone());
    entry.user = Some(user.clone());
    entry.token = Some(l.token.expose_secret().to_owned());
    entry.token_expires_at = Some(l.body.token.expires_at.clone());
    config::save_file(&path, &file)?;
    eprintln!(
        "logged in as {} ({}) to project {}; the token expires at {} (profile {}, {})",
        api::cell(&user),
        api::cell(&domain),
        api::cell(&l.body.token.project.name),
        api::cell(&l.body.token.expires_at),
        o.profile,
        path.display()
    );
    Ok(0)
}

/// `ecsctl logout`: revokes the profile's token and removes it.
async fn logout(o: &config::Overrides, verbose: bool) -> anyhow::Result<u8> {
    let path = config::config_path();
    let mut file = config::load_file(&path)?;
    let Some(p) = file.profiles.get_mut(&o.profile) else {
        bail!("no profile {}", o.profile);
    };
    let Some(token) = p.token.take() else {
        eprintln!("profile {} has no login token", o.profile);
        return Ok(0);
    };
    p.token_expires_at = None;
    if let Some(endpoint) = p.endpoint.clone() {
        let mut c = ecs_client::Config::with_token(
            endpoint,
            p.project_id.clone().unwrap_or_default(),
            SecretString::from(token),
        );
        c.trust = trust_of(p.ca_file.as_ref())?;
        if verbose {
            c.observer = Some(std::sync::Arc::new(|method, path, status, request_id| {
                eprintln!("{method} {path} -> {status} (request {request_id})")
            }));
        }
        match ecs_client::Client::new(c)?.revoke_token().await {
            Ok(_) => {}
            // Already expired or revoked: forgetting it is all that is left.
            Err(ecs_client::Error::Api(e)) if e.status == 401 => {}
            Err(e) => return Err(anyhow::Error::new(e).context("DELETE /v3/auth/tokens")),
        }
    }
    config::save_file(&path, &file)?;
    eprintln!("logged out (profile {})", o.profile);
    Ok(0)
}

fn configure(profile: &str, from_dev: Option<PathBuf>) -> anyhow::Result<u8> {
    let path = config::config_path();
    let mut file = config::load_file(&path)?;
    let p = match from_dev {
        Some(dev) => config::dev_profile(&dev)?,
        None => {
            let ask = |q: &str| -> anyhow::Result<String> {
                eprint!("{q}: ");
                let mut s = String::new();
                std::io::stdin().lock().read_line(&mut s)?;
                Ok(s.trim().to_owned())
            };
            let endpoint = ask("Endpoint (e.g. https://ecsd.example.internal)")?;
            let project = ask("Project id")?;
            let ak = ask("Access key")?;
            let ca = ask("CA file to trust besides the system's (empty: none)")?;
            let sk = if std::io::stdin().is_terminal() {
                rpassword::prompt_password("Secret key (not echoed): ")?
            } else {
                ask("Secret key")?
            };
            config::Profile {
                endpoint: Some(endpoint),
                project_id: Some(project),
                access_key: Some(ak),
                secret_key: Some(sk),
                ca_file: (!ca.is_empty()).then(|| PathBuf::from(ca)),
                ..Default::default()
            }
        }
    };
    file.profiles.insert(profile.to_owned(), p);
    config::save_file(&path, &file)?;
    eprintln!(
        "profile {profile} written to {} (mode 0600)",
        path.display()
    );
    Ok(0)
}

fn server_row(s: &ServerDetail) -> Vec<String> {
    vec![
        s.id.clone(),
        s.name.clone(),
        s.status.to_string(),
        os_of(s).to_owned(),
        s.host_status.to_string(),
        s.ecsd
            .last_reset
            .as_ref()
            .map_or("-".to_owned(), |r| r.state.to_string()),
    ]
}

fn os_of(s: &ServerDetail) -> &str {
    s.metadata.get("os_type").map_or("", String::as_str)
}

async fn servers(api: &Api, cmd: Servers, out: &Out) -> anyhow::Result<u8> {
    match cmd {
        Servers::List { name, status, os } => {
            let mut all = api.client().all_servers().await.map_err(api_error)?;
            all.retain(|s| {
                name.as_ref().is_none_or(|n| s.name.contains(n.as_str()))
                    && status.as_ref().is_none_or(|st| s.status.as_str() == st)
                    && os.as_ref().is_none_or(|o| os_of(s).eq_ignore_ascii_case(o))
            });
            if out.json {
                say!("{}", json!({"count": all.len(), "servers": all}));
            } else {
                out.table(
                    &["ID", "NAME", "STATUS", "OS", "AGENT", "LAST RESET"],
                    all.iter().map(server_row).collect(),
                );
            }
            Ok(0)
        }
        Servers::Show { id } => {
            let r = api.api_result(
                "GET /cloudservers/{id}",
                api.client().show_server(&id).await,
            )?;
            if out.json {
                say!("{}", serde_json::to_string(&r.body.server)?);
            } else {
                out.table(
                    &["ID", "NAME", "STATUS", "OS", "AGENT", "LAST RESET"],
                    vec![server_row(&r.body.server)],
                );
            }
            Ok(0)
        }
        Servers::Tag { id, add, remove } => {
            let parse = |list: &[String], on_add: bool| -> Vec<ecs_api::TagInput> {
                list.iter()
                    .map(|t| match t.split_once('=') {
                        Some((k, v)) => ecs_api::TagInput {
                            key: k.to_owned(),
                            value: Some(v.to_owned()),
                        },
                        None => ecs_api::TagInput {
                            key: t.clone(),
                            value: on_add.then(String::new),
                        },
                    })
                    .collect()
            };
            let client = api.client();
            for (action, tags) in [
                (ecs_api::TagAction::Delete, parse(&remove, false)),
                (ecs_api::TagAction::Create, parse(&add, true)),
            ] {
                if tags.is_empty() {
                    continue;
                }
                api.api_result(
                    "POST /cloudservers/{id}/tags/action",
                    client
                        .server_tags_action(&id, &ecs_api::ServerTagsAction { action, tags })
                        .await,
                )?;
            }
            let r = api.api_result("GET /cloudservers/{id}/tags", client.server_tags(&id).await)?;
            if out.json {
                say!("{}", serde_json::to_string(&r.body)?);
            } else {
                out.table(
                    &["KEY", "VALUE"],
                    r.body
                        .tags
                        .iter()
                        .map(|t| vec![t.key.clone(), t.value.clone()])
                        .collect(),
                );
            }
            Ok(0)
        }
        Servers::Reboot(a) => power(api, Power::Reboot, a, out).await,
        Servers::Start(a) => power(api, Power::Start, a, out).await,
        Servers::Stop(a) => power(api, Power::Stop, a, out).await,
    }
}

/// An API error keeps its type (for the exit code); others gain context.
fn api_error(e: ecs_client::Error) -> anyhow::Error {
    match e {
        ecs_client::Error::Api(e) => anyhow::Error::new(*e),
        e => e.into(),
    }
}

struct Target {
    id: String,
    name: String,
    os: String,
}

/// Resolves ids, a name pattern, `--all` or a file to servers of the project.
async fn resolve_targets(api: &Api, t: &Targets) -> anyhow::Result<Vec<Target>> {
    let modes = [
        !t.ids.is_empty(),
        t.name.is_some(),
        t.all,
        t.from_file.is_some(),
    ];
    if modes.iter().filter(|m| **m).count() != 1 {
        bail!(Rejected(
            "name the targets one way: server ids, --name PATTERN, --all or --from-file FILE"
                .into()
        ));
    }
    let all = api.client().all_servers().await.map_err(api_error)?;
    let to_target = |s: &ServerDetail| Target {
        id: s.id.clone(),
        name: s.name.clone(),
        os: match os_of(s) {
            "" => "Linux".to_owned(),
            os => os.to_owned(),
        },
    };
    let wanted: Option<Vec<String>> = if let Some(f) = &t.from_file {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        Some(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned)
                .collect(),
        )
    } else if !t.ids.is_empty() {
        Some(t.ids.clone())
    } else {
        None
    };
    let targets: Vec<Target> = if let Some(wanted) = wanted {
        let mut out = Vec::new();
        for w in wanted {
            match all.iter().find(|s| s.id == w || s.name == w) {
                Some(s) => out.push(to_target(s)),
                // Unknown ids go to the API as they are: it names them (Ecs.0114).
                None => out.push(Target {
                    id: w.clone(),
                    name: String::new(),
                    os: "Linux".into(),
                }),
            }
        }
        out
    } else if let Some(p) = &t.name {
        let pat =
            glob::Pattern::new(p).map_err(|e| Rejected(format!("bad --name pattern: {e}")))?;
        all.iter()
            .filter(|s| pat.matches(&s.name))
            .map(to_target)
            .collect()
    } else {
        all.iter().map(to_target).collect()
    };
    if targets.is_empty() {
        bail!(Rejected("no server matches".into()));
    }
    Ok(targets)
}

#[derive(Clone, Copy)]
enum Power {
    Start,
    Stop,
    Reboot,
}

async fn power(api: &Api, action: Power, a: PowerArgs, out: &Out) -> anyhow::Result<u8> {
    let targets = resolve_targets(api, &a.targets).await?;
    let job = start_power(api, action, &targets, a.hard).await?;
    if a.no_wait {
        if out.json {
            say!("{}", json!({"job_id": job}));
        } else {
            say!("job {job} accepted for {} servers", targets.len());
        }
        return Ok(0);
    }
    let (code, body) = wait_job(api, &job, Duration::from_secs(a.timeout), out).await?;
    if out.json {
        say!("{}", serde_json::to_string(&body)?);
    } else {
        let failed: Vec<Vec<String>> = body
            .entities
            .sub_jobs
            .iter()
            .filter(|s| s.status != JobStatus::Success)
            .map(|s| {
                vec![
                    s.entities.server_id.clone(),
                    s.status.to_string(),
                    s.fail_reason.clone().unwrap_or_default(),
                ]
            })
            .collect();
        say!("job {job}: {}", body.status);
        if !failed.is_empty() {
            out.table(&["SERVER", "STATUS", "REASON"], failed);
        }
    }
    Ok(code)
}

async fn start_power(
    api: &Api,
    action: Power,
    targets: &[Target],
    hard: bool,
) -> anyhow::Result<String> {
    let servers: Vec<ServerRef> = targets.iter().map(|t| ServerRef::new(&t.id)).collect();
    let kind = if hard {
        ActionKind::Hard
    } else {
        ActionKind::Soft
    };
    let body = match action {
        Power::Start => ServerAction::Start { servers },
        Power::Stop => ServerAction::Stop {
            servers,
            kind: Some(kind),
        },
        Power::Reboot => ServerAction::Reboot { servers, kind },
    };
    let r = api.api_result(
        "POST /cloudservers/action",
        api.client().action(&body).await,
    )?;
    Ok(r.body.job_id)
}

/// Polls a job to its end with a progress bar; exit code and the last body.
async fn wait_job(
    api: &Api,
    job: &str,
    timeout: Duration,
    out: &Out,
) -> anyhow::Result<(u8, ShowJobResponse)> {
    let bar = out
        .fancy
        .then(|| indicatif::ProgressBar::new(0).with_message(format!("job {job}")));
    // Long polls: ecsd answers as soon as the job changes (`?wait`).
    let mut poll = LongPoll::new(timeout);
    loop {
        let body = poll
            .read(|wait| async move {
                Ok(api
                    .api_result("GET /jobs/{job_id}", api.client().job_wait(job, wait).await)?
                    .body)
            })
            .await?;
        let subs = &body.entities.sub_jobs;
        let done = subs.iter().filter(|s| s.status.is_final()).count();
        if let Some(b) = &bar {
            b.set_length(subs.len() as u64);
            b.set_position(done as u64);
        }
        match body.status {
            JobStatus::Success => {
                if let Some(b) = bar {
                    b.finish_and_clear();
                }
                return Ok((0, body));
            }
            JobStatus::Fail => {
                if let Some(b) = bar {
                    b.finish_and_clear();
                }
                let any_ok = subs.iter().any(|s| s.status == JobStatus::Success);
                return Ok((if any_ok { PARTIAL } else { REJECTED }, body));
            }
            _ if poll.timed_out() => {
                if let Some(b) = bar {
                    b.abandon();
                }
                eprintln!(
                    "timed out after {}s waiting for job {job}",
                    timeout.as_secs()
                );
                return Ok((TIMED_OUT, body));
            }
            _ => {}
        }
    }
}

/// The reads of `--wait`: long polls (`?wait=`), each waiting at most what
/// is left of the timeout, at most 20 s (well below the client's 60-s call
/// limit) and at least 1 s. An answer unchanged at once comes from an ecsd
/// without `wait`: the next read then follows after 500 ms, as polling did.
struct LongPoll<T> {
    started: Instant,
    timeout: Duration,
    last: Option<T>,
}

impl<T: Clone + PartialEq> LongPoll<T> {
    fn new(timeout: Duration) -> Self {
        LongPoll {
            started: Instant::now(),
            timeout,
            last: None,
        }
    }

    fn timed_out(&self) -> bool {
        self.started.elapsed() > self.timeout
    }

    /// One read; `read` is given how long ecsd may wait.
    async fn read<F: Future<Output = anyhow::Result<T>>>(
        &mut self,
        read: impl FnOnce(Duration) -> F,
    ) -> anyhow::Result<T> {
        let left = self.timeout.saturating_sub(self.started.elapsed());
        let wait = Duration::from_secs(left.as_secs().clamp(1, 20));
        let asked = Instant::now();
        let v = read(wait).await?;
        if self.last.as_ref() == Some(&v) && asked.elapsed() < wait / 2 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.last = Some(v.clone());
        Ok(v)
    }
}

struct ResetOpts {
    password_stdin: bool,
    /// `Some(length)`: ecsd generates and escrows a password per server.
    generate: Option<usize>,
    dry_run: bool,
    apply_now: bool,
    reboot: bool,
    wait: bool,
    timeout: Duration,
}

/// The new password: from a prompt (twice, not echoed) or standard input.
fn read_password(from_stdin: bool, needed: bool) -> anyhow::Result<Option<SecretString>> {
    if from_stdin {
        let mut line = zeroize::Zeroizing::new(String::new());
        std::io::stdin().lock().read_line(&mut line)?;
        let pw = line.trim_end_matches(['\r', '\n']).to_owned();
        return Ok(Some(SecretString::from(pw)));
    }
    if !std::io::stdin().is_terminal() {
        if needed {
            bail!(Rejected("standard input is not a terminal: pass --password-stdin and write the password to it".into()));
        }
        return Ok(None);
    }
    let first = SecretString::from(rpassword::prompt_password("New password: ")?);
    let second = SecretString::from(rpassword::prompt_password("Again: ")?);
    if first.expose_secret() != second.expose_secret() {
        bail!(Rejected("the two passwords differ".into()));
    }
    Ok(Some(first))
}

async fn reset_password(api: &Api, t: &Targets, o: &ResetOpts, out: &Out) -> anyhow::Result<u8> {
    let targets = resolve_targets(api, t).await?;
    let password = if o.generate.is_some() {
        None
    } else {
        read_password(o.password_stdin, !o.dry_run)?
    };
    if let Some(pw) = &password {
        // The service's own rules, per OS among the targets: instant feedback.
        let mut seen = std::collections::BTreeSet::new();
        for t in &targets {
            let os = ecs_policy::OsType::parse(&t.os).unwrap_or(ecs_policy::OsType::Linux);
            if seen.insert(os.as_str())
                && let Err(v) =
                    ecs_policy::check(pw.expose_secret(), os, ecs_policy::Strictness::Full)
            {
                bail!(Rejected(format!(
                    "the password is refused for {} servers (checked locally; nothing was sent): {v}",
                    os.as_str()
                )));
            }
        }
    }
    let body = BatchResetRequest {
        generate: o.generate.map(|length| ecs_api::Generate {
            length: Some(length),
        }),
        new_password: password.map(Into::into),
        dry_run: Some(o.dry_run),
        servers: targets.iter().map(|t| ServerRef::new(&t.id)).collect(),
        apply: o.apply_now.then(|| "now".to_owned()),
    };
    let r = api.api_result(
        "PUT /cloudservers/os-reset-passwords",
        api.client().batch_reset(&body).await,
    )?;
    drop(body);
    if o.dry_run {
        let rows = r.body.readiness.unwrap_or_default();
        if out.json {
            say!("{}", json!({"dry_run": true, "servers": rows}));
        } else {
            say!(
                "dry run passed for {} servers; nothing was changed",
                targets.len()
            );
            out.table(
                &["ID", "NAME", "PLUG-IN", "STATUS", "AGENT", "LAST SEEN"],
                rows.iter()
                    .map(|x| {
                        vec![
                            x.id.clone(),
                            targets
                                .iter()
                                .find(|t| t.id == x.id)
                                .map(|t| t.name.clone())
                                .unwrap_or_default(),
                            if x.plugin_installed {
                                "installed".into()
                            } else {
                                "missing".into()
                            },
                            x.status.to_string(),
                            x.agent_version.clone().unwrap_or_else(|| "-".into()),
                            x.agent_last_seen.clone().unwrap_or_else(|| "never".into()),
                        ]
                    })
                    .collect(),
            );
        }
        return Ok(0);
    }
    let request_id = r.request_id.clone();
    if !out.json {
        say!("reset {request_id} accepted for {} servers", targets.len());
    }
    if o.reboot {
        let job = start_power(api, Power::Reboot, &targets, false).await?;
        if !out.json {
            say!("reboot job {job} started");
        }
    }
    if !o.wait {
        if out.json {
            say!(
                "{}",
                json!({"request_id": request_id, "servers": targets.len()})
            );
        } else if !o.reboot && !o.apply_now {
            say!("the new password applies when each server starts or restarts");
        }
        return Ok(0);
    }
    let (code, last) = wait_outcome(api, &request_id, o.timeout, out).await?;
    print_outcome(&last, out);
    Ok(code)
}

async fn outcome(api: &Api, request_id: &str) -> anyhow::Result<ResetOutcome> {
    Ok(api
        .api_result(
            "GET /cloudservers/os-reset-passwords/{request_id}",
            api.client().reset_outcome(request_id).await,
        )?
        .body)
}

fn exit_for_outcome(o: &ResetOutcome) -> u8 {
    if o.summary.failed + o.summary.superseded > 0 {
        PARTIAL
    } else if o.complete {
        0
    } else {
        TIMED_OUT
    }
}

/// Follows the outcome (long polls) with a bar per state until every server
/// is final.
async fn wait_outcome(
    api: &Api,
    request_id: &str,
    timeout: Duration,
    out: &Out,
) -> anyhow::Result<(u8, ResetOutcome)> {
    let states = [
        ResetState::Pending,
        ResetState::Delivered,
        ResetState::Applied,
        ResetState::Failed,
    ];
    let bars = out.fancy.then(|| {
        let multi = indicatif::MultiProgress::new();
        let style = indicatif::ProgressStyle::with_template("{prefix:>10} [{bar:40}] {pos}/{len}")
            .expect("valid template")
            .progress_chars("=> ");
        let bars: Vec<_> = states
            .iter()
            .map(|s| {
                let b = multi.add(indicatif::ProgressBar::new(0));
                b.set_style(style.clone());
                b.set_prefix(s.as_str().to_lowercase());
                b
            })
            .collect();
        (multi, bars)
    });
    // Long polls: ecsd answers as soon as a server's state changes (`?wait`).
    let mut poll = LongPoll::new(timeout);
    loop {
        let o = poll
            .read(|wait| async move {
                Ok(api
                    .api_result(
                        "GET /cloudservers/os-reset-passwords/{request_id}",
                        api.client().reset_outcome_wait(request_id, wait).await,
                    )?
                    .body)
            })
            .await?;
        let total = o.servers.len() as u64;
        if let Some((_, bars)) = &bars {
            for (b, s) in bars.iter().zip(states) {
                b.set_length(total);
                b.set_position(u64::from(o.summary.get(s)));
            }
        }
        if o.complete || poll.timed_out() {
            if let Some((_, bars)) = bars {
                // Keep the counts as they are (finish() would fill every bar).
                for b in bars {
                    b.abandon();
                }
            }
            if !o.complete {
                eprintln!(
                    "timed out after {}s; not every server has applied the new password",
                    timeout.as_secs()
                );
                return Ok((TIMED_OUT, o));
            }
            return Ok((exit_for_outcome(&o), o));
        }
    }
}

fn print_outcome(o: &ResetOutcome, out: &Out) {
    if out.json {
        say!(
            "{}",
            serde_json::to_string(o).expect("an outcome serializes")
        );
        return;
    }
    let s = &o.summary;
    say!(
        "reset {}: {} applied, {} failed, {} superseded, {} delivered, {} pending",
        o.request_id,
        s.applied,
        s.failed,
        s.superseded,
        s.delivered,
        s.pending
    );
    let not_applied: Vec<Vec<String>> = o
        .servers
        .iter()
        .filter(|x| x.state != ResetState::Applied)
        .map(|x| {
            vec![
                x.id.clone(),
                x.state.to_string(),
                x.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    if !not_applied.is_empty() {
        out.table(&["SERVER", "STATE", "REASON"], not_applied);
    }
}
