//! Sealing a password to one server's agent key (contract §3.1).
//!
//! HPKE (RFC 9180) base mode with X25519-HKDF-SHA256, HKDF-SHA256 and
//! ChaCha20-Poly1305. The server id and the reset request id are bound into
//! the HPKE `info`, so a sealed password opens only for the server and request
//! it was made for. `ecsd` only ever seals; only the agent holding the private
//! key opens.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use secrecy::{ExposeSecret, SecretString};
use zeroize::{Zeroize, Zeroizing};

type Kem = X25519HkdfSha256;

/// Length in bytes of a public key, a private key and an encapsulated key.
pub const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("invalid public key")]
    PublicKey,
    #[error("invalid private key")]
    PrivateKey,
    #[error("invalid sealed blob")]
    Blob,
    #[error("sealing failed")]
    Seal,
    #[error("the sealed password does not open with this key for this server and request")]
    Open,
}

/// A server's agent public key (X25519, 32 bytes).
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(<Kem as hpke::Kem>::PublicKey);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl PublicKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        <Kem as hpke::Kem>::PublicKey::from_bytes(bytes)
            .map(PublicKey)
            .map_err(|_| SealError::PublicKey)
    }
    pub fn from_base64(s: &str) -> Result<Self, SealError> {
        let bytes = B64.decode(s.trim()).map_err(|_| SealError::PublicKey)?;
        Self::from_bytes(&bytes)
    }
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.to_bytes().to_vec()
    }
    pub fn to_base64(&self) -> String {
        B64.encode(self.to_bytes())
    }
}

/// A server's agent private key. It never leaves the server; zeroized on drop
/// by the `hpke` crate.
pub struct PrivateKey(<Kem as hpke::Kem>::PrivateKey);

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(..)")
    }
}

impl PrivateKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        <Kem as hpke::Kem>::PrivateKey::from_bytes(bytes)
            .map(PrivateKey)
            .map_err(|_| SealError::PrivateKey)
    }
    /// The raw key bytes, for writing to the agent's 0600 key file.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.0.to_bytes().to_vec())
    }
    pub fn public_key(&self) -> PublicKey {
        PublicKey(Kem::sk_to_pk(&self.0))
    }
}

/// Generates a fresh key pair from the thread-local CSPRNG (seeded from the OS).
pub fn generate_keypair() -> (PrivateKey, PublicKey) {
    let (sk, pk) = Kem::gen_keypair(&mut rand::rng());
    (PrivateKey(sk), PublicKey(pk))
}

/// A password sealed for one server and one request: the encapsulated key
/// followed by the ciphertext (with its 16-byte tag).
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed(Vec<u8>);

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealed({} bytes)", self.0.len())
    }
}

