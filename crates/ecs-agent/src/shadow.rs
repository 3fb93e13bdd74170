//! Applying a password to `root` in `<root>/etc/shadow` (contract §4, §6).
//!
//! The hash is computed here with the method named by `<root>/etc/login.defs`
//! (`ENCRYPT_METHOD`: YESCRYPT, SHA512 or SHA256; SHA512 when unset). The file
//! is replaced the way shadow-utils does it:
//!
//! - under the lock `lckpwdf()` takes: an `fcntl` write lock on the whole of
//!   `<root>/etc/.pwd.lock` (created mode 0600), waited for at most
//!   [`LOCK_TIMEOUT`] (glibc's 15 s), so `passwd`, `useradd`, `vipw` and
//!   other programs using `lckpwdf()` exclude us and we exclude them;
//! - root's hash is replaced and `lastchg` (the third field) set to today, in
//!   days since 1970-01-01 UTC; every other byte is kept;
//! - a temporary file gets the original's owner, group, mode and extended
//!   attributes (SELinux label, ACLs, `user.*`, ...) before any data is
//!   written; it is fsynced, the previous file is kept as `shadow-` (written
//!   the same way), the temporary file is renamed over `shadow`, and the
//!   directory is fsynced.
//!
//! No shell and no command line ever sees the password.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::RngCore;
use rustix::fs::{FlockOperation, XattrFlags};
use rustix::io::Errno;
use secrecy::{ExposeSecret, SecretString};
use yescrypt::PasswordHasher;
use zeroize::Zeroizing;

/// How long [`replace_hash`] waits for the password-file lock, as glibc's
/// `lckpwdf()` does.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(15);

/// Pause between two tries of a busy password-file lock.
const LOCK_RETRY: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum ShadowError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{} is held by another program (passwd, useradd...) for more than {}",
        .path.display(),
        duration_text(*.waited)
    )]
    LockBusy { path: PathBuf, waited: Duration },
    #[error("{}: cannot give the new file the extended attribute {name}: {source}", .path.display())]
    Xattr {
        path: PathBuf,
        name: String,
        source: std::io::Error,
    },
    #[error("ENCRYPT_METHOD {0} in login.defs is not supported (use YESCRYPT, SHA512 or SHA256)")]
    UnsupportedMethod(String),
    #[error("the shadow file has no entry for {0}")]
    NoEntry(String),
    /// Empty, or holding a field (`:`) or line separator: written into the
    /// file it would change another entry or field.
    #[error("the {0} cannot be written into the shadow file (empty, or contains ':' or a newline)")]
    Unwritable(&'static str),
    #[error("hashing failed: {0}")]
    Hash(String),
}

