//! The agent's own files in its state directory: the private key, the
//! enrollment record and the journal. All written atomically; on Unix with
//! mode 0600. On Windows a file gets the ACL its directory passes on: the
//! state directory must be one that only Administrators and SYSTEM can read
//! (docs/agent.md, "Windows").

use std::fs::{self, OpenOptions};
use std::io::Write;
#[cfg(unix)]
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// Writes `data` to `path` via a 0600 temporary file (Unix; on Windows the
/// directory's inherited ACL), fsync and rename.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    let mut options = OpenOptions::new();
    options.create_new(true).write(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut f = options.open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    // On Windows this is MoveFileExW with MOVEFILE_REPLACE_EXISTING.
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// Makes a rename in `dir` durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Windows: `File::open` cannot open a directory (that needs
/// `FILE_FLAG_BACKUP_SEMANTICS`) and there is no directory fsync; the
/// rename's durability is left to the NTFS metadata journal.
#[cfg(windows)]
fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

/// What enrollment gave this agent.
#[derive(Serialize, Deserialize)]
pub struct Enrollment {
    pub endpoint: String,
    pub server_id: String,
    pub project_id: String,
    pub os_type: String,
    pub machine_id: String,
    /// The agent's bearer credential.
    #[serde(with = "secret_string")]
    pub credential: SecretString,
    /// PEM of the control plane's CA: after enrollment the agent trusts only
    /// it. `None` only for a plain-HTTP loopback endpoint (tests).
    #[serde(default)]
    pub ca_pem: Option<String>,
    /// Enrolled without a pin: the system's roots are trusted too.
    #[serde(default)]
    pub system_roots: bool,
    /// Base64 Ed25519 key whose signature work items must carry (contract §6).
    /// Empty in a state directory enrolled before signed work existed: such
    /// an agent must enroll again (proving its old key) before it runs.
    #[serde(default)]
    pub work_key: String,
}

mod secret_string {
    use secrecy::{ExposeSecret, SecretString};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(s: &SecretString, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s.expose_secret())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
        String::deserialize(d).map(SecretString::from)
    }
}

/// Crash-safe progress: which boot was processed and which resets were applied.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Journal {
    /// The boot id whose start-up reset check completed.
    pub boot_id: Option<String>,
    /// Recently applied request ids (newest last); a request is applied at most once.
    pub applied: Vec<String>,
    /// An outcome not yet acknowledged by the server: (request id, applied, reason).
    pub unacked: Option<(String, bool, Option<String>)>,
    /// A reset being applied; if the agent dies before recording the outcome,
    /// the next run checks whether the shadow file already holds it.
    #[serde(default)]
    pub applying: Option<String>,
    /// The highest work sequence number of an applied reset: an older (or
    /// replayed) one is refused.
    #[serde(default)]
    pub last_reset_seq: u64,
    /// The highest work sequence number of an accepted power action.
    #[serde(default)]
    pub last_power_seq: u64,
}

/// Paths of an agent's state directory.
#[derive(Debug, Clone)]
pub struct StateDir(pub PathBuf);

impl StateDir {
    pub fn key(&self) -> PathBuf {
        self.0.join("agent.key")
    }
    pub fn enrollment(&self) -> PathBuf {
        self.0.join("agent.json")
    }
    pub fn journal(&self) -> PathBuf {
        self.0.join("journal.json")
    }
    pub fn ca(&self) -> PathBuf {
        self.0.join("ca.pem")
    }

    pub fn load_key(&self) -> anyhow::Result<ecs_seal::PrivateKey> {
        let bytes = zeroize::Zeroizing::new(
            fs::read(self.key()).with_context(|| format!("reading {}", self.key().display()))?,
        );
        ecs_seal::PrivateKey::from_bytes(&bytes).context("the agent key file is invalid")
    }

    pub fn save_key(&self, key: &ecs_seal::PrivateKey) -> anyhow::Result<()> {
        write_private(&self.key(), &key.to_bytes()).context("writing the agent key")
    }

    pub fn load_enrollment(&self) -> anyhow::Result<Option<Enrollment>> {
        match fs::read(self.enrollment()) {
            Ok(b) => Ok(Some(
                serde_json::from_slice(&b).context("agent.json is invalid")?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("reading agent.json"),
        }
    }

    pub fn save_enrollment(&self, e: &Enrollment) -> anyhow::Result<()> {
        let data = zeroize::Zeroizing::new(serde_json::to_vec_pretty(e)?);
        write_private(&self.enrollment(), &data).context("writing agent.json")
    }

    /// Reads the journal. An unreadable journal is an error, never an empty
    /// one: starting afresh would forget which work was applied, and a
    /// replayed older reset would then be accepted (fail closed).
    /// Records a new (endorsed) work-signing key in `agent.json`.
    pub fn save_work_key(&self, key: &str) -> anyhow::Result<()> {
        let mut e = self
            .load_enrollment()?
            .context("this agent is not enrolled")?;
        e.work_key = key.to_owned();
        self.save_enrollment(&e)
    }

    pub fn load_journal(&self) -> anyhow::Result<Journal> {
        match fs::read(self.journal()) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| {
                format!(
                    "{} is corrupt: refusing to run without knowing what was applied \
                     (restore it, or re-enroll this server)",
                    self.journal().display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Journal::default()),
            Err(e) => Err(e).context("reading the journal"),
        }
    }

    pub fn save_journal(&self, j: &Journal) -> anyhow::Result<()> {
        write_private(&self.journal(), &serde_json::to_vec(j)?).context("writing the journal")
    }
}