impl Sealed {
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, SealError> {
        if bytes.len() < KEY_LEN + 16 {
            return Err(SealError::Blob);
        }
        Ok(Sealed(bytes))
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
    pub fn to_base64(&self) -> String {
        B64.encode(&self.0)
    }
    pub fn from_base64(s: &str) -> Result<Self, SealError> {
        Self::from_bytes(B64.decode(s).map_err(|_| SealError::Blob)?)
    }
}

/// The HPKE `info`: protocol label, server id and request id.
fn info(server_id: &str, request_id: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(32 + server_id.len() + request_id.len());
    v.extend_from_slice(b"ecs-reset-password/v1");
    for part in [server_id, request_id] {
        v.push(0);
        v.extend_from_slice(&(part.len() as u32).to_be_bytes());
        v.extend_from_slice(part.as_bytes());
    }
    v
}

/// Seals `password` to `key` for `server_id` and `request_id`.
pub fn seal(
    key: &PublicKey,
    server_id: &str,
    request_id: &str,
    password: &SecretString,
) -> Result<Sealed, SealError> {
    let (encapped, ct) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, Kem, _>(
        &OpModeS::Base,
        &key.0,
        &info(server_id, request_id),
        password.expose_secret().as_bytes(),
        b"",
        &mut rand::rng(),
    )
    .map_err(|_| SealError::Seal)?;
    let mut out = encapped.to_bytes().to_vec();
    out.extend_from_slice(&ct);
    Ok(Sealed(out))
}

/// Opens a sealed password with the server's private key. Fails unless the
/// blob was sealed to this key for exactly this server id and request id.
pub fn open(
    key: &PrivateKey,
    server_id: &str,
    request_id: &str,
    sealed: &Sealed,
) -> Result<SecretString, SealError> {
    let (enc, ct) = sealed.0.split_at(KEY_LEN);
    let encapped = <Kem as hpke::Kem>::EncappedKey::from_bytes(enc).map_err(|_| SealError::Blob)?;
    let mut pt = hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, Kem>(
        &OpModeR::Base,
        &key.0,
        &encapped,
        &info(server_id, request_id),
        ct,
        b"",
    )
    .map_err(|_| SealError::Open)?;
    let text = String::from_utf8(std::mem::take(&mut pt));
    pt.zeroize();
    match text {
        Ok(s) => Ok(SecretString::from(s)),
        Err(e) => {
            e.into_bytes().zeroize();
            Err(SealError::Open)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pw(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[test]
    fn round_trip() {
        let (sk, pk) = generate_keypair();
        let s = seal(&pk, "srv-a", "req-1", &pw("Gx7!pLq2vR")).unwrap();
        let p = open(&sk, "srv-a", "req-1", &s).unwrap();
        assert_eq!(p.expose_secret(), "Gx7!pLq2vR");
    }

    #[test]
    fn another_servers_key_cannot_open() {
        let (_sk_a, pk_a) = generate_keypair();
        let (sk_b, _pk_b) = generate_keypair();
        let s = seal(&pk_a, "srv-a", "req-1", &pw("Gx7!pLq2vR")).unwrap();
        assert!(matches!(
            open(&sk_b, "srv-a", "req-1", &s),
            Err(SealError::Open)
        ));
    }

    #[test]
    fn server_and_request_ids_are_bound() {
        let (sk, pk) = generate_keypair();
        let s = seal(&pk, "srv-a", "req-1", &pw("Gx7!pLq2vR")).unwrap();
        assert!(open(&sk, "srv-b", "req-1", &s).is_err());
        assert!(open(&sk, "srv-a", "req-2", &s).is_err());
        // Length-prefixing keeps ("ab","c") apart from ("a","bc").
        let s2 = seal(&pk, "ab", "c", &pw("Gx7!pLq2vR")).unwrap();
        assert!(open(&sk, "a", "bc", &s2).is_err());
    }

    #[test]
    fn tampering_is_detected() {
        let (sk, pk) = generate_keypair();
        let s = seal(&pk, "srv-a", "req-1", &pw("Gx7!pLq2vR")).unwrap();
        let mut bytes = s.into_bytes();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let t = Sealed::from_bytes(bytes).unwrap();
        assert!(open(&sk, "srv-a", "req-1", &t).is_err());
    }

    #[test]
    fn sealed_blob_does_not_contain_plaintext_and_is_randomised() {
        let (_sk, pk) = generate_keypair();
        let a = seal(&pk, "s", "r", &pw("Gx7!pLq2vR")).unwrap();
        let b = seal(&pk, "s", "r", &pw("Gx7!pLq2vR")).unwrap();
        assert_ne!(a, b);
        assert!(!a.as_bytes().windows(10).any(|w| w == b"Gx7!pLq2vR"));
    }

    #[test]
    fn keys_round_trip_through_bytes_and_base64() {
        let (sk, pk) = generate_keypair();
        let sk2 = PrivateKey::from_bytes(&sk.to_bytes()).unwrap();
        assert_eq!(sk2.public_key(), pk);
        assert_eq!(PublicKey::from_base64(&pk.to_base64()).unwrap(), pk);
        assert!(PublicKey::from_base64("short").is_err());
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let (sk, pk) = generate_keypair();
        assert_eq!(format!("{pk:?}"), format!("PublicKey({})", pk.to_base64()));
        assert_eq!(format!("{sk:?}"), "PrivateKey(..)");
        let s = seal(&pk, "s", "r", &pw("Gx7!pLq2vR")).unwrap();
        assert_eq!(
            format!("{s:?}"),
            format!("Sealed({} bytes)", KEY_LEN + 10 + 16)
        );
    }

    #[test]
    fn sealed_blobs_round_trip_and_short_ones_are_refused() {
        let (sk, pk) = generate_keypair();
        assert_eq!(pk.to_bytes().len(), KEY_LEN);
        assert_eq!(PublicKey::from_bytes(&pk.to_bytes()).unwrap(), pk);
        assert!(PublicKey::from_bytes(&[0; KEY_LEN - 1]).is_err());
        assert!(PrivateKey::from_bytes(&[1; KEY_LEN + 1]).is_err());
        let s = seal(&pk, "s", "r", &pw("Gx7!pLq2vR")).unwrap();
        // Encapsulated key, ciphertext of the 10 bytes, 16-byte tag.
        assert_eq!(s.as_bytes().len(), KEY_LEN + 10 + 16);
        assert_eq!(s.as_bytes(), s.clone().into_bytes().as_slice());
        let b64 = s.to_base64();
        assert_eq!(B64.decode(&b64).unwrap(), s.as_bytes());
        let back = Sealed::from_base64(&b64).unwrap();
        assert_eq!(back, s);
        assert_eq!(
            open(&sk, "s", "r", &back).unwrap().expose_secret(),
            "Gx7!pLq2vR"
        );
        assert!(matches!(Sealed::from_base64("%%%"), Err(SealError::Blob)));
        // The shortest blob: a key and a tag (an empty password).
        assert!(Sealed::from_bytes(vec![0; KEY_LEN + 16]).is_ok());
        assert!(matches!(
            Sealed::from_bytes(vec![0; KEY_LEN + 15]),
            Err(SealError::Blob)
        ));
        let empty = seal(&pk, "s", "r", &pw("")).unwrap();
        assert_eq!(empty.as_bytes().len(), KEY_LEN + 16);
        assert_eq!(open(&sk, "s", "r", &empty).unwrap().expose_secret(), "");
    }

    #[test]
    fn a_blob_that_opens_to_non_utf8_is_refused() {
        let (sk, pk) = generate_keypair();
        let (encapped, ct) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, Kem, _>(
            &OpModeS::Base,
            &pk.0,
            &info("s", "r"),
            &[0xff, 0xfe, 0x41],
            b"",
            &mut rand::rng(),
        )
        .unwrap();
        let mut bytes = encapped.to_bytes().to_vec();
        bytes.extend_from_slice(&ct);
        let sealed = Sealed::from_bytes(bytes).unwrap();
        assert!(matches!(open(&sk, "s", "r", &sealed), Err(SealError::Open)));
    }

    #[test]
    fn info_is_the_label_and_length_prefixed_ids() {
        let mut want = b"ecs-reset-password/v1".to_vec();
        want.extend_from_slice(&[0, 0, 0, 0, 2, b'a', b'b', 0, 0, 0, 0, 1, b'c']);
        assert_eq!(info("ab", "c"), want);
    }
}
