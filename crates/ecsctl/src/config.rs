//! Where ecsctl finds its endpoint and credentials, strongest first: flags,
//! `ECS_*` environment variables, a `--dev-credentials` file (what
//! `ecsd serve --dev` writes), then a profile in the config file
//! (`$XDG_CONFIG_HOME/ecsctl/config.toml`, written 0600 by `ecsctl configure`).
//! The secret key never comes from a flag. A profile may instead hold a
//! token from `ecsctl login` (and its expiry): it is used until it expires.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Profile {
    pub endpoint: Option<String>,
    pub project_id: Option<String>,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    /// A CA certificate (PEM) to trust besides the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The IAM domain and user of the last `ecsctl login`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The token of `ecsctl login` (sent as X-Auth-Token) and its expiry
    /// (RFC 3339); preferred over the access key while it is valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expires_at: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ConfigFile {
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

/// Everything needed to call the API.
pub struct Resolved {
    pub endpoint: String,
    pub project_id: String,
    pub access_key: String,
    pub secret_key: SecretString,
    pub ca_file: Option<PathBuf>,
    /// A login token: sent instead of signing (then the keys are empty).
    pub token: Option<SecretString>,
}

pub fn config_path() -> PathBuf {
    if let Ok(p) = std::env::var("ECSCTL_CONFIG") {
        return PathBuf::from(p);
    }
    dirs::config_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("ecsctl")
        .join("config.toml")
}

pub fn load_file(path: &Path) -> anyhow::Result<ConfigFile> {
    match std::fs::read_to_string(path) {
        Ok(t) => toml::from_str(&t).with_context(|| format!("{} is not valid", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes the config file with mode 0600 (atomically).
pub fn save_file(path: &Path, cfg: &ConfigFile) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(".config.toml.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(toml::to_string(cfg)?.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Reads `ecsd serve --dev`'s credentials file.
pub fn dev_profile(path: &Path) -> anyhow::Result<Profile> {
    #[derive(Deserialize)]
    struct Dev {
        endpoint: String,
        project_id: String,
        ak: String,
        sk: String,
        #[serde(default)]
        ca_file: Option<PathBuf>,
        #[serde(default)]
        domain: Option<String>,
        #[serde(default)]
        user: Option<String>,
    }
    let d: Dev = serde_json::from_slice(
        &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{} is not a dev credentials file", path.display()))?;
    Ok(Profile {
        endpoint: Some(d.endpoint),
        project_id: Some(d.project_id),
        access_key: Some(d.ak),
        secret_key: Some(d.sk),
        ca_file: d.ca_file,
        domain: d.domain.filter(|s| !s.is_empty()),
        user: d.user.filter(|s| !s.is_empty()),
        token: None,
        token_expires_at: None,
    })
}

/// The escrow identity `ecsd serve --dev` wrote beside its credentials
/// file (`escrow_identity`, relative to that file), if it names one.
pub fn dev_escrow_identity(path: &Path) -> anyhow::Result<Option<PathBuf>> {
    #[derive(Deserialize)]
    struct Dev {
        #[serde(default)]
        escrow_identity: Option<PathBuf>,
    }
    let d: Dev = serde_json::from_slice(
        &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{} is not a dev credentials file", path.display()))?;
    Ok(d.escrow_identity.map(|p| match path.parent() {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p,
    }))
}

pub struct Overrides {
    pub profile: String,
    pub endpoint: Option<String>,
    pub project_id: Option<String>,
    pub access_key: Option<String>,
    pub dev_credentials: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
}

/// The profile as the flags and environment leave it (the dev file, when
/// given, replaces the config file's profile).
pub fn effective_profile(o: &Overrides) -> anyhow::Result<Profile> {
    let file = load_file(&config_path())?;
    let mut p = file.profiles.get(&o.profile).cloned().unwrap_or_default();
    if let Some(dev) = &o.dev_credentials {
        p = dev_profile(dev)?;
    }
    Ok(p)
}

/// Whether a login token is still usable: `Err` says when it expired.
pub fn token_valid(
    expires_at: Option<&str>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), String> {
    match expires_at.and_then(|e| chrono::DateTime::parse_from_rfc3339(e).ok()) {
        Some(e) if e > now => Ok(()),
        Some(e) => Err(e.to_rfc3339()),
        None => Err("an unknown time".into()),
    }
}

pub fn resolve(o: &Overrides) -> anyhow::Result<Resolved> {
    let p = effective_profile(o)?;
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    // A login token, unless keys are given by flag or environment.
    if let Some(token) = p.token.clone()
        && o.access_key.is_none()
        && env("ECS_ACCESS_KEY").is_none()
    {
        if let Err(when) = token_valid(p.token_expires_at.as_deref(), chrono::Utc::now()) {
            bail!(
                "the login token of profile {} expired at {when}: run `ecsctl login` again",
                o.profile
            );
        }
        let endpoint = o
            .endpoint
            .clone()
            .or_else(|| env("ECS_ENDPOINT"))
            .or(p.endpoint);
        let project_id = o.project_id.clone().or(p.project_id);
        let (Some(endpoint), Some(project_id)) = (endpoint, project_id) else {
            bail!(
                "profile {} has a token but no endpoint or project",
                o.profile
            );
        };
        return Ok(Resolved {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            project_id,
            access_key: String::new(),
            secret_key: SecretString::from(""),
            ca_file: o
                .ca_file
                .clone()
                .or_else(|| env("ECS_CA_FILE").map(PathBuf::from))
                .or(p.ca_file),
            token: Some(SecretString::from(token)),
        });
    }
    let pick = |flag: &Option<String>, var: &str, file: Option<String>| {
        flag.clone().or_else(|| env(var)).or(file)
    };
    let endpoint = pick(&o.endpoint, "ECS_ENDPOINT", p.endpoint);
    let project_id = pick(&o.project_id, "ECS_PROJECT_ID", p.project_id);
    let access_key = pick(&o.access_key, "ECS_ACCESS_KEY", p.access_key);
    let secret_key = env("ECS_SECRET_KEY").or(p.secret_key);
    let ca_file = o
        .ca_file
        .clone()
        .or_else(|| env("ECS_CA_FILE").map(PathBuf::from))
        .or(p.ca_file);
    let (Some(endpoint), Some(project_id), Some(access_key), Some(secret_key)) =
        (endpoint, project_id, access_key, secret_key)
    else {
        bail!(
            "no credentials: run `ecsctl configure`, pass --dev-credentials FILE, or set ECS_ENDPOINT, ECS_PROJECT_ID, ECS_ACCESS_KEY and ECS_SECRET_KEY"
        );
    };
    Ok(Resolved {
        endpoint: endpoint.trim_end_matches('/').to_owned(),
        project_id,
        access_key,
        secret_key: SecretString::from(secret_key),
        ca_file,
        token: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_token_is_valid_only_before_its_expiry() {
        let now = chrono::Utc::now();
        let later = (now + chrono::Duration::seconds(60)).to_rfc3339();
        let earlier = (now - chrono::Duration::seconds(1)).to_rfc3339();
        assert!(token_valid(Some(&later), now).is_ok());
        assert!(token_valid(Some(&earlier), now).is_err());
        assert!(token_valid(Some("2026-01-02T03:04:05.000000Z"), now).is_err());
        assert!(token_valid(Some("not a time"), now).is_err());
        assert!(token_valid(None, now).is_err());
    }
}