/// "15 s" for whole seconds, "300 ms" otherwise.
fn duration_text(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ShadowError + '_ {
    move |source| ShadowError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Password hashing methods of `login.defs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Yescrypt,
    Sha512,
    Sha256,
}

/// Reads `ENCRYPT_METHOD` (and `SHA_CRYPT_MIN_ROUNDS`) from `<root>/etc/login.defs`.
pub fn login_defs_method(root: &Path) -> Result<(Method, Option<u32>), ShadowError> {
    let path = root.join("etc/login.defs");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(&path)(e)),
    };
    let mut method = Method::Sha512;
    let mut rounds = None;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("ENCRYPT_METHOD"), Some(m)) => {
                method = match m.to_ascii_uppercase().as_str() {
                    "YESCRYPT" => Method::Yescrypt,
                    "SHA512" => Method::Sha512,
                    "SHA256" => Method::Sha256,
                    other => return Err(ShadowError::UnsupportedMethod(other.to_owned())),
                }
            }
            (Some("SHA_CRYPT_MIN_ROUNDS"), Some(r)) => rounds = r.parse().ok(),
            _ => {}
        }
    }
    Ok((method, rounds))
}

/// Hashes a password in crypt(3) format.
pub fn hash(
    password: &SecretString,
    method: Method,
    rounds: Option<u32>,
) -> Result<Zeroizing<String>, ShadowError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let pw = password.expose_secret().as_bytes();
    let err = |e: yescrypt::password_hash::Error| ShadowError::Hash(e.to_string());
    let out = match method {
        Method::Yescrypt => yescrypt::Yescrypt::default()
            .hash_password_with_salt(pw, &salt)
            .map_err(err)?
            .to_string(),
        Method::Sha512 | Method::Sha256 => {
            let alg = if method == Method::Sha512 {
                sha_crypt::Algorithm::Sha512Crypt
            } else {
                sha_crypt::Algorithm::Sha256Crypt
            };
            let params =
                sha_crypt::Params::new(rounds.unwrap_or(sha_crypt::Params::RECOMMENDED_ROUNDS))
                    .map_err(|e| ShadowError::Hash(e.to_string()))?;
            sha_crypt::ShaCrypt::new(alg, params)
                .hash_password_with_salt(pw, &salt[..12])
                .map_err(err)?
                .to_string()
        }
    };
    Ok(Zeroizing::new(out))
}

/// The password-file lock of `<root>/etc/.pwd.lock`, taken as glibc's
/// `lckpwdf()` takes it. Released when dropped (like `ulckpwdf()`, by
/// closing the file).
///
/// `fcntl` record locks belong to a process: two threads of one process do
/// not exclude each other with them, and closing *any* descriptor of the lock
/// file releases the process's lock. The fleet simulator runs many agents in
/// one process, each with its own root, and a restarted simulated agent may
/// apply while its predecessor's apply still runs on the same root; so an
/// in-process lock per lock file (as glibc also keeps one) is taken first and
/// released last.
#[derive(Debug)]
pub struct PwdLock {
    // Field order is drop order: the file (and with it the fcntl lock) is
    // closed before another thread of this process may open it.
    _file: File,
    _local: LocalLock,
}

/// Lock files held by threads of this process (canonical paths).
static HELD: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static RELEASED: Condvar = Condvar::new();

#[derive(Debug)]
struct LocalLock(PathBuf);

impl LocalLock {
    /// Waits until no other thread of this process holds `key`, until `deadline`.
    fn acquire(key: PathBuf, deadline: Instant) -> Option<LocalLock> {
        let mut held = HELD.lock().unwrap_or_else(PoisonError::into_inner);
        while held.contains(&key) {
            let left = deadline.checked_duration_since(Instant::now())?;
            held = RELEASED
                .wait_timeout(held, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        held.push(key.clone());
        Some(LocalLock(key))
    }
}

impl Drop for LocalLock {
    fn drop(&mut self) {
        let mut held = HELD.lock().unwrap_or_else(PoisonError::into_inner);
        held.retain(|k| *k != self.0);
        RELEASED.notify_all();
    }
}

/// Takes the password-file lock of `<root>/etc` as `lckpwdf()` does: opens
/// (or creates, mode 0600) `.pwd.lock` and sets an `fcntl` write lock on the
/// whole file, trying again every 20 ms while another process holds it, for
/// at most `timeout`.
pub fn lock_pwd(root: &Path, timeout: Duration) -> Result<PwdLock, ShadowError> {
    let etc = root.join("etc");
    let path = etc.join(".pwd.lock");
    let deadline = Instant::now() + timeout;
    let busy = || ShadowError::LockBusy {
        path: path.clone(),
        waited: timeout,
    };
    let key = fs::canonicalize(&etc).map_or_else(|_| path.clone(), |e| e.join(".pwd.lock"));
    let local = LocalLock::acquire(key, deadline).ok_or_else(busy)?;
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io(&path))?;
    let mut logged = false;
    loop {
        match rustix::fs::fcntl_lock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                return Ok(PwdLock {
                    _file: file,
                    _local: local,
                });
            }
            // Another process holds it (POSIX allows either errno).
            Err(Errno::AGAIN | Errno::ACCESS) => {}
            Err(e) => return Err(io(&path)(e.into())),
        }
        lock_busy(&path);
        if !logged {
            tracing::info!(
                lock = %path.display(),
                "the password file is locked by another program; waiting up to {}",
                duration_text(timeout)
            );
            logged = true;
        }
        let left = deadline
            .checked_duration_since(Instant::now())
            .ok_or_else(busy)?;
        std::thread::sleep(LOCK_RETRY.min(left));
    }
}

/// Test hook: called each time the lock was found held by another process.
#[cfg(test)]
fn lock_busy(path: &Path) {
    tests::note_busy(path);
}

#[cfg(not(test))]
fn lock_busy(_path: &Path) {}

/// Replaces `user`'s hash in `<root>/etc/shadow` with `new_hash`, atomically,
/// waiting up to [`LOCK_TIMEOUT`] for the password-file lock.
pub fn replace_hash(root: &Path, user: &str, new_hash: &str) -> Result<(), ShadowError> {
    replace_hash_within(root, user, new_hash, LOCK_TIMEOUT)
}

/// [`replace_hash`] waiting at most `lock_timeout` for the password-file lock.
/// Also sets `user`'s `lastchg` to today.
pub fn replace_hash_within(
    root: &Path,
    user: &str,
    new_hash: &str,
    lock_timeout: Duration,
) -> Result<(), ShadowError> {
    let etc = root.join("etc");
    let shadow = etc.join("shadow");
    let lock = lock_pwd(root, lock_timeout)?;

    // One descriptor for the data, the metadata and the extended attributes:
    // all three describe the same file.
    let mut original = File::open(&shadow).map_err(io(&shadow))?;
    let meta = original.metadata().map_err(io(&shadow))?;
    // Sized up front (read_to_end probes for the end without growing a full
    // buffer): a growing vector would leave copies of the hashes behind.
    let mut old = Zeroizing::new(Vec::with_capacity(meta.len() as usize));
    original.read_to_end(&mut old).map_err(io(&shadow))?;
    let today = days_since_epoch(SystemTime::now());
    let new = Zeroizing::new(splice(&old, user, new_hash, today)?);

    let like = Like {
        file: &original,
        meta: &meta,
        selinux: selinux_enabled(),
    };
    // Keep the previous file as shadow- (itself written atomically).
    write_atomically(&etc, "shadow-", &old, &like)?;
    crash_point(3);
    write_atomically(&etc, "shadow", &new, &like)?;
    crash_point(6);
    drop(lock);
    Ok(())
}

/// Whole days since 1970-01-01 UTC (0 for a clock set before it).
fn days_since_epoch(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400)
}

/// Test hook: simulates a crash (the process stops; nothing after runs) at a
/// numbered step of an update. Compiled into tests only.
#[cfg(test)]
fn crash_point(step: usize) {
    if tests::CRASH_AT.with(|c| c.get()) == step {
        panic!("simulated crash at step {step}");
    }
}

#[cfg(not(test))]
fn crash_point(_step: usize) {}

/// Where the field starting at `s[0]` ends: the next `:`, newline or the end.
fn field_end(s: &[u8]) -> usize {
    s.iter()
        .position(|&b| b == b':' || b == b'\n')
        .unwrap_or(s.len())
}

/// The shadow file with `user`'s second field replaced by `new_hash` and its
/// third (`lastchg`) by `today`; `None` if no entry. Like `passwd`, day 0
/// (a clock at 1970-01-01) leaves `lastchg` empty, since 0 would mean "must
/// change the password at the next login". A line with no third field gets
/// none. A user name or hash that is empty or holds `:` or a newline is
/// refused: it would edit another entry or split this one.
fn splice(old: &[u8], user: &str, new_hash: &str, today: u64) -> Result<Vec<u8>, ShadowError> {
    let unwritable = |s: &str| s.is_empty() || s.contains([':', '\n']);
    if unwritable(user) {
        return Err(ShadowError::Unwritable("user name"));
    }
    if unwritable(new_hash) {
        return Err(ShadowError::Unwritable("password hash"));
    }
    let prefix = format!("{user}:");
    let mut out = Vec::with_capacity(old.len() + new_hash.len() + 8);
    let mut found = false;
    for line in old.split_inclusive(|&b| b == b'\n') {
        if !found && line.starts_with(prefix.as_bytes()) {
            let rest = &line[prefix.len()..];
            let rest = &rest[field_end(rest)..];
            out.extend_from_slice(prefix.as_bytes());
            out.extend_from_slice(new_hash.as_bytes());
            match rest.strip_prefix(b":") {
                Some(lastchg) => {
                    out.push(b':');
                    if today > 0 {
                        out.extend_from_slice(today.to_string().as_bytes());
                    }
                    out.extend_from_slice(&lastchg[field_end(lastchg)..]);
                }
                None => out.extend_from_slice(rest),
            }
            found = true;
        } else {
            out.extend_from_slice(line);
        }
    }
    if found {
        Ok(out)
    } else {
        Err(ShadowError::NoEntry(user.to_owned()))
    }
}

/// [`splice`] for the fuzz target (`fuzz/`, feature `fuzzing`).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub fn fuzz_splice(old: &[u8], user: &str, new_hash: &str, today: u64) -> Option<Vec<u8>> {
    splice(old, user, new_hash, today).ok()
}

/// The file whose owner, mode and extended attributes a new one gets.
struct Like<'a> {
    file: &'a File,
    meta: &'a fs::Metadata,
    /// SELinux is enabled on this kernel (see [`xattr_rule`]).
    selinux: bool,
}

/// True if the running kernel has SELinux enabled (its file system is
/// mounted, as libselinux's `is_selinux_enabled()` checks).
fn selinux_enabled() -> bool {
    Path::new("/sys/fs/selinux/enforce").exists()
}

/// Writes `dir/name` via a temporary file given the owner, mode and extended
/// attributes of `like` before any data, then fsync, rename, fsync of the
/// directory.
fn write_atomically(dir: &Path, name: &str, data: &[u8], like: &Like) -> Result<(), ShadowError> {
    let meta = like.meta;
    // One fixed name: the password-file lock makes us the only writer, and a
    // temporary file left by a crash is simply replaced.
    let tmp = dir.join(format!(".{name}.ecs-agent.tmp"));
    let target = dir.join(name);
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    let base = if name == "shadow" { 3 } else { 0 };
    let result = (|| {
        // Owner first (a chown clears set-id bits and file capabilities),
        // then the extended attributes (ACLs among them), then the mode.
        std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid())).map_err(io(&target))?;
        copy_xattrs(like.file, &f, &target, like.selinux)?;
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(
            meta.mode() & 0o7777,
        ))
        .map_err(io(&target))?;
        let (first, rest) = data.split_at(data.len() / 2);
        f.write_all(first).map_err(io(&target))?;
        crash_point(base + 1);
        f.write_all(rest).map_err(io(&target))?;
        f.sync_all().map_err(io(&target))?;
        crash_point(base + 2);
        fs::rename(&tmp, &target).map_err(io(&target))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&target))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// How an extended attribute of the original file is carried over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum XattrRule {
    /// Copied; the apply fails if it cannot be.
    Required,
    /// Copied if permitted; otherwise a warning.
    BestEffort,
    /// Never copied nor removed.
    Skip,
}

/// The rule for attribute `name`; `selinux`: SELinux is enabled.
fn xattr_rule(name: &[u8], selinux: bool) -> XattrRule {
    match name {
        // IMA and EVM describe the old content; the kernel computes them for
        // the new file when it has to, and a copy would be wrong.
        b"security.ima" | b"security.evm" => XattrRule::Skip,
        // Under SELinux, dropping the label could lock out every login (or
        // widen who can read the hashes): better fail and keep the old file.
        // With SELinux disabled the label is inert (enabling SELinux again
        // needs a relabel anyway) and setting it needs CAP_SYS_ADMIN, which
        // the agent's unit does not grant: then it is copied if permitted.
        b"security.selinux" if selinux => XattrRule::Required,
        // Other LSM or capability attributes may need privileges we lack.
        n if n.starts_with(b"security.") => XattrRule::BestEffort,
        // ACLs (system.posix_acl_*), user.*, and trusted.* (listed only
        // with CAP_SYS_ADMIN, which then also permits setting them).
        _ => XattrRule::Required,
    }
}

/// Gives `dst` the extended attributes of `src`: each one `src` has (see
/// [`xattr_rule`]), and none it has not (e.g. an ACL inherited from a default
/// ACL of the directory). A file system without extended attributes has
/// nothing to copy.
fn copy_xattrs(src: &File, dst: &File, target: &Path, selinux: bool) -> Result<(), ShadowError> {
    let fail = |name: &[u8], e: Errno| ShadowError::Xattr {
        path: target.to_owned(),
        name: String::from_utf8_lossy(name).into_owned(),
        source: e.into(),
    };
    let list_err = |e: Errno| io(target)(e.into());
    let names = xattr_names(src).map_err(list_err)?;
    for name in &names {
        let rule = xattr_rule(name, selinux);
        if rule == XattrRule::Skip {
            continue;
        }
        let value = xattr_value(src, name).map_err(|e| fail(name, e))?;
        // Already there (a label the policy gave the new file): nothing to do.
        if xattr_value(dst, name).is_ok_and(|v| v == value) {
            continue;
        }
        if let Err(e) = rustix::fs::fsetxattr(dst, name.as_slice(), &value, XattrFlags::empty()) {
            if rule == XattrRule::Required {
                return Err(fail(name, e));
            }
            tracing::warn!(
                xattr = %String::from_utf8_lossy(name),
                error = %e,
                "extended attribute of the shadow file not copied"
            );
        }
    }
    for name in xattr_names(dst).map_err(list_err)? {
        let rule = xattr_rule(&name, selinux);
        if names.contains(&name) || rule == XattrRule::Skip {
            continue;
        }
        if let Err(e) = rustix::fs::fremovexattr(dst, name.as_slice()) {
            if rule == XattrRule::Required {
                return Err(fail(&name, e));
            }
            tracing::warn!(
                xattr = %String::from_utf8_lossy(&name),
                error = %e,
                "extended attribute of the new shadow file not removed"
            );
        }
    }
    Ok(())
}

/// The names of `f`'s extended attributes; none on a file system without them.
fn xattr_names(f: &File) -> Result<Vec<Vec<u8>>, Errno> {
    let size = match rustix::fs::flistxattr_query(f) {
        Err(Errno::NOTSUP) => return Ok(Vec::new()),
        r => r?,
    };
    let mut buf = vec![0u8; size];
    let len = rustix::fs::flistxattr(f, &mut buf[..])?;
    Ok(buf[..len]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

/// The value of `f`'s extended attribute `name`.
fn xattr_value(f: &File, name: &[u8]) -> Result<Vec<u8>, Errno> {
    let size = rustix::fs::fgetxattr_query(f, name)?;
    let mut buf = vec![0u8; size];
    let len = rustix::fs::fgetxattr(f, name, &mut buf[..])?;
    buf.truncate(len);
    Ok(buf)
}

/// True if `user`'s current hash in `<root>/etc/shadow` verifies `password`
/// (used after a crash to tell whether an interrupted apply completed).
pub fn verifies(root: &Path, user: &str, password: &SecretString) -> Result<bool, ShadowError> {
    use yescrypt::PasswordVerifier;
    let path = root.join("etc/shadow");
    let text = Zeroizing::new(fs::read_to_string(&path).map_err(io(&path))?);
    let prefix = format!("{user}:");
    let Some(hash) = text
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(':').next())
    else {
        return Err(ShadowError::NoEntry(user.to_owned()));
    };
    let pw = password.expose_secret().as_bytes();
    Ok(if hash.starts_with("$y$") {
        yescrypt::Yescrypt::default()
            .verify_password(pw, hash)
            .is_ok()
    } else if hash.starts_with("$6$") || hash.starts_with("$5$") {
        sha_crypt::ShaCrypt::default()
            .verify_password(pw, hash)
            .is_ok()
    } else {
        false
    })
}

/// Hashes `password` as `login.defs` says and sets it for `user`.
pub fn apply(root: &Path, user: &str, password: &SecretString) -> Result<(), ShadowError> {
    let (method, rounds) = login_defs_method(root)?;
    let h = hash(password, method, rounds)?;
    replace_hash(root, user, &h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::process::{Child, ChildStdin, Command, Stdio};
    use std::sync::mpsc;
    use yescrypt::PasswordVerifier;

    thread_local! {
        pub static CRASH_AT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// How often each lock file was found held by another process.
    static BUSY: Mutex<Vec<(PathBuf, usize)>> = Mutex::new(Vec::new());

    pub fn note_busy(path: &Path) {
        let mut busy = BUSY.lock().unwrap_or_else(PoisonError::into_inner);
        match busy.iter_mut().find(|(p, _)| p == path) {
            Some((_, n)) => *n += 1,
            None => busy.push((path.to_owned(), 1)),
        }
    }

    fn busy_count(path: &Path) -> usize {
        let busy = BUSY.lock().unwrap_or_else(PoisonError::into_inner);
        busy.iter().find(|(p, _)| p == path).map_or(0, |(_, n)| *n)
    }

    const SHADOW: &str = "root:$6$old$oldhash:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\nnobody:!:19000::::::\n";
    const NEW_HASH: &str = "$6$newsalt$newhash";

    fn rootfs(defs: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("etc")).unwrap();
        fs::write(d.path().join("etc/shadow"), SHADOW).unwrap();
        fs::set_permissions(
            d.path().join("etc/shadow"),
            std::os::unix::fs::PermissionsExt::from_mode(0o640),
        )
        .unwrap();
        fs::write(d.path().join("etc/login.defs"), defs).unwrap();
        d
    }

    fn pw(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    fn today() -> u64 {
        days_since_epoch(SystemTime::now())
    }

    /// Another process holding (or trying) the lock with Python's
    /// `fcntl.lockf`, i.e. a POSIX record lock like `lckpwdf()`'s.
    struct Python {
        child: Child,
        stdin: Option<ChildStdin>,
        stdout: BufReader<std::process::ChildStdout>,
    }

    impl Python {
        /// Runs `script` with `path` as `sys.argv[1]`.
        fn run(script: &str, path: &Path) -> Python {
            let mut child = Command::new("python3")
                .arg("-c")
                .arg(script)
                .arg(path)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("python3 is needed by the password-file lock tests");
            let stdin = child.stdin.take();
            let stdout = BufReader::new(child.stdout.take().unwrap());
            Python {
                child,
                stdin,
                stdout,
            }
        }

        /// Takes an exclusive lock on `path` (waiting for it), says
        /// "holding", and keeps it until its standard input closes.
        fn hold(path: &Path) -> Python {
            let mut p = Python::run(
                "import fcntl, sys\n\
                 f = open(sys.argv[1], 'a')\n\
                 fcntl.lockf(f, fcntl.LOCK_EX)\n\
                 print('holding', flush=True)\n\
                 sys.stdin.read()\n",
                path,
            );
            assert_eq!(p.line(), "holding");
            p
        }

        fn line(&mut self) -> String {
            let mut l = String::new();
            self.stdout.read_line(&mut l).unwrap();
            l.trim_end().to_owned()
        }

        /// Closes its standard input and waits until it has exited (and so
        /// released its lock).
        fn finish(mut self) {
            drop(self.stdin.take());
            assert!(self.child.wait().unwrap().success());
        }
    }

    impl Drop for Python {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// True once `cond` holds, false if it does not within `limit`.
    fn eventually(limit: Duration, cond: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        cond()
    }

    /// Found by fuzzing (fuzz/fuzz_targets/shadow_splice.rs): a hash (or user
    /// name) holding `:` or a newline was written as is, adding lines or
    /// shifting fields; an empty name edited a line starting with `:`.
    #[test]
    fn splice_refuses_unwritable_names_and_hashes() {
        let s = b"root:old:1::::::\n:x:2::::::\n";
        for (user, hash, what) in [
            ("root", "a\nevil::0:99999:7:::", "password hash"),
            ("root", "$6$x$y:0", "password hash"),
            ("root", "", "password hash"),
            ("", "h", "user name"),
            ("root:old", "h", "user name"),
            ("root\nx", "h", "user name"),
        ] {
            match splice(s, user, hash, 5) {
                Err(ShadowError::Unwritable(w)) => assert_eq!(w, what, "{user:?} {hash:?}"),
                other => panic!("{user:?} {hash:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn splice_changes_only_the_hash_and_lastchg_fields() {
        let out = splice(SHADOW.as_bytes(), "root", "$6$x$y", 20123).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            SHADOW.replacen("$6$old$oldhash:19000:", "$6$x$y:20123:", 1)
        );
        assert!(matches!(
            splice(SHADOW.as_bytes(), "admin", "x", 20123),
            Err(ShadowError::NoEntry(_))
        ));
        // A user whose name starts with "root" is not root; only the first
        // entry of a user changes.
        let s = "rootless:x:1::::::\nroot:old:2::::::\nroot:dup:3::::::";
        assert_eq!(
            String::from_utf8(splice(s.as_bytes(), "root", "new", 7).unwrap()).unwrap(),
            "rootless:x:1::::::\nroot:new:7::::::\nroot:dup:3::::::"
        );
        // An empty lastchg gets today; no final newline stays so.
        assert_eq!(
            splice(b"root:*::0:99999:7:::", "root", "h", 20000).unwrap(),
            b"root:h:20000:0:99999:7:::"
        );
        // Day 0 would mean "change at next login": lastchg is left empty.
        assert_eq!(
            splice(b"root:*:19000:0:::::\n", "root", "h", 0).unwrap(),
            b"root:h::0:::::\n"
        );
        // Lines with only two fields (or one) get no third.
        assert_eq!(
            splice(b"root:old\nx:y\n", "root", "h", 5).unwrap(),
            b"root:h\nx:y\n"
        );
        assert_eq!(splice(b"root:", "root", "h", 5).unwrap(), b"root:h");
    }

    #[test]
    fn days_since_epoch_counts_whole_utc_days() {
        let day =
            |d: u64, s: u64| days_since_epoch(UNIX_EPOCH + Duration::from_secs(d * 86_400 + s));
        assert_eq!(day(20_000, 0), 20_000);
        assert_eq!(day(20_000, 86_399), 20_000);
        assert_eq!(day(20_001, 0), 20_001);
        assert_eq!(days_since_epoch(UNIX_EPOCH - Duration::from_secs(5)), 0);
        // Today is after 2024-01-01 (day 19723).
        assert!(today() > 19_723);
    }

    #[test]
    fn apply_sha512_verifies_and_keeps_mode_and_backup() {
        let d = rootfs("# comment\nENCRYPT_METHOD SHA512\n");
        apply(d.path(), "root", &pw("Gx7!pLq2vR")).unwrap();
        let text = fs::read_to_string(d.path().join("etc/shadow")).unwrap();
        let line = text.lines().next().unwrap();
        let h = line.split(':').nth(1).unwrap();
        assert!(h.starts_with("$6$"), "{h}");
        sha_crypt::ShaCrypt::default()
            .verify_password(b"Gx7!pLq2vR", h)
            .unwrap();
        assert!(
            sha_crypt::ShaCrypt::default()
                .verify_password(b"wrong", h)
                .is_err()
        );
        assert_eq!(
            text.lines().skip(1).collect::<Vec<_>>(),
            SHADOW.lines().skip(1).collect::<Vec<_>>()
        );
        assert_eq!(
            fs::read_to_string(d.path().join("etc/shadow-")).unwrap(),
            SHADOW
        );
        let mode = fs::metadata(d.path().join("etc/shadow")).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o640);
        // The lock file is created as lckpwdf() creates it.
        let lock = fs::metadata(d.path().join("etc/.pwd.lock")).unwrap();
        assert_eq!(lock.mode() & 0o7777, 0o600);
    }

    #[test]
    fn apply_sets_lastchg_to_today_and_keeps_every_other_byte() {
        let d = rootfs("ENCRYPT_METHOD SHA512\n");
        let before = today();
        replace_hash(d.path(), "root", NEW_HASH).unwrap();
        let after = today();
        let text = fs::read_to_string(d.path().join("etc/shadow")).unwrap();
        let expected =
            |day: u64| SHADOW.replacen("$6$old$oldhash:19000:", &format!("{NEW_HASH}:{day}:"), 1);
        // (A run across midnight UTC may see either day.)
        assert!(
            text == expected(before) || text == expected(after),
            "{text}"
        );
        assert_eq!(
            fs::read_to_string(d.path().join("etc/shadow-")).unwrap(),
            SHADOW
        );
    }

    #[test]
    fn apply_yescrypt_and_sha256() {
        let d = rootfs("ENCRYPT_METHOD YESCRYPT\n");
        apply(d.path(), "root", &pw("Gx7!pLq2vR")).unwrap();
        let text = fs::read_to_string(d.path().join("etc/shadow")).unwrap();
        assert!(text.starts_with("root:$y$"), "{text}");
        let d = rootfs("ENCRYPT_METHOD SHA256\nSHA_CRYPT_MIN_ROUNDS 6000\n");
        apply(d.path(), "root", &pw("Gx7!pLq2vR")).unwrap();
        let text = fs::read_to_string(d.path().join("etc/shadow")).unwrap();
        assert!(text.starts_with("root:$5$rounds=6000$"), "{text}");
    }

    #[test]
    fn login_defs_missing_or_silent_means_sha512_with_default_rounds() {
        let d = rootfs("");
        assert_eq!(login_defs_method(d.path()).unwrap(), (Method::Sha512, None));
        fs::remove_file(d.path().join("etc/login.defs")).unwrap();
        assert_eq!(login_defs_method(d.path()).unwrap(), (Method::Sha512, None));
        apply(d.path(), "root", &pw("Gx7!pLq2vR")).unwrap();
        let text = fs::read_to_string(d.path().join("etc/shadow")).unwrap();
        // sha-crypt's recommended rounds (5000, as glibc's default).
        let prefix = format!("root:$6$rounds={}$", sha_crypt::Params::RECOMMENDED_ROUNDS);
        assert!(text.starts_with(&prefix), "{text}");
        assert!(verifies(d.path(), "root", &pw("Gx7!pLq2vR")).unwrap());
    }

    #[test]
    fn login_defs_keywords_and_values() {
        let d = rootfs(
            "# ENCRYPT_METHOD YESCRYPT\n  encrypt_method sha256\nENCRYPT_METHOD yescrypt\n\
             SHA_CRYPT_MIN_ROUNDS many\nSHA_CRYPT_MAX_ROUNDS 9000\n",
        );
        // Keywords are case-sensitive, values are not; the last one wins; an
        // unparsable rounds value is ignored.
        assert_eq!(
            login_defs_method(d.path()).unwrap(),
            (Method::Yescrypt, None)
        );
        fs::write(
            d.path().join("etc/login.defs"),
            "ENCRYPT_METHOD Sha256\nSHA_CRYPT_MIN_ROUNDS 7000\n",
        )
        .unwrap();
        assert_eq!(
            login_defs_method(d.path()).unwrap(),
            (Method::Sha256, Some(7000))
        );
        // A login.defs that cannot be read (here: a directory) is an error,
        // not "unset".
        fs::remove_file(d.path().join("etc/login.defs")).unwrap();
        fs::create_dir(d.path().join("etc/login.defs")).unwrap();
        assert!(matches!(
            login_defs_method(d.path()),
            Err(ShadowError::Io { .. })
        ));
    }

    #[test]
    fn hash_rounds_and_salt() {
        let p = pw("Gx7!pLq2vR");
        let h = hash(&p, Method::Sha512, Some(5001)).unwrap();
        assert!(h.starts_with("$6$rounds=5001$"), "{}", h.as_str());
        let h2 = hash(&p, Method::Sha512, Some(5001)).unwrap();
        assert_ne!(*h, *h2, "a fresh salt each time");
        assert!(matches!(
            hash(&p, Method::Sha512, Some(1)),
            Err(ShadowError::Hash(_))
        ));
    }

    #[test]
    fn a_missing_entry_or_shadow_is_an_error_and_changes_nothing() {
        let d = rootfs("");
        assert!(matches!(
            replace_hash(d.path(), "admin", NEW_HASH),
            Err(ShadowError::NoEntry(u)) if u == "admin"
        ));
        assert_eq!(
            fs::read_to_string(d.path().join("etc/shadow")).unwrap(),
            SHADOW
        );
        assert!(!d.path().join("etc/shadow-").exists());
        fs::remove_file(d.path().join("etc/shadow")).unwrap();
        assert!(matches!(
            replace_hash(d.path(), "root", NEW_HASH),
            Err(ShadowError::Io { .. })
        ));
        let e = tempfile::tempdir().unwrap();
        // No etc at all: the lock file cannot be created.
        assert!(matches!(
            replace_hash(e.path(), "root", NEW_HASH),
            Err(ShadowError::Io { path, .. }) if path.ends_with("etc/.pwd.lock")
        ));
    }

    /// How much longer the shadow file gets with a password: the SHA-512
    /// hash ("$6$rounds=5000$" + 16 salt + "$" + 86) replaces the old one and
    /// lastchg keeps its five digits.
    const NEW_LEN: usize = 15 + 16 + 1 + 86 - "$6$old$oldhash".len();

    #[test]
    fn a_crash_at_any_step_leaves_shadow_old_or_new_and_a_retry_completes() {
        // Steps: 1 half of shadow- written, 2 shadow- synced, 3 shadow- renamed,
        // 4 half of shadow written, 5 shadow synced, 6 shadow renamed.
        for step in 1..=6 {
            let d = rootfs("ENCRYPT_METHOD SHA512\n");
            CRASH_AT.with(|c| c.set(step));
            let crashed = std::panic::catch_unwind(|| apply(d.path(), "root", &pw("Gx7!pLq2vR")));
            CRASH_AT.with(|c| c.set(0));
            assert!(crashed.is_err(), "step {step} did not crash");
            let text = fs::read_to_string(d.path().join("etc/shadow")).unwrap();
            let root_hash = text
                .lines()
                .next()
                .unwrap()
                .split(':')
                .nth(1)
                .unwrap()
                .to_owned();
            // A crash in the middle of a write leaves half a temporary file.
            let torn = match step {
                1 => Some((".shadow-.ecs-agent.tmp", SHADOW.len())),
                4 => Some((".shadow.ecs-agent.tmp", SHADOW.len() + NEW_LEN)),
                _ => None,
            };
            if let Some((tmp, full)) = torn {
                let len = fs::metadata(d.path().join("etc").join(tmp)).unwrap().len();
                assert_eq!(len as usize, full / 2, "step {step}");
            }
            if step < 6 {
                assert_eq!(
                    text, SHADOW,
                    "step {step}: shadow must still be the old file"
                );
            } else {
                sha_crypt::ShaCrypt::default()
                    .verify_password(b"Gx7!pLq2vR", root_hash.as_str())
                    .unwrap();
                assert_eq!(text.lines().count(), 3);
            }
            // The lock was released by the crash; the retry completes at once.
            let started = Instant::now();
            replace_hash_within(d.path(), "root", NEW_HASH, Duration::ZERO).unwrap();
            assert!(started.elapsed() < Duration::from_secs(5));
            let text = fs::read_to_string(d.path().join("etc/shadow")).unwrap();
            assert!(text.starts_with(&format!("root:{NEW_HASH}:")), "{text}");
            assert_eq!(
                text.lines().skip(1).collect::<Vec<_>>(),
                SHADOW.lines().skip(1).collect::<Vec<_>>()
            );
            // No temporary file is left behind.
            let mut names: Vec<_> = fs::read_dir(d.path().join("etc"))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            assert_eq!(names, [".pwd.lock", "login.defs", "shadow", "shadow-"]);
        }
    }

    #[test]
    fn verifies_tells_whether_the_password_is_in_place() {
        let d = rootfs("ENCRYPT_METHOD YESCRYPT\n");
        assert!(!verifies(d.path(), "root", &pw("Gx7!pLq2vR")).unwrap());
        apply(d.path(), "root", &pw("Gx7!pLq2vR")).unwrap();
        assert!(verifies(d.path(), "root", &pw("Gx7!pLq2vR")).unwrap());
        assert!(!verifies(d.path(), "root", &pw("Hy8@qMr3wS")).unwrap());
        assert!(verifies(d.path(), "nobody", &pw("x")).is_ok_and(|v| !v));
        assert!(matches!(
            verifies(d.path(), "admin", &pw("x")),
            Err(ShadowError::NoEntry(_))
        ));
        let d = rootfs("ENCRYPT_METHOD SHA256\n");
        apply(d.path(), "root", &pw("Gx7!pLq2vR")).unwrap();
        assert!(verifies(d.path(), "root", &pw("Gx7!pLq2vR")).unwrap());
        assert!(!verifies(d.path(), "root", &pw("Hy8@qMr3wS")).unwrap());
        fs::remove_file(d.path().join("etc/shadow")).unwrap();
        assert!(matches!(
            verifies(d.path(), "root", &pw("x")),
            Err(ShadowError::Io { .. })
        ));
    }

    #[test]
    fn unsupported_method_is_an_error_and_changes_nothing() {
        let d = rootfs("ENCRYPT_METHOD MD5\n");
        assert!(matches!(
            apply(d.path(), "root", &pw("Gx7!pLq2vR")),
            Err(ShadowError::UnsupportedMethod(m)) if m == "MD5"
        ));
        assert_eq!(
            fs::read_to_string(d.path().join("etc/shadow")).unwrap(),
            SHADOW
        );
    }

    // ----- the password-file lock -----

    #[test]
    fn apply_waits_for_a_real_fcntl_lock_held_by_another_process() {
        let d = rootfs("ENCRYPT_METHOD SHA512\n");
        let lock = d.path().join("etc/.pwd.lock");
        let shadow = d.path().join("etc/shadow");
        let holder = Python::hold(&lock);

        let (tx, rx) = mpsc::channel();
        let root = d.path().to_owned();
        let apply = std::thread::spawn(move || {
            let r = replace_hash_within(&root, "root", NEW_HASH, Duration::from_secs(20));
            tx.send((r.map_err(|e| e.to_string()), Instant::now()))
                .unwrap();
        });
        // The apply has started and found the lock held (not merely "not
        // started yet")...
        assert!(
            eventually(Duration::from_secs(20), || busy_count(&lock) > 0),
            "the apply never tried the lock"
        );
        let tries = busy_count(&lock);
        // ...and stays blocked, trying again, while the other process holds it.
        assert!(
            rx.recv_timeout(Duration::from_millis(500)).is_err(),
            "the apply went ahead while another process held the lock"
        );
        assert!(busy_count(&lock) > tries, "the apply stopped trying");
        assert_eq!(fs::read_to_string(&shadow).unwrap(), SHADOW);
        assert!(!d.path().join("etc/shadow-").exists());

        let released = Instant::now();
        holder.finish();
        let (result, done) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the apply did not complete after the lock was released");
        result.unwrap();
        apply.join().unwrap();
        assert!(done > released);
        let text = fs::read_to_string(&shadow).unwrap();
        assert!(text.starts_with(&format!("root:{NEW_HASH}:")), "{text}");
    }

    #[test]
    fn a_lock_never_released_times_out_and_changes_nothing() {
        let d = rootfs("ENCRYPT_METHOD SHA512\n");
        let lock = d.path().join("etc/.pwd.lock");
        let holder = Python::hold(&lock);
        let log = LogBuf::default();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(log.clone())
            .finish();
        let started = Instant::now();
        let err = tracing::subscriber::with_default(subscriber, || {
            replace_hash_within(d.path(), "root", NEW_HASH, Duration::from_millis(300))
        })
        .unwrap_err();
        let waited = started.elapsed();
        // The wait is logged once, not at every try.
        let log = log.text();
        assert_eq!(
            log.matches("the password file is locked by another program; waiting up to 300 ms")
                .count(),
            1,
            "{log}"
        );
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        assert!(waited < Duration::from_secs(10), "{waited:?}");
        assert!(
            matches!(&err, ShadowError::LockBusy { path, waited } if *path == lock && *waited == Duration::from_millis(300)),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "{} is held by another program (passwd, useradd...) for more than 300 ms",
                lock.display()
            )
        );
        assert!(busy_count(&lock) > 1, "tried more than once");
        assert_eq!(
            fs::read_to_string(d.path().join("etc/shadow")).unwrap(),
            SHADOW
        );
        assert!(!d.path().join("etc/shadow-").exists());
        drop(holder);
    }

    /// A log writer for one test.
    #[derive(Clone, Default)]
    struct LogBuf(std::sync::Arc<Mutex<Vec<u8>>>);

    impl LogBuf {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    impl Write for LogBuf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuf {
        type Writer = LogBuf;
        fn make_writer(&'a self) -> LogBuf {
            self.clone()
        }
    }

    #[test]
    fn the_lock_error_names_the_default_timeout() {
        assert_eq!(LOCK_TIMEOUT, Duration::from_secs(15));
        let e = ShadowError::LockBusy {
            path: PathBuf::from("/etc/.pwd.lock"),
            waited: LOCK_TIMEOUT,
        };
        assert_eq!(
            e.to_string(),
            "/etc/.pwd.lock is held by another program (passwd, useradd...) for more than 15 s"
        );
        assert_eq!(duration_text(Duration::from_millis(1500)), "1500 ms");
    }

    #[test]
    fn our_lock_is_an_fcntl_lock_other_processes_see_until_it_is_dropped() {
        // flock(2) and fcntl(2) locks do not see each other on Linux, so this
        // fails with the former.
        let d = rootfs("");
        let lock_path = d.path().join("etc/.pwd.lock");
        let try_lock = "import fcntl, sys\n\
                        f = open(sys.argv[1], 'a')\n\
                        try:\n    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n    print('free')\n\
                        except OSError:\n    print('busy')\n";
        let lock = lock_pwd(d.path(), Duration::ZERO).unwrap();
        assert_eq!(Python::run(try_lock, &lock_path).line(), "busy");
        drop(lock);
        assert_eq!(Python::run(try_lock, &lock_path).line(), "free");
    }

    #[test]
    fn threads_of_one_process_exclude_each_other_too() {
        let d = rootfs("");
        let held = lock_pwd(d.path(), Duration::ZERO).unwrap();
        // The same lock file under another spelling of the root.
        let other = d.path().join("etc/..");
        let started = Instant::now();
        let t = std::thread::spawn(move || {
            replace_hash_within(&other, "root", NEW_HASH, Duration::from_millis(200))
        });
        assert!(matches!(
            t.join().unwrap(),
            Err(ShadowError::LockBusy { .. })
        ));
        assert!(started.elapsed() >= Duration::from_millis(200));
        // A waiting thread goes ahead as soon as the holder lets go.
        let root = d.path().to_owned();
        let t = std::thread::spawn(move || {
            replace_hash_within(&root, "root", NEW_HASH, Duration::from_secs(20))
        });
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            fs::read_to_string(d.path().join("etc/shadow")).unwrap(),
            SHADOW
        );
        drop(held);
        t.join().unwrap().unwrap();
        assert!(
            fs::read_to_string(d.path().join("etc/shadow"))
                .unwrap()
                .starts_with(&format!("root:{NEW_HASH}:"))
        );
        // Another root is another lock: no waiting.
        let e = rootfs("");
        let _held = lock_pwd(d.path(), Duration::ZERO).unwrap();
        replace_hash_within(e.path(), "root", NEW_HASH, Duration::ZERO).unwrap();
    }

    // ----- owner, mode and extended attributes -----

    fn xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
        let f = File::open(path).unwrap();
        let mut out: Vec<_> = xattr_names(&f)
            .unwrap()
            .into_iter()
            .map(|n| {
                let v = xattr_value(&f, &n).unwrap();
                (String::from_utf8(n).unwrap(), v)
            })
            .collect();
        out.sort();
        out
    }

    /// A POSIX ACL in the kernel's xattr format: (tag, perm, id) entries.
    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = 2u32.to_le_bytes().to_vec();
        for &(tag, perm, id) in entries {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }
    const ACL_USER_OBJ: u16 = 0x01;
    const ACL_USER: u16 = 0x02;
    const ACL_GROUP_OBJ: u16 = 0x04;
    const ACL_MASK: u16 = 0x10;
    const ACL_OTHER: u16 = 0x20;
    const NO_ID: u32 = u32::MAX;

    /// Sets `name` on `path`, or says why the file system will not.
    fn try_set(path: &Path, name: &str, value: &[u8]) -> bool {
        match rustix::fs::setxattr(path, name, value, XattrFlags::empty()) {
            Ok(()) => true,
            Err(e) => {
                eprintln!(
                    "note: {name} not tested: cannot set it on {}: {e}",
                    path.display()
                );
                false
            }
        }
    }

    #[test]
    fn owner_mode_and_extended_attributes_are_kept() {
        let d = rootfs("");
        let shadow = d.path().join("etc/shadow");
        if !try_set(&shadow, "user.ecs-test", b"kept\0\x01") {
            eprintln!("skipped: the temporary directory's file system has no user xattrs");
            return;
        }
        // As root (CI, the agent's real case) the file gets another owner and
        // the privileged namespaces too.
        let privileged = std::os::unix::fs::chown(&shadow, Some(1234), Some(42)).is_ok();
        if privileged {
            try_set(&shadow, "trusted.ecs-test", b"t");
            try_set(
                &shadow,
                "security.selinux",
                b"system_u:object_r:shadow_t:s0\0",
            );
        } else {
            eprintln!("note: not root: owner, trusted.* and security.selinux not tested");
        }
        // An access ACL, consistent with mode 0640: user 1234 may read.
        try_set(
            &shadow,
            "system.posix_acl_access",
            &acl(&[
                (ACL_USER_OBJ, 6, NO_ID),
                (ACL_USER, 4, 1234),
                (ACL_GROUP_OBJ, 4, NO_ID),
                (ACL_MASK, 4, NO_ID),
                (ACL_OTHER, 0, NO_ID),
            ]),
        );
        fs::set_permissions(&shadow, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
        let before = fs::metadata(&shadow).unwrap();
        let attrs = xattrs(&shadow);
        assert!(attrs.iter().any(|(n, _)| n == "user.ecs-test"), "{attrs:?}");

        replace_hash(d.path(), "root", NEW_HASH).unwrap();
        for name in ["shadow", "shadow-"] {
            let path = d.path().join("etc").join(name);
            let after = fs::metadata(&path).unwrap();
            assert_ne!(after.ino(), before.ino(), "{name} is a new file");
            assert_eq!(after.uid(), before.uid(), "{name}");
            assert_eq!(after.gid(), before.gid(), "{name}");
            assert_eq!(after.mode(), before.mode(), "{name}");
            assert_eq!(xattrs(&path), attrs, "{name}");
        }
        if privileged {
            assert_eq!((before.uid(), before.gid()), (1234, 42));
        }
    }

    #[test]
    fn attributes_the_original_lacks_are_not_inherited() {
        // A default ACL on etc would give the new file an access ACL that
        // lets user 1234 read the hashes; the original has none.
        let d = rootfs("");
        let etc = d.path().join("etc");
        if !try_set(
            &etc,
            "system.posix_acl_default",
            &acl(&[
                (ACL_USER_OBJ, 7, NO_ID),
                (ACL_USER, 6, 1234),
                (ACL_GROUP_OBJ, 5, NO_ID),
                (ACL_MASK, 7, NO_ID),
                (ACL_OTHER, 5, NO_ID),
            ]),
        ) {
            eprintln!("skipped: no POSIX ACLs on the temporary directory's file system");
            return;
        }
        // (It would be inherited.)
        fs::write(etc.join("probe"), "").unwrap();
        assert!(
            xattrs(&etc.join("probe"))
                .iter()
                .any(|(n, _)| n == "system.posix_acl_access")
        );
        fs::remove_file(etc.join("probe")).unwrap();

        let before = xattrs(&etc.join("shadow"));
        replace_hash(d.path(), "root", NEW_HASH).unwrap();
        for name in ["shadow", "shadow-"] {
            let path = etc.join(name);
            assert_eq!(xattrs(&path), before, "{name}");
            assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o640);
        }
    }

    #[test]
    fn selinux_is_enabled_exactly_when_selinuxfs_is_mounted() {
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
        let mounted = mounts
            .lines()
            .any(|l| l.split_whitespace().nth(2) == Some("selinuxfs"));
        assert_eq!(selinux_enabled(), mounted);
    }

    #[test]
    fn xattr_rules() {
        use XattrRule::*;
        for selinux in [true, false] {
            assert_eq!(xattr_rule(b"security.ima", selinux), Skip);
            assert_eq!(xattr_rule(b"security.evm", selinux), Skip);
            assert_eq!(xattr_rule(b"security.SMACK64", selinux), BestEffort);
            assert_eq!(xattr_rule(b"security.capability", selinux), BestEffort);
            assert_eq!(xattr_rule(b"system.posix_acl_access", selinux), Required);
            assert_eq!(xattr_rule(b"user.x", selinux), Required);
            assert_eq!(xattr_rule(b"trusted.x", selinux), Required);
        }
        assert_eq!(xattr_rule(b"security.selinux", true), Required);
        assert_eq!(xattr_rule(b"security.selinux", false), BestEffort);
    }

    /// An immutable file: every extended attribute change fails with EPERM.
    struct Immutable(PathBuf);

    impl Immutable {
        fn make(path: &Path) -> Option<Immutable> {
            let f = File::open(path).unwrap();
            match rustix::fs::ioctl_setflags(&f, rustix::fs::IFlags::IMMUTABLE) {
                Ok(()) => Some(Immutable(path.to_owned())),
                Err(e) => {
                    eprintln!("skipped: cannot make {} immutable: {e}", path.display());
                    None
                }
            }
        }
    }

    impl Drop for Immutable {
        fn drop(&mut self) {
            let f = File::open(&self.0).unwrap();
            rustix::fs::ioctl_setflags(&f, rustix::fs::IFlags::empty()).unwrap();
        }
    }

    #[test]
    fn an_attribute_that_cannot_be_copied_fails_unless_best_effort() {
        let d = tempfile::tempdir().unwrap();
        let (src, dst) = (d.path().join("src"), d.path().join("dst"));
        fs::write(&src, "").unwrap();
        fs::write(&dst, "").unwrap();
        let open = |p: &Path| File::open(p).unwrap();
        // IMA/EVM attributes are never copied; others are.
        if !try_set(&src, "security.ima", b"\x01\x02") || !try_set(&src, "security.evm", b"e") {
            return;
        }
        assert!(try_set(&src, "security.ecs-test", b"x"));
        copy_xattrs(&open(&src), &open(&dst), &dst, true).unwrap();
        assert_eq!(
            xattrs(&dst),
            [("security.ecs-test".to_owned(), b"x".to_vec())]
        );
        rustix::fs::removexattr(&dst, "security.ecs-test").unwrap();

        let Some(immutable) = Immutable::make(&dst) else {
            return;
        };
        // A best-effort attribute that cannot be set: copied without it.
        copy_xattrs(&open(&src), &open(&dst), &dst, true).unwrap();
        assert!(xattrs(&dst).is_empty());
        drop(immutable);
        // A required one is never dropped: the SELinux label while SELinux
        // is enabled, an ACL, user.*, trusted.*.
        for (name, value, selinux) in [
            (
                "security.selinux",
                &b"system_u:object_r:shadow_t:s0\0"[..],
                true,
            ),
            ("user.ecs-test", b"u", false),
        ] {
            assert!(try_set(&src, name, value));
            {
                let _immutable = Immutable::make(&dst).unwrap();
                let err = copy_xattrs(&open(&src), &open(&dst), &dst, selinux).unwrap_err();
                assert!(
                    matches!(&err, ShadowError::Xattr { name: n, source, .. }
                        if n == name && source.raw_os_error() == Some(1)),
                    "{err:?}"
                );
                assert_eq!(
                    err.to_string(),
                    format!(
                        "{}: cannot give the new file the extended attribute {name}: {}",
                        dst.display(),
                        std::io::Error::from_raw_os_error(1)
                    )
                );
            }
            // Already there with the same value: nothing to set, no error.
            assert!(try_set(&dst, name, value));
            {
                let _immutable = Immutable::make(&dst).unwrap();
                copy_xattrs(&open(&src), &open(&dst), &dst, selinux).unwrap();
            }
            rustix::fs::removexattr(&src, name).unwrap();
            rustix::fs::removexattr(&dst, name).unwrap();
        }
        // With SELinux disabled the label is inert: copied if permitted.
        assert!(try_set(
            &src,
            "security.selinux",
            b"system_u:object_r:shadow_t:s0\0"
        ));
        let _immutable = Immutable::make(&dst).unwrap();
        copy_xattrs(&open(&src), &open(&dst), &dst, false).unwrap();
        assert!(xattrs(&dst).is_empty());
    }

    #[test]
    fn extra_attributes_that_cannot_be_removed_fail_unless_best_effort() {
        let d = tempfile::tempdir().unwrap();
        let (src, dst) = (d.path().join("src"), d.path().join("dst"));
        fs::write(&src, "").unwrap();
        fs::write(&dst, "").unwrap();
        if !try_set(&dst, "security.ecs-test", b"x") || !try_set(&dst, "security.ima", b"i") {
            return;
        }
        {
            let Some(_immutable) = Immutable::make(&dst) else {
                return;
            };
            let open = |p: &Path| File::open(p).unwrap();
            copy_xattrs(&open(&src), &open(&dst), &dst, true).unwrap();
        }
        // Removable: the best-effort extra goes, IMA stays (the kernel's).
        let open = |p: &Path| File::open(p).unwrap();
        copy_xattrs(&open(&src), &open(&dst), &dst, true).unwrap();
        let names: Vec<_> = xattrs(&dst).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["security.ima"]);
        // A required extra that cannot be removed is an error.
        assert!(try_set(&dst, "user.extra", b"e"));
        let _immutable = Immutable::make(&dst).unwrap();
        assert!(matches!(
            copy_xattrs(&open(&src), &open(&dst), &dst, true),
            Err(ShadowError::Xattr { name, .. }) if name == "user.extra"
        ));
    }
}
