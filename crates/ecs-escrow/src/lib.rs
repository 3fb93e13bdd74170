//! Password escrow (issue 15): what `ecsd` and `ecsctl` share.
//!
//! - [`generate`]: a random password that satisfies one OS's rules
//!   (contract §2.4, checked by `ecs-policy` at full strictness).
//! - [`encrypt`]: the password encrypted to a project's escrow recipients in
//!   the age format (X25519 recipients, ASCII armor), so that `ecsctl` or the
//!   standard `age` tool opens it with one recipient's identity. `ecsd` holds
//!   only recipients (public keys): it cannot open what it stored.
//! - [`new_identity`], [`protect_identity`], [`open_identity`]: an
//!   operator's identity file, passphrase-protected (age's scrypt) or plain
//!   (the dev identity), readable by `age -d -i FILE` too.
//! - [`decrypt`]: an escrowed blob opened with an identity, into a secret.
//!
//! Plaintext exists only in `SecretString` / `Zeroizing` buffers.

use std::io::{Read, Write};
use std::iter;
use std::str::FromStr;

use age::armor::{ArmoredReader, ArmoredWriter, Format};
use ecs_policy::{OsType, Strictness};
use rand::Rng;
use rand::seq::SliceRandom;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

/// The default length of a generated password.
pub const DEFAULT_LENGTH: usize = 20;

/// How an escrowed blob begins (ASCII-armored age file).
pub const ARMOR_BEGIN: &str = "-----BEGIN AGE ENCRYPTED FILE-----";

