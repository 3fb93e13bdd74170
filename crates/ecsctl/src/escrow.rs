//! `ecsctl escrow`, `ecsctl passwords`, `ecsctl rotation` (issue 15): the
//! operator's identity (made and kept here, never uploaded), escrowed
//! passwords decrypted locally, rotation policies and the drift report.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use ecs_api::{
    CreateRecipientRequest, EscrowRecipient, EscrowedPasswords, PasswordStatusList, RecipientList,
    RotationPolicy, RotationPolicyList, RotationPolicySpec, RotationSchedule, RotationSelector,
};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use crate::api::{Api, cell};
use crate::{Out, Rejected, config};

#[derive(Subcommand)]
pub enum Escrow {
    /// Make an escrow identity here (age X25519, passphrase-protected, mode
    /// 0600, never uploaded) and register its recipient with the project.
    ///
    /// The passphrase is asked twice without echo, or read from the first
    /// line of standard input with --passphrase-stdin; never an argument.
    ///
    /// Example: ecsctl escrow init --name alice
    Init {
        /// A label for the recipient (default: the user name or "operator").
        #[arg(long)]
        name: Option<String>,
        /// Where to write the identity (default: ECS_ESCROW_IDENTITY, or
        /// escrow-identity.age in ecsctl's config directory).
        #[arg(long)]
        identity: Option<PathBuf>,
        #[arg(long)]
        passphrase_stdin: bool,
    },
    /// Register someone else's recipient (a break-glass team's age1... key).
    Add {
        #[arg(long)]
        name: String,
        /// age1...
        #[arg(long)]
        recipient: String,
    },
    /// The project's recipients.
    List,
    /// Remove a recipient: later passwords are not encrypted to it (versions
    /// already escrowed stay readable by it).
    Remove { id: String },
}

#[derive(Args, Clone)]
pub struct IdentityArgs {
    /// The identity file (default: ECS_ESCROW_IDENTITY, the dev
    /// credentials' escrow identity, or escrow-identity.age in ecsctl's
    /// config directory).
    #[arg(long)]
    identity: Option<PathBuf>,
    /// Read the identity's passphrase from the first line of standard input.
    #[arg(long)]
    passphrase_stdin: bool,
}

#[derive(Subcommand)]
pub enum Passwords {
    /// Decrypt a server's escrowed password here and print it (newest, or
    /// --version N). Needs ecs:cloudServers:getPassword; audited.
    ///
    /// Example: ecsctl passwords show SERVER_ID_OR_NAME --version 2
    Show {
        server_id: String,
        #[arg(long)]
        version: Option<i64>,
        #[command(flatten)]
        identity: IdentityArgs,
    },
    /// The versions of a server's escrowed password (no decryption):
    /// request, time, state.
    Versions { server_id: String },
    /// Servers whose password is older than a policy allows, was never
    /// escrowed, or never applied (exit 4 when any).
    Status {
        /// Every server, not only those needing attention.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand)]
pub enum Rotation {
    /// Create a rotation policy.
    ///
    /// Examples:
    ///   ecsctl rotation create --name prod-daily --every-days 1 --tag env=prod \
    ///     --window-start 02:00 --time-zone Europe/Berlin --rotate-after-retrieval-minutes 60
    ///   ecsctl rotation create --name web --every-minutes 30 --name-pattern 'web-*' --apply now
    Create(Box<RotationArgs>),
    /// The project's rotation policies.
    List,
    /// Delete a policy by id or name.
    Delete { policy: String },
}

#[derive(Args)]
pub struct RotationArgs {
    #[arg(long)]
    name: String,
    #[arg(long)]
    every_days: Option<u32>,
    #[arg(long)]
    every_minutes: Option<u32>,
    /// HH:MM, local to --utc-offset.
    #[arg(long)]
    window_start: Option<String>,
    #[arg(long)]
    window_minutes: Option<u32>,
    /// +HH:MM or -HH:MM.
    #[arg(long, allow_hyphen_values = true, conflicts_with = "time_zone")]
    utc_offset: Option<String>,
    /// An IANA time zone (Europe/Berlin), daylight saving time included.
    #[arg(long)]
    time_zone: Option<String>,
    /// KEY=VALUE the servers must carry; repeatable.
    #[arg(long)]
    tag: Vec<String>,
    /// Server name pattern (`*`, `?`).
    #[arg(long)]
    name_pattern: Option<String>,
    /// Linux or Windows.
    #[arg(long)]
    os: Option<String>,
    /// next_restart (default), now, now_restart.
    #[arg(long)]
    apply: Option<String>,
    #[arg(long)]
    rotate_after_retrieval_minutes: Option<u32>,
    #[arg(long)]
    length: Option<usize>,
}

fn default_identity_path() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("ECS_ESCROW_IDENTITY").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    Ok(dirs::config_dir()
        .context("no configuration directory ($HOME or $XDG_CONFIG_HOME)")?
        .join("ecsctl")
        .join("escrow-identity.age"))
}

/// The identity file: --identity, ECS_ESCROW_IDENTITY, the dev file's,
/// the default path.
fn identity_path(flag: Option<PathBuf>, o: &config::Overrides) -> anyhow::Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p);
    }
    if std::env::var_os("ECS_ESCROW_IDENTITY").is_none()
        && let Some(dev) = &o.dev_credentials
        && let Some(p) = config::dev_escrow_identity(dev)?
    {
        return Ok(p);
    }
    default_identity_path()
}

