//! The master key that encrypts stored secret keys (AK/SK), and hashing of
//! bearer credentials (agent credentials, enrollment tokens).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    #[error("master_key must be base64 of exactly 32 bytes")]
    Format,
    #[error("a stored secret does not decrypt with this master key")]
    Decrypt,
}

/// Encrypts and decrypts stored secrets (ChaCha20-Poly1305, random nonce, the
/// owner's id as associated data).
pub struct MasterKey(ChaCha20Poly1305);

impl MasterKey {
    pub fn from_base64(s: &SecretString) -> Result<Self, MasterKeyError> {
        let bytes = Zeroizing::new(
            B64.decode(s.expose_secret().trim())
                .map_err(|_| MasterKeyError::Format)?,
        );
        if bytes.len() != 32 {
            return Err(MasterKeyError::Format);
        }
        Ok(MasterKey(ChaCha20Poly1305::new(Key::from_slice(&bytes))))
    }

    /// A fresh random key, base64.
    pub fn generate_base64() -> SecretString {
        let mut k = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(k.as_mut());
        SecretString::from(B64.encode(&k[..]))
    }

    pub fn encrypt(&self, owner: &str, secret: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let ct = self
            .0
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: secret,
                    aad: owner.as_bytes(),
                },
            )
            .expect("ChaCha20-Poly1305 encryption does not fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        out
    }

    pub fn decrypt(&self, owner: &str, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, MasterKeyError> {
        if blob.len() < 12 + 16 {
            return Err(MasterKeyError::Decrypt);
        }
        let (nonce, ct) = blob.split_at(12);
        self.0
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: owner.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| MasterKeyError::Decrypt)
    }
}

/// A random bearer secret (URL-safe, 256 bits) with a prefix naming its kind.
pub fn new_bearer(prefix: &str) -> SecretString {
    let mut b = Zeroizing::new([0u8; 32]);
    rand::rng().fill_bytes(b.as_mut());
    SecretString::from(format!("{prefix}{}", hex::encode(&b[..])))
}

/// What is stored for a bearer secret: its SHA-256 (the secret has 256 bits
/// of entropy, so a plain hash is enough).
pub fn bearer_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new AK: 20 upper-case alphanumerics, like Huawei's.
pub fn new_access_key() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    (0..20)
        .map(|_| ALPHABET[(rng.next_u32() as usize) % ALPHABET.len()] as char)
        .collect()
}

/// A new SK: 40 alphanumerics.
pub fn new_secret_key() -> SecretString {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    SecretString::from(
        (0..40)
            .map(|_| ALPHABET[(rng.next_u32() as usize) % ALPHABET.len()] as char)
            .collect::<String>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypt_round_trip_binds_owner() {
        let k = MasterKey::from_base64(&MasterKey::generate_base64()).unwrap();
        let blob = k.encrypt("AK1", b"secret");
        assert_eq!(k.decrypt("AK1", &blob).unwrap().as_slice(), b"secret");
        assert!(k.decrypt("AK2", &blob).is_err());
        let other = MasterKey::from_base64(&MasterKey::generate_base64()).unwrap();
        assert!(other.decrypt("AK1", &blob).is_err());
        assert!(!blob.windows(6).any(|w| w == b"secret"));
    }

    #[test]
    fn bad_master_keys_are_refused() {
        assert!(MasterKey::from_base64(&SecretString::from("c2hvcnQ=")).is_err());
        assert!(MasterKey::from_base64(&SecretString::from("not base64!")).is_err());
    }
}
