//! Applying a password to `root` in `<root>/etc/shadow` (contract §4).
//!
//! The hash is computed here with the method named by `<root>/etc/login.defs`
//! (`ENCRYPT_METHOD`: YESCRYPT, SHA512 or SHA256; SHA512 when unset). The file
//! is replaced atomically under the password-file lock: lock
//! `<root>/etc/.pwd.lock`, write a temporary file with the same owner and
//! mode, fsync, keep the previous file as `shadow-`, rename over `shadow`,
//! fsync the directory. Only root's hash field changes; every other byte is
//! kept. No shell and no command line ever sees the password.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use yescrypt::PasswordHasher;
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum ShadowError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ENCRYPT_METHOD {0} in login.defs is not supported (use YESCRYPT, SHA512 or SHA256)")]
    UnsupportedMethod(String),
    #[error("the shadow file has no entry for {0}")]
    NoEntry(String),
    #[error("hashing failed: {0}")]
    Hash(String),
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

/// Replaces `user`'s hash in `<root>/etc/shadow` with `new_hash`, atomically.
pub fn replace_hash(root: &Path, user: &str, new_hash: &str) -> Result<(), ShadowError> {
    let etc = root.join("etc");
    let shadow = etc.join("shadow");
    let lock_path = etc.join(".pwd.lock");
    let lock = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    lock.lock().map_err(io(&lock_path))?;

    let old = Zeroizing::new(fs::read(&shadow).map_err(io(&shadow))?);
    let meta = fs::metadata(&shadow).map_err(io(&shadow))?;
    let new = Zeroizing::new(
        splice(&old, user, new_hash).ok_or_else(|| ShadowError::NoEntry(user.to_owned()))?,
    );

    // Keep the previous file as shadow- (itself written atomically).
    write_atomically(&etc, "shadow-", &old, &meta)?;
    crash_point(3);
    write_atomically(&etc, "shadow", &new, &meta)?;
    crash_point(6);
    drop(lock);
    Ok(())
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

/// The shadow file with `user`'s second field replaced; `None` if no entry.
fn splice(old: &[u8], user: &str, new_hash: &str) -> Option<Vec<u8>> {
    let prefix = format!("{user}:");
    let mut out = Vec::with_capacity(old.len() + new_hash.len());
    let mut found = false;
    for line in old.split_inclusive(|&b| b == b'\n') {
        if !found && line.starts_with(prefix.as_bytes()) {
            let rest = &line[prefix.len()..];
            let end = rest
                .iter()
                .position(|&b| b == b':' || b == b'\n')
                .unwrap_or(rest.len());
            out.extend_from_slice(prefix.as_bytes());
            out.extend_from_slice(new_hash.as_bytes());
            out.extend_from_slice(&rest[end..]);
            found = true;
        } else {
            out.extend_from_slice(line);
        }
    }
    found.then_some(out)
}

/// Writes `dir/name` via a temporary file with the owner and mode of `meta`,
/// fsync, rename, fsync of the directory.
fn write_atomically(
    dir: &Path,
    name: &str,
    data: &[u8],
    meta: &fs::Metadata,
) -> Result<(), ShadowError> {
    // One fixed name: the password-file lock makes us the only writer, and a
    // temporary file left by a crash is simply replaced.
    let tmp = dir.join(format!(".{name}.ecs-agent.tmp"));
    let target = dir.join(name);
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(meta.mode() & 0o7777)
        .open(&tmp)
        .map_err(io(&tmp))?;
    let base = if name == "shadow" { 3 } else { 0 };
    let result = (|| {
        std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()))?;
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(
            meta.mode() & 0o7777,
        ))?;
        let (first, rest) = data.split_at(data.len() / 2);
        f.write_all(first)?;
        crash_point(base + 1);
        f.write_all(rest)?;
        f.sync_all()?;
        crash_point(base + 2);
        fs::rename(&tmp, &target)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io(&target))
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
    use yescrypt::PasswordVerifier;

    thread_local! {
        pub static CRASH_AT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    const SHADOW: &str = "root:$6$old$oldhash:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\nnobody:!:19000::::::\n";

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

    #[test]
    fn splice_changes_only_the_hash_field() {
        let out = splice(SHADOW.as_bytes(), "root", "$6$x$y").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            SHADOW.replacen("$6$old$oldhash", "$6$x$y", 1)
        );
        assert!(splice(SHADOW.as_bytes(), "admin", "x").is_none());
        // A user whose name starts with "root" is not root.
        let s = "rootless:x:1::::::\nroot:old:2::::::";
        assert_eq!(
            String::from_utf8(splice(s.as_bytes(), "root", "new").unwrap()).unwrap(),
            "rootless:x:1::::::\nroot:new:2::::::"
        );
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
            // The lock was released by the crash; the retry completes.
            apply(d.path(), "root", &pw("Gx7!pLq2vR")).unwrap();
            let text = fs::read_to_string(d.path().join("etc/shadow")).unwrap();
            let h = text.lines().next().unwrap().split(':').nth(1).unwrap();
            sha_crypt::ShaCrypt::default()
                .verify_password(b"Gx7!pLq2vR", h)
                .unwrap();
            assert_eq!(
                text.lines().skip(1).collect::<Vec<_>>(),
                SHADOW.lines().skip(1).collect::<Vec<_>>()
            );
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
    }

    #[test]
    fn unsupported_method_is_an_error_and_changes_nothing() {
        let d = rootfs("ENCRYPT_METHOD MD5\n");
        assert!(matches!(
            apply(d.path(), "root", &pw("Gx7!pLq2vR")),
            Err(ShadowError::UnsupportedMethod(_))
        ));
        assert_eq!(
            fs::read_to_string(d.path().join("etc/shadow")).unwrap(),
            SHADOW
        );
    }
}