fn stdin_line() -> anyhow::Result<SecretString> {
    let mut line = zeroize::Zeroizing::new(String::new());
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(SecretString::from(
        line.trim_end_matches(['\r', '\n']).to_owned(),
    ))
}

fn new_passphrase(from_stdin: bool) -> anyhow::Result<SecretString> {
    let p = if from_stdin {
        stdin_line()?
    } else if std::io::stdin().is_terminal() {
        let first = SecretString::from(rpassword::prompt_password(
            "Passphrase for the new identity: ",
        )?);
        let second = SecretString::from(rpassword::prompt_password("Again: ")?);
        if first.expose_secret() != second.expose_secret() {
            bail!(Rejected("the two passphrases differ".into()));
        }
        first
    } else {
        bail!(Rejected(
            "standard input is not a terminal: pass --passphrase-stdin and write the passphrase to it"
                .into()
        ));
    };
    if p.expose_secret().chars().count() < 8 {
        bail!(Rejected(
            "the passphrase must be at least 8 characters".into()
        ));
    }
    Ok(p)
}

/// Writes a new file with mode 0600, refusing to replace one.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "creating {} (an identity there is never replaced)",
                path.display()
            )
        })?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

fn recipient_rows(list: &[EscrowRecipient]) -> Vec<Vec<String>> {
    list.iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.name.clone(),
                r.recipient.clone(),
                r.created.clone(),
            ]
        })
        .collect()
}

pub async fn escrow(
    api: &Api,
    o: &config::Overrides,
    cmd: Escrow,
    out: &Out,
) -> anyhow::Result<u8> {
    let c = api.client();
    match cmd {
        Escrow::Init {
            name,
            identity,
            passphrase_stdin,
        } => {
            let path = match identity {
                Some(p) => p,
                None => default_identity_path()?,
            };
            if path.exists() {
                bail!(Rejected(format!(
                    "{} exists: an identity is never replaced (pass --identity for another file)",
                    path.display()
                )));
            }
            let passphrase = new_passphrase(passphrase_stdin)?;
            let (id, plain) = ecs_escrow::new_identity("ecsctl escrow init");
            let file = ecs_escrow::protect_identity(&plain, passphrase)
                .context("protecting the identity")?;
            let name = name
                .or_else(|| config::effective_profile(o).ok().and_then(|p| p.user))
                .unwrap_or_else(|| "operator".into());
            // Registered first: a file for a recipient the project does not
            // know would be useless.
            let r = api.api_result(
                "POST /escrow/recipients",
                c.call::<EscrowRecipient>(
                    Method::POST,
                    "/escrow/recipients",
                    Some(&CreateRecipientRequest {
                        name,
                        recipient: id.recipient(),
                    }),
                )
                .await,
            )?;
            write_private(&path, &file)?;
            if out.json {
                say_json(&json!({"recipient": r.body, "identity": path}));
            } else {
                println!(
                    "registered recipient {} ({})",
                    cell(&r.body.id),
                    cell(&r.body.name)
                );
                println!("recipient: {}", cell(&r.body.recipient));
                println!(
                    "identity:  {} (passphrase-protected, mode 0600; keep a backup)",
                    path.display()
                );
            }
            Ok(0)
        }
        Escrow::Add { name, recipient } => {
            let r = api.api_result(
                "POST /escrow/recipients",
                c.call::<EscrowRecipient>(
                    Method::POST,
                    "/escrow/recipients",
                    Some(&CreateRecipientRequest { name, recipient }),
                )
                .await,
            )?;
            if out.json {
                say_json(&serde_json::to_value(&r.body)?);
            } else {
                out.table(
                    &["ID", "NAME", "RECIPIENT", "CREATED"],
                    recipient_rows(std::slice::from_ref(&r.body)),
                );
            }
            Ok(0)
        }
        Escrow::List => {
            let r = api.api_result(
                "GET /escrow/recipients",
                c.call::<RecipientList>(Method::GET, "/escrow/recipients", None::<&()>)
                    .await,
            )?;
            if out.json {
                say_json(&serde_json::to_value(&r.body)?);
            } else {
                out.table(
                    &["ID", "NAME", "RECIPIENT", "CREATED"],
                    recipient_rows(&r.body.recipients),
                );
            }
            Ok(0)
        }
        Escrow::Remove { id } => {
            api.api_result(
                "DELETE /escrow/recipients",
                c.call::<()>(
                    Method::DELETE,
                    &format!("/escrow/recipients/{}", ecs_client::encode(&id)),
                    None::<&()>,
                )
                .await,
            )?;
            if !out.json {
                println!("removed recipient {}", cell(&id));
            }
            Ok(0)
        }
    }
}

