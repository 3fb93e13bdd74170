//! `ecsd serve --dev`: a ready project on embedded defaults — an AK/SK, an
//! IAM user `dev-admin` (admin in the project, random password), and a
//! simulated fleet (Linux and Windows) enrolled through the same enrollment
//! path and running the same agent code as real servers, its root file
//! systems under `<data_dir>/fleet`. The credentials go to
//! `<data_dir>/dev-credentials.json` (mode 0600), the dev operator's escrow
//! identity to `<data_dir>/dev-escrow-identity.txt` (0600; its recipient is
//! registered with the dev project).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ecs_agent::agent::EnrollTrust;
use ecs_agent::simulate::{Fleet, FleetSpec};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::state::AppState;
use crate::store::Role;

/// The dev fleet's size.
#[derive(Debug, Clone, Copy)]
pub struct DevFleet {
    pub linux: usize,
    pub windows: usize,
}

#[derive(Serialize, Deserialize)]
pub struct DevServer {
    pub id: String,
    pub name: String,
    pub os_type: String,
}

#[derive(Serialize, Deserialize)]
pub struct DevCredentials {
    pub endpoint: String,
    pub project_id: String,
    pub ak: String,
    pub sk: String,
    pub servers: Vec<DevServer>,
    /// Where each simulated server's root file system lives (ours).
    pub fleet_dir: PathBuf,
    /// The dev CA (PEM) to trust for `endpoint` (Python SDK:
    /// `HttpConfig.ssl_ca_cert`; ecsctl: `--from-dev`); absent on plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The dev IAM user (admin in the dev project) for `POST /v3/auth/tokens`
    /// and `ecsctl login`: its domain, name and password.
    #[serde(default)]
    pub domain: String,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub password: String,
    /// The web console's address (sign in with `domain`, `user`,
    /// `password` and the project `dev`).
    #[serde(default)]
    pub console: String,
    /// The dev operator's escrow identity (issue 15), relative to this
    /// file's directory: an unencrypted age identity file, mode 0600 like
    /// this file, whose recipient is registered with the dev project, so
    /// `ecsctl passwords show` works with the dev profile at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escrow_identity: Option<PathBuf>,
}

/// The dev escrow identity's file name, beside `dev-credentials.json`.
pub const DEV_ESCROW_IDENTITY: &str = "dev-escrow-identity.txt";

/// The dev operator's escrow identity: kept if its file is there and its
/// recipient registered, else made anew (mode 0600) and registered. Plain
/// (not passphrase-protected): it sits beside `dev-credentials.json`, which
/// holds the dev SK and the dev user's password in the clear with the same
/// protection, so a passphrase stored beside it would protect nothing
/// more (docs/rotation.md).
async fn dev_escrow_identity(
    state: &AppState,
    project: &crate::store::Project,
    data_dir: &Path,
) -> anyhow::Result<PathBuf> {
    let path = data_dir.join(DEV_ESCROW_IDENTITY);
    let existing = std::fs::read(&path)
        .ok()
        .map(zeroize::Zeroizing::new)
        .and_then(|f| ecs_escrow::open_identity(&f, None).ok());
    let recipient = match existing {
        Some(id) => id.recipient(),
        None => {
            let (id, file) =
                ecs_escrow::new_identity("ecsd serve --dev: the dev operator's escrow identity");
            write_private(&path, file.expose_secret().as_bytes())?;
            id.recipient()
        }
    };
    let registered = state.escrow.recipients(&project.id).await?;
    if !registered.iter().any(|r| r.recipient == recipient) {
        state
            .escrow
            .add_recipient(crate::store::escrow::Recipient {
                id: uuid::Uuid::new_v4().simple().to_string()[..16].to_owned(),
                project_id: project.id.clone(),
                name: "dev operator".into(),
                recipient,
                created: state.clock.now(),
            })
            .await?;
    }
    Ok(PathBuf::from(DEV_ESCROW_IDENTITY))
}

/// The dev IAM user's name.
pub const DEV_USER: &str = "dev-admin";

/// The dev user, admin in the dev project: kept if the previous password
/// still logs in, made anew (with a new random password) otherwise.
async fn dev_user(
    state: &AppState,
    project: &crate::store::Project,
    previous: Option<&DevCredentials>,
) -> anyhow::Result<(String, SecretString)> {
    let domain = state
        .identity
        .project_domain(&project.id)
        .await?
        .context("the dev project has no domain")?;
    let existing = state.identity.user_by_name(&domain.id, DEV_USER).await?;
    if let (Some(u), Some(p)) = (&existing, previous)
        && p.user == DEV_USER
        && !p.password.is_empty()
    {
        let pw = SecretString::from(p.password.clone());
        let phc = u.password_hash.clone();
        let check = pw.clone();
        if tokio::task::spawn_blocking(move || crate::identity::verify_password(&phc, &check))
            .await?
        {
            state
                .identity
                .assign_role(&u.id, &project.id, crate::store::identity::UserRole::Admin)
                .await?;
            return Ok((domain.name, pw));
        }
    }
    if let Some(u) = existing {
        state.identity.delete_user(&u.id).await?;
    }
    let pw = crate::secrets::new_secret_key();
    crate::admin::create_user(
        state,
        &domain.name,
        DEV_USER,
        &pw,
        Some(crate::store::identity::UserRole::Admin),
        Some(&project.id),
    )
    .await?;
    Ok((domain.name, pw))
}