#[derive(Debug, thiserror::Error)]
pub enum EscrowError {
    /// The requested length is outside the rules of contract §2.4.
    #[error("length must be between {min} and {max}, got {got}")]
    Length { min: usize, max: usize, got: usize },
    #[error("not an age X25519 recipient (age1...)")]
    Recipient,
    #[error("no escrow recipient to encrypt to")]
    NoRecipients,
    #[error("age encryption failed")]
    Encrypt(#[source] std::io::Error),
    #[error("the escrowed password cannot be opened with this identity")]
    Decrypt(#[source] age::DecryptError),
    #[error("the escrowed password is not a valid age file")]
    Format(#[source] std::io::Error),
    #[error("the identity file cannot be opened (wrong passphrase?)")]
    IdentityPassphrase(#[source] age::DecryptError),
    #[error("the identity file holds no age X25519 identity")]
    Identity,
    #[error("the identity file is passphrase-protected: a passphrase is needed")]
    PassphraseNeeded,
}

fn class_sets(os: OsType) -> [Vec<u8>; 4] {
    let specials: Vec<u8> = ecs_policy::SPECIALS.bytes().collect();
    let _ = os;
    [
        (b'A'..=b'Z').collect(),
        (b'a'..=b'z').collect(),
        (b'0'..=b'9').collect(),
        specials,
    ]
}

/// A random password of `length` characters that passes `ecs-policy`'s
/// full check for `os`: at least one character of each of the four classes,
/// the rest from all of them, shuffled; drawn again in the rare case a rule
/// (username, Windows' `Administrator` triples or leading `/`, blocklist)
/// refuses it.
pub fn generate(os: OsType, length: usize) -> Result<SecretString, EscrowError> {
    if !(ecs_policy::MIN_LEN..=ecs_policy::MAX_LEN).contains(&length) {
        return Err(EscrowError::Length {
            min: ecs_policy::MIN_LEN,
            max: ecs_policy::MAX_LEN,
            got: length,
        });
    }
    let sets = class_sets(os);
    let all: Vec<u8> = sets.iter().flatten().copied().collect();
    let mut rng = rand::rng();
    loop {
        let mut buf = Zeroizing::new(Vec::with_capacity(length));
        for set in &sets {
            buf.push(set[rng.random_range(0..set.len())]);
        }
        while buf.len() < length {
            buf.push(all[rng.random_range(0..all.len())]);
        }
        buf.shuffle(&mut rng);
        let text = Zeroizing::new(String::from_utf8(buf.to_vec()).expect("ASCII"));
        if ecs_policy::check(&text, os, Strictness::Full).is_ok() {
            return Ok(SecretString::from(text.as_str()));
        }
    }
}

/// Parses one recipient (`age1...`); the canonical text is what is stored.
pub fn parse_recipient(s: &str) -> Result<String, EscrowError> {
    age::x25519::Recipient::from_str(s.trim())
        .map(|r| r.to_string())
        .map_err(|_| EscrowError::Recipient)
}

/// The password encrypted to every recipient: one ASCII-armored age file.
pub fn encrypt(recipients: &[String], password: &SecretString) -> Result<Vec<u8>, EscrowError> {
    let parsed = recipients
        .iter()
        .map(|r| age::x25519::Recipient::from_str(r).map_err(|_| EscrowError::Recipient))
        .collect::<Result<Vec<_>, _>>()?;
    if parsed.is_empty() {
        return Err(EscrowError::NoRecipients);
    }
    let encryptor =
        age::Encryptor::with_recipients(parsed.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| EscrowError::Encrypt(std::io::Error::other(e.to_string())))?;
    seal_to(encryptor, password.expose_secret().as_bytes())
}

fn seal_to(encryptor: age::Encryptor, plaintext: &[u8]) -> Result<Vec<u8>, EscrowError> {
    let mut out = Vec::new();
    let armored =
        ArmoredWriter::wrap_output(&mut out, Format::AsciiArmor).map_err(EscrowError::Encrypt)?;
    let mut w = encryptor
        .wrap_output(armored)
        .map_err(EscrowError::Encrypt)?;
    w.write_all(plaintext).map_err(EscrowError::Encrypt)?;
    w.finish()
        .and_then(|a| a.finish())
        .map_err(EscrowError::Encrypt)?;
    Ok(out)
}

/// Opens an escrowed blob (armored or binary) with one identity.
pub fn decrypt(identity: &Identity, blob: &[u8]) -> Result<SecretString, EscrowError> {
    let decryptor =
        age::Decryptor::new_buffered(ArmoredReader::new(blob)).map_err(EscrowError::Decrypt)?;
    let mut reader = decryptor
        .decrypt(iter::once(&identity.0 as &dyn age::Identity))
        .map_err(EscrowError::Decrypt)?;
    let mut buf = Zeroizing::new(Vec::new());
    reader.read_to_end(&mut buf).map_err(EscrowError::Format)?;
    let text =
        Zeroizing::new(String::from_utf8(buf.to_vec()).map_err(|_| {
            EscrowError::Format(std::io::Error::other("the password is not UTF-8"))
        })?);
    Ok(SecretString::from(text.as_str()))
}

/// An age X25519 identity (the private key), zeroized by `age` on drop.
pub struct Identity(age::x25519::Identity);

impl Identity {
    /// Its recipient (`age1...`), to register with `ecsd`.
    pub fn recipient(&self) -> String {
        self.0.to_public().to_string()
    }
}

/// A new identity and its plain identity file's text (`# created by ...`
/// comment, `# public key: age1...`, `AGE-SECRET-KEY-1...`), in a secret.
pub fn new_identity(comment: &str) -> (Identity, SecretString) {
    let id = age::x25519::Identity::generate();
    let file = format!(
        "# {comment}\n# public key: {}\n{}\n",
        id.to_public(),
        id.to_string().expose_secret()
    );
    (Identity(id), SecretString::from(file))
}

/// A plain identity file encrypted under a passphrase (age's scrypt
/// recipient): the format `age -d -i FILE` asks the passphrase for.
pub fn protect_identity(
    file: &SecretString,
    passphrase: SecretString,
) -> Result<Vec<u8>, EscrowError> {
    let pass = age::secrecy::SecretString::from(passphrase.expose_secret().to_owned());
    seal_to(
        age::Encryptor::with_user_passphrase(pass),
        file.expose_secret().as_bytes(),
    )
}

/// Whether an identity file is passphrase-protected (an age file) rather
/// than a plain identity list.
pub fn is_protected(file: &[u8]) -> bool {
    let start = file.trim_ascii_start();
    start.starts_with(ARMOR_BEGIN.as_bytes()) || start.starts_with(b"age-encryption.org/")
}

/// Reads an identity file: plain, or protected by `passphrase`.
pub fn open_identity(
    file: &[u8],
    passphrase: Option<SecretString>,
) -> Result<Identity, EscrowError> {
    let plain: Zeroizing<Vec<u8>> = if is_protected(file) {
        let passphrase = passphrase.ok_or(EscrowError::PassphraseNeeded)?;
        let pass = age::secrecy::SecretString::from(passphrase.expose_secret().to_owned());
        let decryptor = age::Decryptor::new_buffered(ArmoredReader::new(file))
            .map_err(EscrowError::IdentityPassphrase)?;
        let scrypt = age::scrypt::Identity::new(pass);
        let mut reader = decryptor
            .decrypt(iter::once(&scrypt as &dyn age::Identity))
            .map_err(EscrowError::IdentityPassphrase)?;
        let mut buf = Zeroizing::new(Vec::new());
        reader
            .read_to_end(&mut buf)
            .map_err(|_| EscrowError::Identity)?;
        buf
    } else {
        Zeroizing::new(file.to_vec())
    };
    let text = std::str::from_utf8(&plain).map_err(|_| EscrowError::Identity)?;
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .and_then(|l| age::x25519::Identity::from_str(l).ok())
        .map(Identity)
        .ok_or(EscrowError::Identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_passwords_pass_each_os_rules_at_every_length() {
        for os in [OsType::Linux, OsType::Windows] {
            for len in ecs_policy::MIN_LEN..=ecs_policy::MAX_LEN {
                for _ in 0..50 {
                    let p = generate(os, len).unwrap();
                    assert_eq!(p.expose_secret().len(), len);
                    ecs_policy::check(p.expose_secret(), os, Strictness::Full).unwrap();
                }
            }
        }
    }

    #[test]
    fn lengths_outside_the_rules_are_refused() {
        assert!(matches!(
            generate(OsType::Linux, 7),
            Err(EscrowError::Length { got: 7, .. })
        ));
        assert!(generate(OsType::Linux, 27).is_err());
    }

    #[test]
    fn generated_passwords_differ() {
        let a = generate(OsType::Linux, 20).unwrap();
        let b = generate(OsType::Linux, 20).unwrap();
        assert_ne!(a.expose_secret(), b.expose_secret());
    }

    #[test]
    fn every_recipient_opens_the_blob_and_no_other_identity_does() {
        let (a, _) = new_identity("a");
        let (b, _) = new_identity("b");
        let (c, _) = new_identity("c");
        let blob = encrypt(
            &[a.recipient(), b.recipient()],
            &SecretString::from("Secret-Pass-123"),
        )
        .unwrap();
        assert!(std::str::from_utf8(&blob).unwrap().starts_with(ARMOR_BEGIN));
        assert!(!String::from_utf8_lossy(&blob).contains("Secret-Pass-123"));
        for id in [&a, &b] {
            assert_eq!(
                decrypt(id, &blob).unwrap().expose_secret(),
                "Secret-Pass-123"
            );
        }
        assert!(matches!(decrypt(&c, &blob), Err(EscrowError::Decrypt(_))));
    }

    #[test]
    fn no_recipient_or_a_bad_one_is_refused() {
        let pw = SecretString::from("x");
        assert!(matches!(encrypt(&[], &pw), Err(EscrowError::NoRecipients)));
        assert!(matches!(
            encrypt(&["age1nope".into()], &pw),
            Err(EscrowError::Recipient)
        ));
        assert!(parse_recipient("ssh-ed25519 AAAA").is_err());
        let (a, _) = new_identity("a");
        assert_eq!(
            parse_recipient(&format!(" {} \n", a.recipient())).unwrap(),
            a.recipient()
        );
    }

    #[test]
    fn identity_files_plain_and_protected() {
        let (id, file) = new_identity("created by a test");
        let plain = open_identity(file.expose_secret().as_bytes(), None).unwrap();
        assert_eq!(plain.recipient(), id.recipient());
        let protected = protect_identity(&file, SecretString::from("correct horse")).unwrap();
        assert!(is_protected(&protected));
        assert!(!String::from_utf8_lossy(&protected).contains("AGE-SECRET-KEY"));
        assert!(matches!(
            open_identity(&protected, None),
            Err(EscrowError::PassphraseNeeded)
        ));
        assert!(matches!(
            open_identity(&protected, Some(SecretString::from("wrong"))),
            Err(EscrowError::IdentityPassphrase(_))
        ));
        let opened = open_identity(&protected, Some(SecretString::from("correct horse"))).unwrap();
        assert_eq!(opened.recipient(), id.recipient());
        assert!(matches!(
            open_identity(b"garbage", None),
            Err(EscrowError::Identity)
        ));
    }
}
