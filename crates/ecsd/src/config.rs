//! Layered configuration: built-in defaults, then a TOML file, then `ECSD_*`
//! environment variables, then command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Where the database, the dev credentials and the dev fleet live.
    pub data_dir: PathBuf,
    /// The database: a SQLite file path (default `<data_dir>/ecsd.db`) or a
    /// `postgres://` / `postgresql://` URL (see [`Config::database`]).
    pub database: Option<String>,
    /// Connections to PostgreSQL per ecsd process (unused with SQLite).
    pub database_pool_size: u32,
    /// Base64 of 32 random bytes; encrypts the stored secret keys. Required
    /// outside `--dev` (where it is generated into `<data_dir>/master.key`).
    #[serde(skip_serializing)]
    pub master_key: Option<SecretString>,
    /// A file holding `master_key` (read at start when `master_key` is not
    /// set): for systemd credentials, or a replica sharing a dev key.
    pub master_key_file: Option<PathBuf>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Allowed distance between `X-Sdk-Date` and the server clock.
    pub clock_skew_secs: u64,
    /// How long a client has to send a request's head, and then its body
    /// (a body that stops arriving is answered 408 and the connection closed).
    pub request_timeout_secs: u64,
    /// Requests per second allowed per access key (burst: the same number).
    pub rate_limit_per_sec: u32,
    /// Requests per second allowed per agent credential on the agent API
    /// (burst: four times as many); beyond, 429 `APIGW.0308`.
    pub agent_rate_limit_per_sec: u32,
    /// Connections per second the agents of this replica should reconnect
    /// at after it goes away (a restart, a failover): each heartbeat tells
    /// its agent to spread its reconnect over `agents polling / this`
    /// seconds (1 to 600), so 10,000 agents do not all handshake at once.
    /// 0: no spreading (1 s).
    pub agent_reconnect_per_sec: u32,
    /// Most connections open on the listener at once; at the cap, `ecsd`
    /// stops accepting until one closes. Lowered at start to stay below the
    /// open-files limit (whose soft value is raised to the hard one).
    pub max_connections: usize,
    /// Most connections open at once from one source address (0: no cap);
    /// one more is answered 429 `APIGW.0308` and closed. A connection on
    /// which an agent has authenticated no longer counts. Behind a proxy
    /// every client has the proxy's address: set 0 and cap at the proxy.
    pub max_connections_per_source: usize,
    /// Serve `GET /metrics` on this address (plain HTTP, no authentication:
    /// a private address) instead of on the API listener for loopback
    /// clients only.
    pub metrics_listen: Option<SocketAddr>,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// How long an agent's long poll waits for work.
    pub agent_poll_secs: u64,
    /// An agent silent for this long is shown with `host_status` UNKNOWN.
    pub agent_stale_secs: u64,
    /// The public URL agents and clients use; defaults to `http://<listen>`.
    pub public_endpoint: Option<String>,
    /// A power sub-job not completed within this time fails.
    pub job_timeout_secs: u64,
    /// PEM certificate chain served over HTTPS: the server certificate first,
    /// then intermediates, then the CA agents pin (reloaded on SIGHUP).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// The CA certificate whose public key enrollment tokens pin; defaults
    /// to the last certificate of `tls_cert`.
    pub tls_ca: Option<PathBuf>,
    /// Serve plain HTTP without TLS (only on a loopback address unless
    /// `insecure_http_non_loopback` is also set).
    pub insecure_http: bool,
    /// Allow plain HTTP on a non-loopback address (something else must
    /// encrypt the hop, e.g. a TLS-terminating proxy on the same host).
    pub insecure_http_non_loopback: bool,
    /// What enrolling with a machine id that an existing server already has
    /// (and no proof of its key) does: `new-server` or `refuse`.
    pub duplicate_machine_id: DuplicateMachineId,
    /// Audit records older than this many days are deleted (in small
    /// batches, by a background task).
    pub audit_retention_days: u32,
    /// Finished reset requests (every target APPLIED, FAILED or SUPERSEDED)
    /// created more than this many days ago are deleted with their targets.
    pub reset_retention_days: u32,
    /// Finished power jobs (every sub-job SUCCESS or FAIL) begun more than
    /// this many days ago are deleted with their sub-jobs.
    pub job_retention_days: u32,
    /// Failed authentications allowed per minute per source address and per
    /// access key (burst: the same number); beyond them, 429 `APIGW.0308`.
    pub auth_failures_per_minute: u32,
    /// How long a token from `POST /v3/auth/tokens` is valid (Huawei: 24 h).
    pub token_ttl_secs: u64,
    /// A console session ends after this long without a request (idle expiry).
    pub console_idle_secs: u64,
    /// A console session ends this long after sign-in, however busy (absolute expiry).
    pub console_session_secs: u64,
    /// Event streams (`.../events`, the console's live view) open at once
    /// per replica; beyond, 429 `APIGW.0308`.
    pub max_event_streams: usize,
    /// Escrowed password versions kept per server (issue 15); the newest
    /// version its agent applied is kept beyond them.
    pub escrow_keep_versions: u32,
    /// How often the rotation scheduler looks for due rotations (seconds).
    pub rotation_check_secs: u64,
}