/// Writes a file readable by its owner only, atomically.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    ecs_agent::files::write_private(path, data)
}

/// The settings a second replica of a dev deployment on PostgreSQL needs
/// (`replica.toml` beside `dev-credentials.json`): the same database,
/// master key, certificate and CA; the work-signing key is in the database.
#[derive(Serialize)]
struct ReplicaConfig {
    database: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    master_key_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_ca: Option<PathBuf>,
    insecure_http: bool,
}

/// Writes `<data_dir>/replica.toml` (0600: the database URL may hold a
/// password) when the dev deployment is on PostgreSQL, so that
/// `ecsd serve --config <it> --data-dir <another> --listen <another>`
/// starts another replica of it. Returns its path, or `None` on SQLite
/// (one process per database file).
pub fn write_replica_config(
    config: &crate::config::Config,
    ca_file: Option<&Path>,
) -> anyhow::Result<Option<PathBuf>> {
    let crate::config::Database::Postgres(url) = config.database() else {
        return Ok(None);
    };
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    let key_file = config.data_dir.join("master.key");
    let replica = ReplicaConfig {
        database: url,
        // A key given as ECSD_MASTER_KEY is not written anywhere: the other
        // replica is given it the same way.
        master_key_file: key_file.exists().then(|| abs(&key_file)),
        tls_cert: config.tls_cert.as_deref().map(abs),
        tls_key: config.tls_key.as_deref().map(abs),
        tls_ca: ca_file.or(config.tls_ca.as_deref()).map(abs),
        insecure_http: config.insecure_http,
    };
    let text = format!(
        "# Another replica of this dev deployment (same database, master key, certificate):\n\
         #   ecsd serve --config {path} --data-dir <another dir> --listen <another address>\n{body}",
        path = abs(&config.data_dir.join("replica.toml")).display(),
        body = toml::to_string(&replica)?
    );
    let path = config.data_dir.join("replica.toml");
    write_private(&path, text.as_bytes())?;
    Ok(Some(path))
}

pub fn credentials_path(data_dir: &Path) -> PathBuf {
    data_dir.join("dev-credentials.json")
}

/// Prepares the dev project, its key and its fleet; returns the running
/// fleet and the path of the credentials file.
pub async fn bootstrap(
    state: &AppState,
    endpoint: &str,
    fleet_size: DevFleet,
    ca_file: Option<&Path>,
) -> anyhow::Result<(Arc<Fleet>, PathBuf)> {
    let data_dir = state.config.data_dir.clone();
    let cred_path = credentials_path(&data_dir);
    let project = match state.store.project_by_name("dev").await? {
        Some(p) => p,
        None => state.store.create_project("dev").await?,
    };
    // Reuse the previous key if it is still valid.
    let previous: Option<DevCredentials> = std::fs::read(&cred_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let (domain, password) = dev_user(state, &project, previous.as_ref()).await?;
    let escrow_identity = dev_escrow_identity(state, &project, &data_dir).await?;
    let (ak, sk) = match previous {
        Some(p) if p.project_id == project.id && state.store.access_key(&p.ak).await?.is_some() => {
            (p.ak, SecretString::from(p.sk))
        }
        _ => crate::admin::create_access_key(state, &project.id, Role::Admin).await?,
    };
    let total = (fleet_size.linux + fleet_size.windows) as u32;
    let token = crate::enroll::issue_enroll_token(state, &project.id, total.max(1), 600).await?;
    let fleet_dir = data_dir.join("fleet");
    // The dev agents enroll as real ones do: pinned to the CA's public key.
    let trust = match state.ca_pin.get() {
        Some(pin) => EnrollTrust::Pin(*pin),
        None => EnrollTrust::PlainLoopback,
    };
    let fleet = Fleet::start(FleetSpec {
        endpoint: endpoint.to_owned(),
        token: Some(SecretString::from(token.token.clone())),
        trust,
        root_base: fleet_dir.clone(),
        linux: fleet_size.linux,
        windows: fleet_size.windows,
        prefix: "dev-".into(),
        poll: Duration::from_secs(state.config.agent_poll_secs),
        heartbeat: Duration::from_secs(30),
    })
    .await
    .context("starting the dev fleet")?;
    // Wait until every simulated server has reported in.
    let ids: Vec<String> = fleet.list().into_iter().map(|s| s.server_id).collect();
    for _ in 0..200 {
        let servers = state.store.servers_by_ids(&ids).await?;
        if servers
            .iter()
            .filter(|s| s.agent_last_seen.is_some())
            .count()
            == ids.len()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let creds = DevCredentials {
        endpoint: endpoint.to_owned(),
        project_id: project.id,
        ak,
        sk: sk.expose_secret().to_owned(),
        servers: fleet
            .list()
            .into_iter()
            .map(|s| DevServer {
                id: s.server_id,
                name: s.name,
                os_type: s.os_type,
            })
            .collect(),
        fleet_dir,
        ca_file: ca_file.map(|p| std::path::absolute(p).unwrap_or_else(|_| p.to_owned())),
        domain,
        user: DEV_USER.to_owned(),
        password: password.expose_secret().to_owned(),
        console: format!("{endpoint}{}", crate::console::PATH),
        escrow_identity: Some(escrow_identity),
    };
    let data = zeroize::Zeroizing::new(serde_json::to_vec_pretty(&creds)?);
    write_private(&cred_path, &data)?;
    Ok((fleet, cred_path))
}