fn say_json(v: &serde_json::Value) {
    println!("{v}");
}

/// A server by id or exact name (as `reset-password` takes them).
async fn server_id_of(api: &Api, server: &str) -> anyhow::Result<String> {
    let t = crate::Targets {
        ids: vec![server.to_owned()],
        name: None,
        all: false,
        from_file: None,
    };
    Ok(crate::resolve_targets(api, &t)
        .await?
        .into_iter()
        .next()
        .map(|t| t.id)
        .unwrap_or_else(|| server.to_owned()))
}

async fn versions(
    api: &Api,
    server: &str,
    version: Option<i64>,
) -> anyhow::Result<EscrowedPasswords> {
    let server_id = server_id_of(api, server).await?;
    let server_id = server_id.as_str();
    let mut rest = format!(
        "/cloudservers/{}/escrowed-passwords",
        ecs_client::encode(server_id)
    );
    if let Some(v) = version {
        rest.push_str(&format!("?version={v}"));
    }
    Ok(api
        .api_result(
            "GET escrowed-passwords",
            api.client()
                .call::<EscrowedPasswords>(Method::GET, &rest, None::<&()>)
                .await,
        )?
        .body)
}

fn open_identity(path: &Path, passphrase_stdin: bool) -> anyhow::Result<ecs_escrow::Identity> {
    let file = zeroize::Zeroizing::new(
        std::fs::read(path).with_context(|| format!("reading the identity {}", path.display()))?,
    );
    let passphrase = if ecs_escrow::is_protected(&file) {
        Some(if passphrase_stdin {
            stdin_line()?
        } else if std::io::stdin().is_terminal() {
            SecretString::from(rpassword::prompt_password(format!(
                "Passphrase of {}: ",
                path.display()
            ))?)
        } else {
            bail!(Rejected(
                "the identity is passphrase-protected and standard input is not a terminal: pass --passphrase-stdin".into()
            ));
        })
    } else {
        None
    };
    ecs_escrow::open_identity(&file, passphrase)
        .with_context(|| format!("opening the identity {}", path.display()))
}

pub async fn passwords(
    api: &Api,
    o: &config::Overrides,
    cmd: Passwords,
    out: &Out,
) -> anyhow::Result<u8> {
    match cmd {
        Passwords::Show {
            server_id,
            version,
            identity,
        } => {
            let path = identity_path(identity.identity, o)?;
            let id = open_identity(&path, identity.passphrase_stdin)?;
            let got = versions(api, &server_id, version).await?;
            let Some(v) = got.versions.first() else {
                bail!(Rejected(format!(
                    "no escrowed password for server {}",
                    cell(&server_id)
                )));
            };
            let password = ecs_escrow::decrypt(&id, v.age.as_bytes()).with_context(|| {
                format!(
                    "version {} was not encrypted to the recipient of {}",
                    v.version,
                    path.display()
                )
            })?;
            if out.json {
                say_json(&json!({
                    "server_id": got.server_id,
                    "version": v.version,
                    "request_id": v.request_id,
                    "applied": v.applied,
                    "password": password.expose_secret(),
                }));
            } else {
                if std::io::stderr().is_terminal() {
                    eprintln!(
                        "version {} of {} ({}, {})",
                        v.version,
                        cell(&got.server_id),
                        cell(&v.created),
                        if v.applied {
                            "applied"
                        } else {
                            "not applied yet"
                        }
                    );
                }
                println!("{}", password.expose_secret());
            }
            Ok(0)
        }
        Passwords::Versions { server_id } => {
            let got = versions(api, &server_id, None).await?;
            if out.json {
                say_json(&serde_json::to_value(&got)?);
            } else {
                out.table(
                    &["VERSION", "REQUEST", "CREATED", "STATE", "APPLIED"],
                    got.versions
                        .iter()
                        .map(|v| {
                            vec![
                                v.version.to_string(),
                                v.request_id.clone(),
                                v.created.clone(),
                                v.state.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                                v.applied.to_string(),
                            ]
                        })
                        .collect(),
                );
            }
            Ok(0)
        }
        Passwords::Status { all } => {
            let r = api.api_result(
                "GET /escrow/password-status",
                api.client()
                    .call::<PasswordStatusList>(Method::GET, "/escrow/password-status", None::<&()>)
                    .await,
            )?;
            let attention: Vec<_> = r
                .body
                .servers
                .iter()
                .filter(|s| all || s.status != "ok")
                .collect();
            let bad = r.body.servers.iter().any(|s| s.status != "ok");
            if out.json {
                say_json(&json!({"servers": attention}));
            } else {
                out.table(
                    &["ID", "NAME", "STATUS", "VERSION", "CREATED", "STATE"],
                    attention
                        .iter()
                        .map(|s| {
                            vec![
                                s.server_id.clone(),
                                s.name.clone(),
                                s.status.clone(),
                                s.version
                                    .map(|v| v.to_string())
                                    .unwrap_or_else(|| "-".into()),
                                s.created.clone().unwrap_or_else(|| "-".into()),
                                s.state.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                            ]
                        })
                        .collect(),
                );
            }
            Ok(if bad { crate::PARTIAL } else { 0 })
        }
    }
}