/// See [`Config::duplicate_machine_id`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DuplicateMachineId {
    /// The second machine becomes a new server (cloned images work).
    NewServer,
    /// Enrollment is refused.
    Refuse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".parse().expect("valid default address"),
            data_dir: PathBuf::from("ecsd-data"),
            database: None,
            database_pool_size: crate::store::postgres::DEFAULT_POOL_SIZE,
            master_key: None,
            master_key_file: None,
            max_body_bytes: 1024 * 1024,
            clock_skew_secs: 15 * 60,
            request_timeout_secs: 30,
            rate_limit_per_sec: 200,
            agent_rate_limit_per_sec: 5,
            agent_reconnect_per_sec: 200,
            max_connections: 16_384,
            max_connections_per_source: 256,
            metrics_listen: None,
            log_format: LogFormat::Text,
            agent_poll_secs: 25,
            agent_stale_secs: 120,
            public_endpoint: None,
            job_timeout_secs: 300,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            insecure_http: false,
            insecure_http_non_loopback: false,
            duplicate_machine_id: DuplicateMachineId::NewServer,
            audit_retention_days: 365,
            reset_retention_days: 30,
            job_retention_days: 30,
            auth_failures_per_minute: 30,
            token_ttl_secs: 24 * 3600,
            console_idle_secs: 30 * 60,
            console_session_secs: 8 * 3600,
            max_event_streams: 256,
            escrow_keep_versions: crate::domain::escrow::DEFAULT_KEEP as u32,
            rotation_check_secs: 30,
        }
    }
}

/// The keys settable as `ECSD_<KEY>`.
const ENV_KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "database",
    "database_pool_size",
    "master_key",
    "master_key_file",
    "max_body_bytes",
    "clock_skew_secs",
    "request_timeout_secs",
    "rate_limit_per_sec",
    "agent_rate_limit_per_sec",
    "agent_reconnect_per_sec",
    "max_connections",
    "max_connections_per_source",
    "metrics_listen",
    "log_format",
    "agent_poll_secs",
    "agent_stale_secs",
    "public_endpoint",
    "job_timeout_secs",
    "tls_cert",
    "tls_key",
    "tls_ca",
    "insecure_http",
    "insecure_http_non_loopback",
    "duplicate_machine_id",
    "audit_retention_days",
    "reset_retention_days",
    "job_retention_days",
    "auth_failures_per_minute",
    "token_ttl_secs",
    "console_idle_secs",
    "console_session_secs",
    "max_event_streams",
    "escrow_keep_versions",
    "rotation_check_secs",
];

impl Config {
    /// Loads defaults, then `file` (if given), then `ECSD_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Config, Box<figment::Error>> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            fig = fig.merge(Toml::file_exact(path));
        }
        // Only our keys: other ECSD_* variables (ECSD_CONFIG, tools' own) are not config.
        fig.merge(Env::prefixed("ECSD_").only(ENV_KEYS))
            .extract()
            .map_err(Box::new)
    }

    /// Which database `database` names.
    pub fn database(&self) -> Database {
        match &self.database {
            Some(d) if crate::store::postgres::is_postgres_url(d) => {
                Database::Postgres(d.trim().to_owned())
            }
            Some(d) => Database::Sqlite(PathBuf::from(d)),
            None => Database::Sqlite(self.data_dir.join("ecsd.db")),
        }
    }

    /// The SQLite database file (meaningful when [`Config::database`] is
    /// SQLite; with PostgreSQL, the file that would be used otherwise).
    pub fn database_path(&self) -> PathBuf {
        match self.database() {
            Database::Sqlite(p) => p,
            Database::Postgres(_) => self.data_dir.join("ecsd.db"),
        }
    }
}

/// Where the data lives: [`Config::database`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite(PathBuf),
    /// A `postgres://` or `postgresql://` URL.
    Postgres(String),
}

impl std::fmt::Display for Database {
    /// The path, or the URL without its password (for logs).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite(p) => write!(f, "{}", p.display()),
            Database::Postgres(url) => f.write_str(&crate::store::postgres::redact_url(url)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/ecsd.example.toml");
        let cfg = Config::load(Some(&path)).expect("docs/ecsd.example.toml parses");
        assert_eq!(cfg.listen.port(), 8443);
        assert!(cfg.master_key.is_some());
    }

    #[test]
    fn database_is_a_path_or_a_postgres_url() {
        let mut c = Config::default();
        assert_eq!(c.database(), Database::Sqlite(c.data_dir.join("ecsd.db")));
        c.database = Some("/var/lib/ecsd/x.db".into());
        assert_eq!(c.database(), Database::Sqlite("/var/lib/ecsd/x.db".into()));
        for url in [
            "postgres://u:pw@db/ecsd",
            "postgresql://db/ecsd?sslmode=disable",
        ] {
            c.database = Some(url.into());
            assert_eq!(c.database(), Database::Postgres(url.into()));
            assert!(!c.database().to_string().contains("pw"));
        }
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail returns figment::Error
    fn ecsd_database_sets_a_postgres_url() {
        figment::Jail::expect_with(|jail| {
            let url = "postgres://ecsd:secret@127.0.0.1:5432/ecsd?options=-csearch_path%3Dt_1";
            jail.set_env("ECSD_DATABASE", url);
            jail.set_env("ECSD_DATABASE_POOL_SIZE", "4");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.database(), Database::Postgres(url.into()));
            assert_eq!(c.database_pool_size, 4);
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "listne = \"127.0.0.1:1\"\n").unwrap();
        assert!(Config::load(Some(&path)).is_err());
    }
}