fn policy_rows(list: &[RotationPolicy]) -> Vec<Vec<String>> {
    list.iter()
        .map(|p| {
            let s = &p.spec.schedule;
            let every = match (s.every_days, s.every_minutes) {
                (Some(d), _) => format!("{d}d"),
                (_, Some(m)) => format!("{m}m"),
                _ => "-".into(),
            };
            let sel = &p.spec.selector;
            let mut selector = sel.tags.join(",");
            if let Some(n) = &sel.name {
                selector.push_str(&format!(" name={n}"));
            }
            if let Some(os) = &sel.os {
                selector.push_str(&format!(" os={os}"));
            }
            vec![
                p.id.clone(),
                p.spec.name.clone(),
                every,
                s.window_start.clone().unwrap_or_else(|| "-".into()),
                selector.trim().to_owned(),
                p.spec.apply.clone().unwrap_or_default(),
                p.spec
                    .rotate_after_retrieval_minutes
                    .map(|m| format!("{m}m"))
                    .unwrap_or_else(|| "-".into()),
                p.last_run.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect()
}

const POLICY_HEADERS: &[&str] = &[
    "ID",
    "NAME",
    "EVERY",
    "WINDOW",
    "SELECTOR",
    "APPLY",
    "AFTER-USE",
    "LAST RUN",
];

pub async fn rotation(api: &Api, cmd: Rotation, out: &Out) -> anyhow::Result<u8> {
    let c = api.client();
    match cmd {
        Rotation::Create(a) => {
            let a = *a;
            let spec = RotationPolicySpec {
                name: a.name,
                schedule: RotationSchedule {
                    every_minutes: a.every_minutes,
                    every_days: a.every_days,
                    window_start: a.window_start,
                    window_minutes: a.window_minutes,
                    utc_offset: a.utc_offset,
                    time_zone: a.time_zone,
                },
                selector: RotationSelector {
                    tags: a.tag,
                    name: a.name_pattern,
                    os: a.os,
                },
                apply: a.apply,
                rotate_after_retrieval_minutes: a.rotate_after_retrieval_minutes,
                length: a.length,
            };
            let r = api.api_result(
                "POST /escrow/rotation-policies",
                c.call::<RotationPolicy>(Method::POST, "/escrow/rotation-policies", Some(&spec))
                    .await,
            )?;
            if out.json {
                say_json(&serde_json::to_value(&r.body)?);
            } else {
                out.table(POLICY_HEADERS, policy_rows(std::slice::from_ref(&r.body)));
            }
            Ok(0)
        }
        Rotation::List => {
            let r = api.api_result(
                "GET /escrow/rotation-policies",
                c.call::<RotationPolicyList>(Method::GET, "/escrow/rotation-policies", None::<&()>)
                    .await,
            )?;
            if out.json {
                say_json(&serde_json::to_value(&r.body)?);
            } else {
                out.table(POLICY_HEADERS, policy_rows(&r.body.policies));
            }
            Ok(0)
        }
        Rotation::Delete { policy } => {
            api.api_result(
                "DELETE /escrow/rotation-policies",
                c.call::<()>(
                    Method::DELETE,
                    &format!("/escrow/rotation-policies/{}", ecs_client::encode(&policy)),
                    None::<&()>,
                )
                .await,
            )?;
            if !out.json {
                println!("deleted rotation policy {}", cell(&policy));
            }
            Ok(0)
        }
    }
}
